"""TACTICAL (spec chapter 5): a cash sleeve that buys BTC and ETH in crashes and extreme fear.

  ACCUMULATING_CASH -> MONITORING_MARKETS -> TRIGGER_DETECTED -> DEPLOYING
      -> (PROFIT_TARGET_HIT -> RETURNING_TO_CORE) -> ACCUMULATING_CASH

ACCUMULATING_CASH: too little cash to deploy (it arrives from the allocation and from FUNDING's
transfers); MONITORING_MARKETS: enough cash, triggers are evaluated on every daily close.
Each deployment is a lot (80 % BTC, 20 % ETH, spot market orders); a lot is sold at +100 % with
the proceeds returned to CORE, half of it is sold at +50 % within 90 days, and a lot held 12 months
is handed to CORE in kind. There is no stop: a further fall after a deployment is held.

Orders fill after the decision (at the next open in replay), so a cycle first books what the last
cycle's orders did: the holdings and cash that moved, net of money received meanwhile
(`Snapshot.inflows`). Pure: (state, snapshot, params) -> decision; no I/O, no clock.
"""
from __future__ import annotations

import math
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel

from eternal.config import TacticalParams
from eternal.instruments import tradable_qty
from eternal.models import (
    QUOTE,
    SPOT_SYMBOLS,
    EngineDecision,
    Event,
    Market,
    OrderIntent,
    OrderType,
    Side,
    Sleeve,
    Snapshot,
    Transfer,
    utc,
)

SLEEVE = Sleeve.TACTICAL
ASSETS = ("BTC", "ETH")
SETTLEMENTS_PER_DAY = 3        # 8-hourly funding: a window of n days must hold 3n settlements


class Phase(StrEnum):
    ACCUMULATING_CASH = "ACCUMULATING_CASH"
    MONITORING_MARKETS = "MONITORING_MARKETS"
    TRIGGER_DETECTED = "TRIGGER_DETECTED"
    DEPLOYING = "DEPLOYING"
    PROFIT_TARGET_HIT = "PROFIT_TARGET_HIT"
    RETURNING_TO_CORE = "RETURNING_TO_CORE"


class Lot(BaseModel):
    id: str                                  # "lot-YYYYMMDD" of the decision day
    opened: datetime                         # when its orders were sent (filled at the next open)
    triggers: list[str]
    planned_usdt: float
    cost_usdt: float = 0.0                   # cash spent (a fee in the coin leaves fewer coins), known once filled
    qty: dict[str, float] = {}
    partial_done: bool = False
    level: int | None = None                 # the drawdown level this deployment used


class PlannedExit(BaseModel):
    lot: str
    kind: Literal["target", "partial", "release"]     # release: cash the allocation asked for
    qty: dict[str, float]                    # what is sold of the lot
    cost_share: float                        # fraction of the lot's cost basis it carries
    value_usdt: float                        # at the decision close, to split the proceeds


class Pending(BaseModel):
    """Orders sent by the last cycle, and the cash and holdings the sleeve had right after it."""

    kind: Literal["deploy", "exit"]
    cash: float
    holdings: dict[str, float]
    lot: str | None = None
    exits: list[PlannedExit] = []


class TacticalState(BaseModel):
    phase: Phase = Phase.ACCUMULATING_CASH
    ath: float = 0.0                         # BTC's all-time high close, persisted
    levels_fired: list[int] = []             # drawdown levels used in the current ATH cycle
    last_deploy_day: datetime | None = None
    lots: list[Lot] = []
    pending: Pending | None = None
    signals: list[str] = []                  # triggers firing at the last close (for change events)
    returned_to_core_usdt: float = 0.0


def triggers(state: TacticalState, snap: Snapshot, params: TacticalParams) -> dict[str, tuple[float, str]]:
    """Every trigger firing on `snap.day`'s close: name -> (fraction of cash, why)."""
    fired: dict[str, tuple[float, str]] = {}
    btc = snap.closes["BTC"]
    drawdown = btc / state.ath - 1.0
    for level, depth, share in ((1, params.drawdown_level_1, params.deploy_level_1),
                                (2, params.drawdown_level_2, params.deploy_level_2)):
        if drawdown <= -depth and level not in state.levels_fired:
            fired[f"drawdown_level_{level}"] = (share, f"BTC {drawdown:.1%} from its ATH {state.ath:,.2f} "
                                                       f"(level {level}, <= -{depth:.0%})")
    if snap.fear_greed is not None and snap.fear_greed < params.fear_greed_below:
        fired["fear_greed"] = (params.deploy_signal,
                               f"Fear & Greed {snap.fear_greed} < {params.fear_greed_below}")
    rates = snap.recent_funding.get("BTC", ())
    if (len(rates) >= SETTLEMENTS_PER_DAY * params.negative_funding_days
            and all(r < params.negative_funding_rate_8h for r in rates)):
        fired["negative_funding"] = (params.deploy_signal, (
            f"BTC funding < {params.negative_funding_rate_8h:.4%} at all {len(rates)} settlements of the "
            f"last {params.negative_funding_days} days (highest {max(rates):.4%})"))
    vol = snap.volatility.get("BTC")
    if vol is not None and not math.isnan(vol) and vol > params.volatility_annualised:
        fired["volatility"] = (params.deploy_signal, f"BTC {params.volatility_window_days}-day realised "
                               f"volatility {vol:.3f} > {params.volatility_annualised:.2f}")
    return fired


def decide(state_json: dict[str, Any] | None, snap: Snapshot, params: TacticalParams) -> EngineDecision:
    state = TacticalState.model_validate(state_json or {})
    book, closes, now = snap.books[SLEEVE], snap.closes, snap.asof
    events: list[Event] = []
    intents: list[OrderIntent] = []
    transfers: list[Transfer] = []

    def event(event_kind: str, message: str, level: str = "info", **data: Any) -> None:
        events.append(Event(now, event_kind, message, SLEEVE, level, data))

    def move(to: Phase, why: str) -> None:
        if state.phase != to:
            event("tactical_phase", f"{state.phase} -> {to}: {why}", previous=state.phase, phase=to)
            state.phase = to

    # 1. What the last cycle's orders did.
    if state.pending is not None:
        _settle(state, snap, params, event, move, transfers)
        state.pending = None

    # 1b. The lots hold no more than the sleeve does: another rule may have sold their coins.
    _match_holdings(state, book, closes, event)

    # 2. The ATH cycle: a new all-time high re-arms both drawdown levels.
    ath = max(state.ath, snap.ath.get("BTC", 0.0), closes["BTC"])
    if ath > state.ath and state.levels_fired:
        event("tactical_levels_reset", f"BTC made a new ATH {ath:,.2f}: drawdown levels re-armed",
              ath=ath, previous_levels=state.levels_fired)
        state.levels_fired = []
    state.ath = ath

    # 3. Lots: profit target, partial exit, or handed to CORE after 12 months.
    planned: list[PlannedExit] = []
    for lot in list(state.lots):
        value = sum(q * closes[a] for a, q in lot.qty.items())
        gain = value / lot.cost_usdt - 1.0 if lot.cost_usdt > 0 else 0.0
        age = (now - utc(lot.opened)).days
        if gain >= params.profit_target:
            planned.append(PlannedExit(lot=lot.id, kind="target", qty=dict(lot.qty), cost_share=1.0,
                                       value_usdt=value))
            event("tactical_exit", f"{lot.id}: +{gain:.1%} >= +{params.profit_target:.0%} after {age} days: "
                  f"selling the lot, proceeds to CORE", lot=lot.id, kind="target", gain=gain,
                  value_usdt=value, cost_usdt=lot.cost_usdt)
        elif not lot.partial_done and age <= params.partial_exit_window_days and gain >= params.partial_exit_gain:
            planned.append(PlannedExit(lot=lot.id, kind="partial", qty={a: q / 2 for a, q in lot.qty.items()},
                                       cost_share=0.5, value_usdt=value / 2))
            lot.partial_done = True
            event("tactical_exit", f"{lot.id}: +{gain:.1%} >= +{params.partial_exit_gain:.0%} within "
                  f"{params.partial_exit_window_days} days (day {age}): selling half", lot=lot.id,
                  kind="partial", gain=gain, value_usdt=value / 2, cost_usdt=lot.cost_usdt / 2)
        elif age >= params.max_lot_age_days:
            for a, q in lot.qty.items():
                q = min(q, book.holdings.get(a, 0.0))
                if q > 0:
                    transfers.append(Transfer(now, SLEEVE, Sleeve.CORE, a, q,
                                              f"tactical {lot.id} held {age} days: to CORE in kind"))
            state.lots.remove(lot)
            event("tactical_exit", f"{lot.id}: held {age} days (>= {params.max_lot_age_days}), {gain:+.1%}: "
                  f"transferred in kind to CORE", lot=lot.id, kind="in_kind", gain=gain, value_usdt=value,
                  cost_usdt=lot.cost_usdt, qty=lot.qty)
    request = snap.cash_requests.get(SLEEVE, 0.0)
    if request > 0 and not planned:          # a rebalance takes from TACTICAL: lots are sold oldest first
        for lot in sorted(state.lots, key=lambda lot: utc(lot.opened)):
            value = sum(q * closes[a] for a, q in lot.qty.items())
            if request <= 0 or value <= 0:
                break
            share = min(1.0, request / value)
            planned.append(PlannedExit(lot=lot.id, kind="release", qty={a: q * share for a, q in lot.qty.items()},
                                       cost_share=share, value_usdt=value * share))
            request -= value * share
            event("tactical_exit", f"{lot.id}: selling {share:.1%} of it for the rebalance "
                  f"({value * share:,.2f} USDT)", lot=lot.id, kind="release",
                  gain=value / lot.cost_usdt - 1.0 if lot.cost_usdt > 0 else 0.0, value_usdt=value * share)
    if planned:
        sell = {a: sum(p.qty.get(a, 0.0) for p in planned) for a in ASSETS}
        for a, q in sell.items():
            # what the exchange would take: on the step, at least its minimums (less waits)
            q = tradable_qty(SPOT_SYMBOLS[a], min(q, book.holdings.get(a, 0.0)), closes[a])
            if q > 0:
                intents.append(OrderIntent(SLEEVE, SPOT_SYMBOLS[a], Market.SPOT, Side.SELL, q, OrderType.MARKET,
                                           "tactical exit: " + ", ".join(f"{p.lot} {p.kind}" for p in planned),
                                           f"exit:{a}"))
        if not intents and all(p.kind == "release" for p in planned):
            planned = []                           # too small a release to sell: the request waits
        if any(p.kind != "release" for p in planned):
            move(Phase.PROFIT_TARGET_HIT, ", ".join(f"{p.lot} {p.kind}" for p in planned))

    # 4. Triggers, on every close; one deployment per cooldown, never beside an exit.
    fired = triggers(state, snap, params)
    if sorted(fired) != state.signals:
        if fired:
            event("tactical_signals", "firing: " + "; ".join(why for _, why in fired.values()),
                  triggers=sorted(fired))
        state.signals = sorted(fired)
    cash = book.cash - sum(t.qty for t in transfers if t.asset == QUOTE)   # proceeds leaving now excluded
    if fired and not planned:
        share = min(max(f for f, _ in fired.values()), params.max_deploy_per_event)
        amount = share * cash
        since = (snap.day - utc(state.last_deploy_day)).days if state.last_deploy_day else None
        if since is not None and since < params.cooldown_days:
            pass                                   # discipline: one deployment per cooldown window
        elif amount < params.min_deploy_usdt:
            pass                                   # too little cash yet: stays armed
        elif SLEEVE in snap.entries_refused:
            pass                                   # the breakers pause TACTICAL: stays armed
        else:
            reason = "; ".join(why for _, why in fired.values())
            move(Phase.TRIGGER_DETECTED, reason)
            lot = Lot(id=f"lot-{snap.day:%Y%m%d}", opened=now, triggers=sorted(fired), planned_usdt=amount)
            for a, a_share in (("BTC", params.btc_share), ("ETH", 1.0 - params.btc_share)):
                if a_share > 0:
                    intents.append(OrderIntent(SLEEVE, SPOT_SYMBOLS[a], Market.SPOT, Side.BUY,
                                               amount * a_share / snap.quotes[a].ask, OrderType.MARKET,
                                               f"tactical deploy {lot.id}: {reason}", f"deploy:{a}",
                                               scale_to_cash=True))
            levels = sorted(int(n[-1]) for n in fired if n.startswith("drawdown_level_"))
            if levels:                                 # the levels are used in order, once per ATH cycle
                lot.level = levels[0]
                state.levels_fired.append(levels[0])
            state.lots.append(lot)
            state.last_deploy_day = snap.day
            event("tactical_deploy", f"{lot.id}: deploying {amount:,.2f} USDT ({share:.0%} of "
                  f"{cash:,.2f} cash), {params.btc_share:.0%} BTC / {1 - params.btc_share:.0%} ETH: "
                  f"{reason}", lot=lot.id, usdt=amount, share=share, triggers=sorted(fired))
            move(Phase.DEPLOYING, f"{lot.id} orders sent")

    # 5. Remember what the sleeve holds right after this cycle, to book the fills next cycle.
    if intents:
        holdings = {a: book.holdings.get(a, 0.0) - sum(t.qty for t in transfers if t.asset == a)
                    for a in ASSETS}
        deploying = state.phase == Phase.DEPLOYING
        state.pending = Pending(kind="deploy" if deploying else "exit", cash=cash, holdings=holdings,
                                lot=state.lots[-1].id if deploying else None, exits=planned)
    else:
        _idle(state, cash, params, move)
    return EngineDecision(intents, state.model_dump(mode="json"), events, transfers=transfers)


def _min_qty(asset: str) -> float:
    from eternal.instruments import default

    rules = default().get(SPOT_SYMBOLS[asset])
    return rules.min_qty if rules is not None else 0.0


def _match_holdings(state: TacticalState, book, closes: dict[str, float], event) -> None:
    """Scale the lots down to the coins the sleeve holds when another rule sold some (the risk
    step's per-asset cap, a breaker's L4): each lot keeps its share of what is left and the same
    share of its cost, so its gain is measured on coins that exist; a lot left under the exchange's
    minimum is closed. Without this a lot kept counting coins sold long ago: a gain of +649.6 %
    on 2023-11-02 planned, every day, a sale no order could make."""
    claimed_by = dict.fromkeys(ASSETS, 0)          # summed lot by lot, in the lots' order
    for lot in state.lots:
        for a, q in lot.qty.items():
            if a in claimed_by:
                claimed_by[a] += q
    for a in ASSETS:
        claimed = claimed_by[a]
        held = book.holdings.get(a, 0.0) + book.staked.get(a, 0.0)
        if claimed <= 0 or held >= claimed * (1.0 - 1e-9):
            continue
        kept = max(0.0, held) / claimed
        for lot in state.lots:
            if lot.qty.get(a, 0.0) <= 0:
                continue
            before = sum(q * closes[b] for b, q in lot.qty.items())
            lot.qty[a] *= kept
            after = sum(q * closes[b] for b, q in lot.qty.items())
            lot.cost_usdt *= after / before if before > 0 else 0.0
        event("tactical_lots_reduced", f"the lots count {claimed:.8g} {a}, the sleeve holds {held:.8g} "
              f"(another rule sold the rest): each lot keeps {kept:.2%} of its {a}", "warning",
              asset=a, claimed=claimed, held=held)
    for lot in list(state.lots):
        if lot.qty and all(q <= 1e-12 or q < _min_qty(a) for a, q in lot.qty.items()):
            state.lots.remove(lot)
            event("tactical_lot_closed", f"{lot.id}: its coins were sold by another rule: the lot is closed",
                  "warning", lot=lot.id)


def _idle(state: TacticalState, cash: float, params: TacticalParams, move) -> None:
    if cash >= params.min_deploy_usdt:
        move(Phase.MONITORING_MARKETS, f"{cash:,.2f} USDT ready to deploy")
    else:
        move(Phase.ACCUMULATING_CASH, f"{cash:,.2f} USDT: waiting for cash")


def _settle(state: TacticalState, snap: Snapshot, params: TacticalParams, event, move,
            transfers: list[Transfer]) -> None:
    """Book the fills of the orders the last cycle sent, from what moved in the sleeve."""
    p, book = state.pending, snap.books[SLEEVE]
    inflow = snap.inflows.get(SLEEVE, 0.0)
    moved = {a: book.holdings.get(a, 0.0) - p.holdings.get(a, 0.0) for a in ASSETS}
    cash_moved = book.cash - p.cash - inflow             # > 0: proceeds; < 0: cost of buys
    if p.kind == "deploy":
        lot = next(lot for lot in state.lots if lot.id == p.lot)
        bought = {a: q for a, q in moved.items() if q > 0}
        if not bought:
            state.lots.remove(lot)
            state.last_deploy_day = None                 # nothing was deployed: the triggers stay armed
            if lot.level in state.levels_fired:
                state.levels_fired.remove(lot.level)
            event("tactical_deploy_failed", f"{lot.id}: the orders did not fill; nothing deployed", "alert",
                  lot=lot.id)
        else:
            lot.qty, lot.cost_usdt = bought, -cash_moved
            event("tactical_lot_opened", f"{lot.id}: bought " + ", ".join(f"{q:.8g} {a}" for a, q in bought.items())
                  + f" for {lot.cost_usdt:,.2f} USDT", lot=lot.id, qty=bought, cost_usdt=lot.cost_usdt)
        return
    # exits: split what was sold and received across the lots in proportion to their plan
    planned = {a: sum(x.qty.get(a, 0.0) for x in p.exits) for a in ASSETS}
    fill_ratio = {a: min(1.0, -moved[a] / planned[a]) if planned[a] > 0 else 0.0 for a in ASSETS}
    total_value = sum(x.value_usdt for x in p.exits) or 1.0
    to_core = 0.0
    for x in p.exits:
        lot = next((lot for lot in state.lots if lot.id == x.lot), None)
        if lot is None:
            continue
        sold_share = (sum(x.qty.get(a, 0.0) * fill_ratio[a] for a in ASSETS) /
                      (sum(x.qty.values()) or 1.0))
        for a, q in x.qty.items():
            lot.qty[a] = max(0.0, lot.qty.get(a, 0.0) - q * fill_ratio[a])
        lot.cost_usdt -= lot.cost_usdt * x.cost_share * sold_share
        proceeds = max(0.0, cash_moved) * x.value_usdt / total_value
        if x.kind == "target" or (x.kind == "partial" and params.partial_exit_to_core):
            to_core += proceeds
        event("tactical_exit_filled", f"{lot.id} {x.kind}: {proceeds:,.2f} USDT received", lot=lot.id,
              kind=x.kind, proceeds_usdt=proceeds)
        # what is left under the exchange's minimum quantity cannot be sold: the lot is done
        if all(q <= 1e-12 or q < _min_qty(a) for a, q in lot.qty.items()):
            state.lots.remove(lot)
    if to_core > 0:
        to_core = min(to_core, book.cash)
        move(Phase.RETURNING_TO_CORE, f"{to_core:,.2f} USDT of proceeds to CORE")
        transfers.append(Transfer(snap.asof, SLEEVE, Sleeve.CORE, QUOTE, to_core, "tactical exit proceeds"))
        state.returned_to_core_usdt += to_core
    if state.phase != Phase.MONITORING_MARKETS:      # a release alone leaves the phase as it was
        move(Phase.ACCUMULATING_CASH, "exit complete")
