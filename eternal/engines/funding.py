"""FUNDING (spec chapter 4): delta-neutral funding capture, long spot and short perp 1:1.

Decides at every funding settlement (a `FundingTick`), per asset (BTC, ETH, SOL):

  MONITORING -> OPPORTUNITY_DETECTED -> ENTERING -> FUNDING_COLLECTING -> EXITING -> MONITORING
  (exit reasons HOLDING_MAX_DAYS, FUNDING_NEGATIVE, BASIS_WIDE; the breaker closes everything)

Funding received: half compounds into both legs, half goes to the TACTICAL sleeve as a transfer.
Pure: no I/O, no clock.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel

from eternal.config import FundingParams
from eternal.instruments import default as trading_rules
from eternal.instruments import tradable_qty
from eternal.models import (
    PERP_SYMBOLS,
    QUOTE,
    SPOT_SYMBOLS,
    EngineDecision,
    Event,
    FundingTick,
    Market,
    OrderIntent,
    OrderType,
    Side,
    Sleeve,
    SleeveBook,
    Transfer,
    minute_stamp,
    utc,
)

SLEEVE = Sleeve.FUNDING
ASSETS = ("BTC", "ETH", "SOL")          # BTC and ETH before SOL when capital is short
MIN_NOTIONAL_USDT = 10.0


class AssetState(BaseModel):
    phase: str = "MONITORING"
    sent_at: datetime | None = None      # when the last entry, exit or re-hedge orders were sent
    opened_at: datetime | None = None
    exit_reason: str | None = None
    compound_pending_usdt: float = 0.0   # received funding waiting to be large enough to add


class FundingState(BaseModel):
    assets: dict[str, AssetState] = {}
    breaker_tripped_at: datetime | None = None
    # cash committed by orders that rest until the next open: [sent_at, usdt]
    committed: list[tuple[datetime, float]] = []


def awaiting_fill(sent_at: datetime | None, now: datetime, deferred: bool = True) -> bool:
    """Orders sent at `sent_at` may still be resting: in replay they fill at the next daily open
    (a 00:00 decision at that same open, processed after the tick), live they fill at once."""
    if sent_at is None or not deferred:
        return False
    sent_at = utc(sent_at)
    midnight = sent_at.replace(hour=0, minute=0, second=0, microsecond=0)
    next_open = sent_at if sent_at == midnight else midnight + timedelta(days=1)
    return now <= next_open


def _asset_state(state: FundingState, asset: str) -> AssetState:
    """The asset's state, a new one the first time (not one built at every call to be dropped)."""
    st = state.assets.get(asset)
    if st is None:
        st = state.assets[asset] = AssetState()
    return st


def basis(tick: FundingTick, asset: str) -> float:
    return (tick.perp[asset] - tick.spot[asset]) / tick.spot[asset]


def legs(book: SleeveBook, asset: str) -> tuple[float, float]:
    """(spot qty held, short perp qty as a positive number)."""
    pos = book.perps.get(PERP_SYMBOLS[asset])
    return book.holdings.get(asset, 0.0), (-pos.qty if pos is not None and pos.qty < 0 else 0.0)


def hedge_qty(asset: str, notional: float, tick: FundingTick) -> float:
    """The qty of both legs for `notional` USDT: down to the perp's step (a multiple of the spot
    step, so the legs match exactly), 0.0 when either leg would be under the exchange's minimums."""
    qty = tradable_qty(PERP_SYMBOLS[asset], notional / tick.spot[asset], tick.perp[asset])
    return qty if qty > 0 and tradable_qty(SPOT_SYMBOLS[asset], qty, tick.spot[asset]) == qty else 0.0


def dust(symbol: str) -> float:
    """Under this a holding cannot be sold (the exchange's minimum quantity): it is not a leg."""
    rules = trading_rules().get(symbol)
    return rules.min_qty if rules is not None else 1e-12


def decide(tick: FundingTick, params: FundingParams) -> EngineDecision:
    state = FundingState.model_validate(tick.state or {})
    book = tick.books[SLEEVE]
    key = minute_stamp(tick.ts)
    intents: list[OrderIntent] = []
    events: list[Event] = []
    transfers: list[Transfer] = []
    prices = {a: p for a, p in tick.spot.items()}
    marks = {PERP_SYMBOLS[a]: p for a, p in tick.perp.items()}
    equity = book.equity(prices, marks)

    def event(kind: str, message: str, level: str = "info", **data: Any) -> None:
        events.append(Event(tick.ts, kind, message, SLEEVE, level, data))

    def move(st: AssetState, asset: str, phase: str, why: str, level: str = "info") -> None:
        event("funding_state", f"{asset}: {st.phase} -> {phase}: {why}", level, asset=asset,
              **{"from": st.phase, "to": phase})
        st.phase = phase

    def enter(asset: str, qty: float, why: str, tag: str) -> None:
        """Both legs in one step, `qty` each (from `hedge_qty`): the perp short first (its margin
        is the fixed part), then the spot buy, scaled to the cash left if the price moved before
        the fill (the next tick's hedge check trims the perp to match)."""
        intents.append(OrderIntent(SLEEVE, PERP_SYMBOLS[asset], Market.PERP, Side.SELL, qty, OrderType.MARKET,
                                   why, f"{key}:{tag}:{asset}:perp", leverage=params.leverage))
        intents.append(OrderIntent(SLEEVE, SPOT_SYMBOLS[asset], Market.SPOT, Side.BUY, qty, OrderType.MARKET,
                                   why, f"{key}:{tag}:{asset}:spot", scale_to_cash=True))

    def exit_(asset: str, st: AssetState, reason: str, why: str) -> None:
        spot_qty, perp_qty = legs(book, asset)
        if spot_qty > 0:
            intents.append(OrderIntent(SLEEVE, SPOT_SYMBOLS[asset], Market.SPOT, Side.SELL, spot_qty,
                                       OrderType.MARKET, reason, f"{key}:exit:{asset}:spot"))
        if perp_qty > 0:
            intents.append(OrderIntent(SLEEVE, PERP_SYMBOLS[asset], Market.PERP, Side.BUY, perp_qty,
                                       OrderType.MARKET, reason, f"{key}:exit:{asset}:perp", reduce_only=True))
        st.exit_reason, st.sent_at = reason, tick.ts
        move(st, asset, "EXITING", f"{reason}: {why}")

    # Funding received at this settlement: half to TACTICAL, half waits to compound.
    for asset, amount in tick.received.items():
        st = _asset_state(state, asset)
        if amount > 0:
            to_tactical = amount * (1 - params.compound_share)
            transfers.append(Transfer(tick.ts, SLEEVE, Sleeve.TACTICAL, QUOTE, to_tactical,
                                      f"{params.compound_share:.0%} of {amount:.6f} USDT funding on {asset} "
                                      "compounds, the rest goes to TACTICAL"))
            st.compound_pending_usdt += amount * params.compound_share
        elif amount < 0:
            event("funding_paid", f"{asset}: paid {-amount:.6f} USDT funding, absorbed by the sleeve",
                  asset=asset, amount=amount)

    # Breaker: funding negative on N consecutive settlements of any asset closes everything.
    n = params.negative_settlements_breaker
    tripped = [a for a in ASSETS if len(r := tick.settled.get(a, ())) >= n and all(x < 0 for x in r[-n:])]
    if tripped:
        if state.breaker_tripped_at is None:
            state.breaker_tripped_at = tick.ts
            event("funding_breaker", f"funding negative on {n} consecutive settlements of "
                  f"{', '.join(tripped)}: closing every FUNDING position", "alert", assets=tripped)
    else:
        state.breaker_tripped_at = None

    # cash already promised to orders that have not filled yet is not spent twice
    state.committed = [(t, u) for t, u in state.committed if awaiting_fill(t, tick.ts, tick.fills_deferred)]
    cash_left = book.cash - sum(u for _, u in state.committed)

    def commit(usdt: float) -> None:
        nonlocal cash_left
        cash_left -= usdt
        if tick.fills_deferred:         # live fills take the cash at once: the book shows it
            state.committed.append((tick.ts, usdt))

    for asset in ASSETS:
        if asset not in tick.spot or asset not in tick.perp:
            continue
        st = _asset_state(state, asset)
        spot_qty, perp_qty = legs(book, asset)
        held = spot_qty >= dust(SPOT_SYMBOLS[asset]) or perp_qty >= dust(PERP_SYMBOLS[asset])
        settled = tick.settled.get(asset, ())
        b = basis(tick, asset)

        # what happened since the last tick (orders may still rest until the next open)
        pending = awaiting_fill(st.sent_at, tick.ts, tick.fills_deferred)
        perp_pos = book.perps.get(PERP_SYMBOLS[asset])
        fill_time = utc(perp_pos.opened_at) if perp_pos is not None else tick.ts   # held from the fill
        if st.phase == "ENTERING" and held:
            # held from the entry's decision: the same instant on every venue (Bybit stamps the
            # fills minutes after the settlement, the paper exchange at it), so the holding limit
            # ends at the same settlement on both
            st.opened_at, st.sent_at = st.sent_at or fill_time, None
            move(st, asset, "FUNDING_COLLECTING", f"spot {spot_qty:.6g} / perp -{perp_qty:.6g} filled")
        elif st.phase == "ENTERING" and pending:
            continue
        elif st.phase == "ENTERING":
            st.sent_at = None
            move(st, asset, "MONITORING", "entry did not fill", "warning")
        elif st.phase == "EXITING" and not held:
            move(st, asset, "MONITORING", f"exit ({st.exit_reason}) filled")
            st.opened_at, st.exit_reason, st.compound_pending_usdt, st.sent_at = None, None, 0.0, None
        elif st.phase == "EXITING" and pending:
            continue
        elif st.phase == "FUNDING_COLLECTING" and not held:   # closed outside the engine (risk step, venue)
            move(st, asset, "MONITORING", "the hedge was closed outside the engine (risk step or venue)",
                 "warning")
            st.opened_at, st.exit_reason, st.compound_pending_usdt, st.sent_at = None, None, 0.0, None
        if st.phase in ("MONITORING", "OPPORTUNITY_DETECTED") and held:   # hand-placed or left over
            st.opened_at = fill_time
            move(st, asset, "FUNDING_COLLECTING", "found an open hedge")

        if st.phase in ("FUNDING_COLLECTING", "EXITING") and held:
            if st.phase == "EXITING":       # an exit leg did not fill: send what is left
                exit_(asset, st, st.exit_reason or "retry", "closing what is left")
                continue
            latest = settled[-1] if settled else None
            held_days = (tick.ts - utc(st.opened_at)) if st.opened_at else timedelta(0)
            if state.breaker_tripped_at is not None:
                exit_(asset, st, "FUNDING_NEGATIVE", "breaker")
                continue
            if latest is not None and latest < 0:
                exit_(asset, st, "FUNDING_NEGATIVE", f"latest settled rate {latest:.6f} < 0")
                continue
            if b > params.max_basis:
                exit_(asset, st, "BASIS_WIDE", f"basis {b:.4%} > {params.max_basis:.2%}")
                continue
            if held_days >= timedelta(days=params.max_holding_days):
                exit_(asset, st, "HOLDING_MAX_DAYS", f"held {held_days.days} days")
                continue
            # staying in: the legs must match within the tolerance (an exit closes both anyway)
            gap = spot_qty - perp_qty
            # the perp moves by whole steps: a gap it cannot trade is as matched as it gets
            fixable = tradable_qty(PERP_SYMBOLS[asset], abs(gap), tick.perp[asset]) > 0
            if abs(gap) > params.hedge_tolerance * max(spot_qty, perp_qty) and fixable:
                if not pending:
                    st.sent_at = tick.ts
                    side = Side.SELL if gap > 0 else Side.BUY
                    step = tradable_qty(PERP_SYMBOLS[asset], abs(gap), tick.perp[asset])
                    intents.append(OrderIntent(SLEEVE, PERP_SYMBOLS[asset], Market.PERP, side, step,
                                               OrderType.MARKET, "rehedge", f"{key}:rehedge:{asset}",
                                               reduce_only=side == Side.BUY,
                                               leverage=params.leverage if side == Side.SELL else None))
                    if side == Side.SELL:
                        commit(step * tick.perp[asset] / params.leverage)
                    event("hedge_mismatch", f"{asset}: spot {spot_qty:.8g} vs perp -{perp_qty:.8g}: "
                          f"re-hedging the perp by {gap:+.8g}", "warning", asset=asset, spot=spot_qty,
                          perp=perp_qty)
                continue
            unit = 1 + 1 / params.leverage
            # the funding waits until it buys a whole valid order of both legs; the rest waits on
            qty = hedge_qty(asset, st.compound_pending_usdt / unit, tick)
            used = qty * tick.spot[asset] * unit
            if (qty > 0 and st.compound_pending_usdt >= MIN_NOTIONAL_USDT * unit and used <= cash_left):
                enter(asset, qty, "compound", "compound")
                event("funding_compound", f"{asset}: {used:.4f} of {st.compound_pending_usdt:.4f} USDT of "
                      f"funding added to both legs ({qty:g} {asset})", asset=asset, usdt=used)
                commit(used)
                st.compound_pending_usdt -= used
            continue

        if st.phase != "MONITORING" or state.breaker_tripped_at is not None or tick.entries_refused:
            continue
        predicted = tick.predicted.get(asset)
        last_two = settled[-2:]
        if not (predicted is not None and predicted > params.min_predicted_rate_8h
                and len(last_two) == 2 and all(r > 0 for r in last_two) and b < params.max_basis):
            continue
        # 5 % of the sleeve's equity per asset, paid from cash: spot cost plus perp margin
        per_unit_cash = 1 + 1 / params.leverage
        # 2 % kept for fees and for the price moving before the next open fills the entry
        affordable = max(0.0, cash_left) / per_unit_cash * 0.98
        notional = min(params.max_asset_share * equity, affordable)
        qty = hedge_qty(asset, notional, tick)
        if notional < MIN_NOTIONAL_USDT or qty <= 0:
            continue
        move(st, asset, "OPPORTUNITY_DETECTED", f"predicted {predicted:.6f}, last two {last_two}, "
             f"basis {b:.4%}")
        enter(asset, qty, "entry", "entry")
        st.sent_at = tick.ts
        # a cash-limited entry keeps what is left for its fees: nothing for the assets after it
        commit(cash_left if notional == affordable else qty * tick.spot[asset] * per_unit_cash)
        move(st, asset, "ENTERING", f"long {notional:.2f} USDT spot, short the same perp")
    return EngineDecision(intents, state.model_dump(mode="json"), events, {}, {}, transfers)
