"""The daily cycle, pure: (Snapshot, Settings) -> Plan. Runs the same live, in paper and in replay."""
from __future__ import annotations

from collections.abc import Callable

from eternal.config import Settings
from eternal.engines import core_hodl, funding, tactical, trend
from eternal.models import EngineDecision, FundingTick, Plan, Sleeve, Snapshot


def _core(state, snap: Snapshot, settings: Settings, sleeve: Sleeve) -> EngineDecision:
    return core_hodl.decide(state, snap, settings.core)


def _trend(state, snap: Snapshot, settings: Settings, sleeve: Sleeve) -> EngineDecision:
    return trend.decide(state, snap, getattr(settings, sleeve.weight_field), sleeve)


def _tactical(state, snap: Snapshot, settings: Settings, sleeve: Sleeve) -> EngineDecision:
    return tactical.decide(state, snap, settings.tactical)


ENGINES: dict[Sleeve, Callable[..., EngineDecision]] = {
    Sleeve.CORE: _core,
    Sleeve.TREND_1: _trend,
    Sleeve.TREND_2: _trend,
    Sleeve.TACTICAL: _tactical,
}
"""Daily engines implemented so far, in the order the cycle runs them."""

TICK_ENGINES = {Sleeve.FUNDING: funding}
"""Engines that decide at every funding settlement instead of the daily close."""

SLEEVES: tuple[Sleeve, ...] = (*ENGINES, *TICK_ENGINES)
"""Every sleeve with an engine, in the portfolio's order (CORE, TREND-1, TREND-2, TACTICAL,
FUNDING): the order of a backfill's books, outputs and report."""


def funding_tick(tick: FundingTick, settings: Settings) -> Plan:
    """The FUNDING engine at one settlement, pure: (FundingTick, Settings) -> Plan."""
    plan = Plan(tick.ts, tick.ts, [], {}, [])
    if Sleeve.FUNDING not in tick.books:
        return plan
    decision = funding.decide(tick, settings.funding)
    plan.intents, plan.events, plan.transfers = decision.intents, decision.events, decision.transfers
    plan.states[Sleeve.FUNDING] = decision.state
    return plan


def daily(snap: Snapshot, settings: Settings, sleeves: tuple[Sleeve, ...] | None = None) -> Plan:
    plan = Plan(snap.asof, snap.day, [], {}, [])
    for sleeve, engine in ENGINES.items():
        if sleeve not in snap.books or (sleeves is not None and sleeve not in sleeves):
            continue
        decision = engine(snap.states.get(sleeve), snap, settings, sleeve)
        plan.intents += decision.intents
        plan.events += decision.events
        plan.transfers += decision.transfers
        plan.states[sleeve] = decision.state
        if decision.stake:
            plan.stakes[sleeve] = decision.stake
        if decision.stops:
            plan.stops[sleeve] = decision.stops
    return plan


def at_close(snap: Snapshot, settings: Settings, sleeves: tuple[Sleeve, ...], allocation_state: dict | None,
             deposit_usdt: float, orchestrated: bool, shares: dict[Sleeve, float]
             ) -> tuple[Plan, dict[Sleeve, float], dict | None]:
    """Everything decided at a daily close, pure: the orchestration layer first (regime, deposit
    split, band and quarterly rebalancing, spec 5.x), then the daily engines on the books it left.
    Without orchestration (a partial backfill) a deposit is split by `shares`.

    Returns the plan (the allocation's transfers, sales and events first), the USDT each sleeve
    will have received by the next close (this plan's engine transfers), and the allocation state.
    """
    from eternal import allocation
    from eternal.models import QUOTE, Transfer, split_transfer_qty

    if orchestrated:
        equity = {s: b.equity(snap.closes, snap.marks) for s, b in snap.books.items()}
        orch = allocation.orchestrate(allocation_state, snap.day, snap.asof, snap.books, equity, snap.closes,
                                      snap.regime_inputs, settings.allocation, deposit_usdt,
                                      base=settings.weights.by_sleeve(), marks=snap.marks)
        decided = daily(allocation.with_transfers(snap, orch.transfers, orch.requests), settings, sleeves)
        plan, first, state = allocation.merged(orch, decided), len(orch.transfers), orch.state
    else:
        split = (split_transfer_qty(deposit_usdt, {s: deposit_usdt * w for s, w in shares.items() if w > 0})
                 if deposit_usdt > 0 else {})
        moves = [Transfer(snap.asof, None, s, QUOTE, usdt, f"deposit of {deposit_usdt:,.2f} USDT")
                 for s, usdt in split.items()]
        plan = daily(allocation.with_transfers(snap, moves), settings, sleeves)
        plan.transfers, first, state = moves + plan.transfers, len(moves), allocation_state
    received: dict[Sleeve, float] = {}
    for t in plan.transfers[first:]:             # the engines' own transfers count at the next close
        if t.asset == QUOTE:
            received[t.to_sleeve] = received.get(t.to_sleeve, 0.0) + t.qty
    return plan, received, state
