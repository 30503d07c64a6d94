"""CORE-HODL (spec chapter 2): spot BTC/ETH held 2:1 with a 5 % USDT buffer.

INITIALIZING deploys the investable cash in equal tranches (days 0, 7, 14, 21), then the sleeve
ACCUMULATES (or EARN_OPTIMIZES, with ETH staked). It goes REBALANCING on drift > 10 points or at the
first cycle after a calendar quarter end, unless an asset is > 70 % below its all-time high.
Pure: (state, snapshot, params) -> decision; no I/O, no clock.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from eternal.config import CoreParams
from eternal.models import (
    SPOT_SYMBOLS,
    EngineDecision,
    Event,
    Market,
    OrderIntent,
    OrderType,
    Side,
    Sleeve,
    SleeveBook,
    Snapshot,
    utc,
)

SLEEVE = Sleeve.CORE
ASSETS = ("BTC", "ETH")


class Phase(StrEnum):
    INITIALIZING = "INITIALIZING"
    ACCUMULATING = "ACCUMULATING"
    REBALANCING = "REBALANCING"
    EARN_OPTIMIZING = "EARN_OPTIMIZING"


class CoreState(BaseModel):
    phase: Phase = Phase.INITIALIZING
    start_day: datetime | None = None
    tranche_usdt: float = 0.0
    tranches_done: int = 0
    ath: dict[str, float] = {}
    quarter_handled: datetime | None = None   # last quarter end already rebalanced (or skipped)
    last_rebalance_day: datetime | None = None
    pending_inflow_usdt: float = 0.0          # deposits not deployed yet (arrived while initialising)


def quarter_end_on_or_before(day: datetime) -> datetime:
    """Open time of the last day of the latest calendar quarter that ends on or before `day`."""
    q_month = ((day.month - 1) // 3) * 3 + 1          # first month of day's quarter
    first_of_quarter = day.replace(month=q_month, day=1, hour=0, minute=0, second=0, microsecond=0)
    next_q = (first_of_quarter.replace(month=q_month + 3) if q_month < 10
              else first_of_quarter.replace(year=day.year + 1, month=1))
    end_this = next_q - timedelta(days=1)
    return end_this if day >= end_this else first_of_quarter - timedelta(days=1)


def weights(book: SleeveBook, closes: dict[str, float]) -> tuple[float, dict[str, float]]:
    equity = book.equity(closes)
    if equity <= 0:
        return equity, {a: 0.0 for a in ASSETS}
    return equity, {a: book.qty(a) * closes[a] / equity for a in ASSETS}


def decide(state_json: dict[str, Any] | None, snap: Snapshot, params: CoreParams) -> EngineDecision:
    state = CoreState.model_validate(state_json or {})
    day, book, closes = snap.day, snap.books[SLEEVE], snap.closes
    events: list[Event] = []
    intents: list[OrderIntent] = []
    stake: dict[str, float] = {}

    def event(kind: str, message: str, level: str = "info", **data: Any) -> None:
        events.append(Event(snap.asof, kind, message, SLEEVE, level, data))

    # The all-time high is the highest daily close of all loaded history, kept across cycles.
    for a in ASSETS:
        state.ath[a] = max(state.ath.get(a, 0.0), snap.ath.get(a, 0.0), closes[a])

    steady = Phase.EARN_OPTIMIZING if params.staking_apy >= params.staking_min_apy else Phase.ACCUMULATING
    if state.phase == Phase.REBALANCING:          # the orders of the last cycle have filled
        state.phase = steady
        event("core_phase", f"rebalance done, back to {steady}", phase=steady)

    if state.start_day is None:                   # first decision: the close of the first day
        equity = book.equity(closes)
        investable = max(0.0, book.cash - params.cash_buffer * equity)
        state.start_day, state.tranche_usdt = day, investable / params.tranches
        event("core_phase", f"INITIALIZING: {investable:.2f} USDT in {params.tranches} tranches of "
              f"{state.tranche_usdt:.2f}, {params.tranche_interval_days} days apart",
              phase=Phase.INITIALIZING, investable_usdt=investable)

    if state.phase == Phase.INITIALIZING:
        if (inflow := snap.inflows.get(SLEEVE, 0.0)) > 0:
            state.pending_inflow_usdt += inflow
            event("core_deposit", f"{inflow:.2f} USDT deposited while initialising: deployed once the "
                  "tranches are done", inflow_usdt=inflow)
        elapsed = (day - utc(state.start_day)).days
        due = state.tranches_done * params.tranche_interval_days
        if elapsed >= due:
            n = state.tranches_done + 1
            for a in ASSETS:
                share = params.btc_share_of_invested if a == "BTC" else 1 - params.btc_share_of_invested
                intents.append(_buy(a, state.tranche_usdt * share, snap, f"tranche {n}/{params.tranches}",
                                    f"tranche{n}"))
            state.tranches_done = n
            event("core_tranche", f"tranche {n}/{params.tranches} on day {elapsed}: "
                  f"{state.tranche_usdt:.2f} USDT split 2:1 BTC:ETH", tranche=n, usdt=state.tranche_usdt)
            if n == params.tranches:
                state.phase = steady
                # a quarter end that fell inside the initialisation is not caught up afterwards
                state.quarter_handled = quarter_end_on_or_before(day)
                event("core_phase", f"initial deployment complete, now {steady}", phase=steady)
        return EngineDecision(intents, state.model_dump(mode="json"), events, stake)

    # Steady state: staking, deposits, rebalancing.
    if state.phase != steady:
        state.phase = steady
    equity, w = weights(book, closes)
    targets = params.targets
    cash_weight = book.cash / equity if equity > 0 else 0.0
    cash_target = params.cash_buffer
    quarter_end = quarter_end_on_or_before(day)
    quarter_due = params.quarterly_rebalance and (
        state.quarter_handled is None or quarter_end > utc(state.quarter_handled))
    drifted = {a: w[a] - targets[a] for a in ASSETS if abs(w[a] - targets[a]) > params.drift_threshold}
    if abs(cash_weight - cash_target) > params.drift_threshold:      # USDT is a target too
        drifted["USDT"] = cash_weight - cash_target
    # net of what the allocation layer took from CORE since the last cycle; never below nothing
    inflow = max(0.0, snap.inflows.get(SLEEVE, 0.0) + state.pending_inflow_usdt)
    deployed = False
    if quarter_due or drifted:
        why = []
        if drifted:
            why.append("drift " + ", ".join(
                f"{a} {w.get(a, cash_weight):.4f} vs target {targets.get(a, cash_target):.4f}" for a in drifted))
        if quarter_due:
            why.append(f"quarter ended {quarter_end:%Y-%m-%d}")
        reason = "; ".join(why)
        crashed = {a: closes[a] / state.ath[a] - 1 for a in ASSETS
                   if closes[a] < state.ath[a] * (1 - params.ath_pause_drawdown)}
        if quarter_due:
            state.quarter_handled = quarter_end
        if crashed:
            event("core_rebalance_paused", f"rebalance due ({reason}) skipped: " + ", ".join(
                f"{a} {dd:.1%} below its ATH {state.ath[a]:.2f}" for a, dd in crashed.items()),
                "warning", drawdowns=crashed)
        else:
            intents += _rebalance(book, closes, equity, targets, snap, params, reason, stake)
            deployed = True                        # back to target: new cash included
            if intents:
                state.phase = Phase.REBALANCING
                state.last_rebalance_day = day
                event("core_rebalance", f"REBALANCING: {reason}", weights=w, targets=targets)
    if not deployed and inflow > params.min_order_usdt:
        # deploying new cash is not rebalancing: it happens even while a rebalance is paused
        buys = _deploy_cash(book, closes, equity, targets, snap, params, inflow)
        intents += buys
        if buys:
            event("core_deposit", f"deploying {inflow:.2f} USDT of new cash to underweight assets")
        deployed = bool(buys)
    # deployed: nothing left pending; otherwise carry it (too small yet, or no asset underweight)
    state.pending_inflow_usdt = 0.0 if deployed else inflow

    if steady == Phase.EARN_OPTIMIZING:
        free_eth = book.holdings.get("ETH", 0.0) + stake.get("ETH", 0.0)
        sells_eth = any(i.side == Side.SELL and i.symbol == SPOT_SYMBOLS["ETH"] for i in intents)
        if free_eth > 0 and not sells_eth:
            stake["ETH"] = stake.get("ETH", 0.0) + free_eth
    elif book.staked.get("ETH", 0.0) > 0:      # APY fell below the minimum: unstake everything
        stake["ETH"] = -book.staked["ETH"]
        event("core_unstake", f"staking APY {params.staking_apy:.4f} below {params.staking_min_apy:.4f}: unstaking")
    return EngineDecision(intents, state.model_dump(mode="json"), events, stake)


def _buy(asset: str, usdt: float, snap: Snapshot, reason: str, key: str) -> OrderIntent:
    price = snap.quotes[asset].bid                 # post-only limit at the best bid
    return OrderIntent(SLEEVE, SPOT_SYMBOLS[asset], Market.SPOT, Side.BUY, usdt / price,
                       OrderType.LIMIT, reason, f"{key}:{asset}:buy", limit_price=price,
                       post_only=True, scale_to_cash=True)


def _sell(asset: str, qty: float, snap: Snapshot, reason: str, key: str) -> OrderIntent:
    price = snap.quotes[asset].ask                 # post-only limit at the best ask
    return OrderIntent(SLEEVE, SPOT_SYMBOLS[asset], Market.SPOT, Side.SELL, qty, OrderType.LIMIT,
                       reason, f"{key}:{asset}:sell", limit_price=price, post_only=True)


def _rebalance(book: SleeveBook, closes: dict[str, float], equity: float, targets: dict[str, float],
               snap: Snapshot, params: CoreParams, reason: str, stake: dict[str, float]) -> list[OrderIntent]:
    """Sells first, then buys, back to target weights."""
    sells, buys = [], []
    for a in ASSETS:
        delta_usdt = targets[a] * equity - book.qty(a) * closes[a]
        if abs(delta_usdt) < params.min_order_usdt:
            continue
        if delta_usdt < 0:
            qty = min(-delta_usdt / closes[a], book.qty(a))
            short = qty - book.holdings.get(a, 0.0)
            if short > 0:                      # unstake before any sale
                stake[a] = stake.get(a, 0.0) - short
            sells.append(_sell(a, qty, snap, f"rebalance: {reason}", "rebalance"))
        else:
            buys.append(_buy(a, delta_usdt, snap, f"rebalance: {reason}", "rebalance"))
    return sells + buys


def _deploy_cash(book: SleeveBook, closes: dict[str, float], equity: float, targets: dict[str, float],
                 snap: Snapshot, params: CoreParams, inflow: float) -> list[OrderIntent]:
    """New cash goes to the assets below target, in proportion to how far below they are."""
    spendable = min(inflow, book.cash - params.cash_buffer * equity)
    gaps = {a: targets[a] * equity - book.qty(a) * closes[a] for a in ASSETS}
    gaps = {a: g for a, g in gaps.items() if g > 0}
    total = sum(gaps.values())
    if spendable < params.min_order_usdt or total <= 0:
        return []
    scale = min(1.0, spendable / total)
    return [_buy(a, g * scale, snap, f"deposit: {inflow:.2f} USDT to underweight {a}", "deposit")
            for a, g in gaps.items() if g * scale >= params.min_order_usdt]
