"""TREND (spec chapter 3): BTC and ETH perpetuals on SMA/ADX/ATR rules, one state machine per asset.

Decisions on the close of day D, fills at the open of D+1. Stops are levels handed to the exchange
(a reduce-only stop kept in step each cycle); the replay checks them intraday. The hard stop is
sent with the entry (decision close -/+ hard_stop_atr x ATR), so the position is guarded from its
fill on; the first close after the fill re-anchors it at the fill's price. Pure: no I/O.

  SCANNING -> SIGNAL_DETECTED -> ENTERING -> IN_POSITION -> EXITING -> SCANNING
  IN_POSITION -> STOPPED_OUT | TRAILING_STOP -> SCANNING      (the exchange's stop fired)
  SCANNING <-> NO_TRADE                                       (no-trend breaker)
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel

from eternal.config import TrendParams
from eternal.instruments import tradable_qty
from eternal.models import (
    PERP_SYMBOLS,
    EngineDecision,
    Event,
    ExitReason,
    Market,
    OrderIntent,
    OrderType,
    Side,
    Sleeve,
    Snapshot,
    StopLevel,
    utc,
)

ASSETS = ("BTC", "ETH")
MIN_NOTIONAL_USDT = 10.0


class AssetState(BaseModel):
    phase: str = "SCANNING"
    side: str | None = None                 # "long" | "short"
    entry_atr: float | None = None          # ATR of the decision day, for the hard stop
    decided_day: datetime | None = None
    opened_at: datetime | None = None       # fill time of the entry
    extreme_close: float | None = None      # highest close since the fill (lowest for shorts)
    trail: float | None = None
    trail_active: bool = False
    stop: float | None = None               # level in force for the next day
    stop_reason: str | None = None
    exit_reason: str | None = None
    paused: bool = False                    # no-trend breaker


class TrendState(BaseModel):
    assets: dict[str, AssetState] = {}


def _day(ts: datetime) -> datetime:
    """The UTC day of a fill: a paper fill at 00:05 belongs to the day whose open it took."""
    return ts.replace(hour=0, minute=0, second=0, microsecond=0)


def _ok(*values: float) -> bool:
    for v in values:
        if v is None or v != v:         # NaN is the one float unequal to itself
            return False
    return True


def decide(state_json: dict[str, Any] | None, snap: Snapshot, params: TrendParams,
           sleeve: Sleeve) -> EngineDecision:
    state = TrendState.model_validate(state_json or {})
    book = snap.books[sleeve]
    intents: list[OrderIntent] = []
    events: list[Event] = []
    stops: dict[str, StopLevel] = {}
    equity = book.equity(snap.closes, snap.marks)

    for asset in ASSETS:
        market = snap.perps.get(asset)
        i = snap.perp_index.get(asset)
        if market is None or i is None:
            continue
        st = state.assets.get(asset)
        if st is None:
            st = state.assets[asset] = AssetState()
        symbol = PERP_SYMBOLS[asset]

        def move(phase: str, why: str, level: str = "info", **data: Any) -> None:
            events.append(Event(snap.asof, "trend_state", f"{asset}: {st.phase} -> {phase}: {why}", sleeve,
                                level, {"asset": asset, "from": st.phase, "to": phase, **data}))
            st.phase = phase

        close = float(market.close[i])
        sma_f, sma_s = float(market.sma[params.fast_sma][i]), float(market.sma[params.slow_sma][i])
        adx, atr = float(market.adx[i]), float(market.atr[i])
        pos = book.perps.get(symbol)

        # 1. what happened since the last close, as the book shows it
        if st.phase == "ENTERING":
            if pos is not None:
                st.opened_at, st.extreme_close = pos.opened_at, None
                move("IN_POSITION", f"{st.side} {abs(pos.qty):.6g} filled at {pos.entry_price:.2f}")
            elif st.stop is not None and (float(market.low[i]) <= st.stop if st.side == "long"
                                          else float(market.high[i]) >= st.stop):
                # the book cannot tell the two apart (a refused entry leaves it as a filled and
                # stopped one does): trades.csv and the risk events do
                move("SCANNING", f"flat at the close, and the day reached the stop at {st.stop:.2f} sent "
                     "with the entry: it closed the position on its fill day, or the entry was not sent")
            else:
                move("SCANNING", "entry order did not fill", "warning")
        elif st.phase == "EXITING" and pos is None:
            move("SCANNING", f"exit ({st.exit_reason}) filled")
        elif st.phase == "EXITING":
            move("IN_POSITION", f"exit ({st.exit_reason}) did not fill: still in position", "warning")
        if st.phase == "IN_POSITION" and pos is None:     # the exchange's stop fired (or a liquidation)
            move(ExitReason.TRAILING_STOP.name if st.stop_reason == ExitReason.TRAILING_STOP
                 else "STOPPED_OUT", f"stop at {st.stop:.2f} ({st.stop_reason}) closed the position")
            move("SCANNING", "flat after the stop")
        if pos is None and st.phase == "SCANNING" and (
                st.trail_active or any(v is not None for v in (st.side, st.entry_atr, st.opened_at, st.extreme_close,
                                                               st.trail, st.stop, st.stop_reason, st.exit_reason))):
            st.side = st.entry_atr = st.opened_at = st.extreme_close = st.trail = st.stop = None
            st.stop_reason = st.exit_reason = None
            st.trail_active = False

        # 2. the no-trend breaker: 14 days of ADX < 20 pause entries until 3 days of ADX > 25
        if not st.paused and market.adx_below_for(i, params.no_trend_days, params.adx_no_trend):
            st.paused = True
            events.append(Event(snap.asof, "trend_paused", f"{asset}: ADX below {params.adx_no_trend:g} for "
                                f"{params.no_trend_days} days: new entries paused", sleeve, "info", {"asset": asset}))
        if st.paused and market.adx_above_for(i, params.resume_days, params.adx_entry):
            st.paused = False
            events.append(Event(snap.asof, "trend_resumed", f"{asset}: ADX above {params.adx_entry:g} for "
                                f"{params.resume_days} days: entries resume", sleeve, "info", {"asset": asset}))

        # 3. in a position: stops, trailing, exits
        if pos is not None and st.phase == "IN_POSITION":
            long = pos.qty > 0
            st.extreme_close = close if st.extreme_close is None else (
                max(st.extreme_close, close) if long else min(st.extreme_close, close))
            in_profit = close > pos.entry_price if long else close < pos.entry_price
            if in_profit:
                st.trail_active = True
            if st.trail_active and _ok(atr):
                level = (st.extreme_close - params.trailing_stop_atr * atr if long
                         else st.extreme_close + params.trailing_stop_atr * atr)
                st.trail = level if st.trail is None else (max(st.trail, level) if long else min(st.trail, level))
            entry_atr = st.entry_atr if st.entry_atr is not None else atr
            hard = (pos.entry_price - params.hard_stop_atr * entry_atr if long
                    else pos.entry_price + params.hard_stop_atr * entry_atr)
            tighter = st.trail is not None and (st.trail > hard if long else st.trail < hard)
            st.stop = st.trail if tighter else hard
            st.stop_reason = ExitReason.TRAILING_STOP if tighter else ExitReason.HARD_STOP
            stops[symbol] = StopLevel(st.stop, st.stop_reason)

            next_open = snap.day + timedelta(days=1)
            reason = None
            if _ok(sma_s) and (close < sma_s if long else close > sma_s):
                reason = ExitReason.SMA_EXIT
                why = f"close {close:.2f} {'<' if long else '>'} SMA{params.slow_sma} {sma_s:.2f}"
            elif long and (rate := market.latest_funding(snap.day + timedelta(days=1))) is not None \
                    and rate > params.funding_exit_rate_8h:
                reason = ExitReason.FUNDING_EXIT
                why = f"latest funding {rate:.6f} > {params.funding_exit_rate_8h}"
            elif next_open >= _day(utc(st.opened_at)) + timedelta(days=params.time_stop_days):
                reason = ExitReason.TIME_STOP
                why = f"held {params.time_stop_days} days at the next open"
            if reason is not None:
                intents.append(OrderIntent(sleeve, symbol, Market.PERP, Side.SELL if long else Side.BUY,
                                           abs(pos.qty), OrderType.MARKET, reason, f"exit:{asset}",
                                           reduce_only=True))
                st.exit_reason = reason
                move("EXITING", f"{reason}: {why}", reason=str(reason))
            continue

        # 4. flat: look for an entry
        if st.paused:
            if st.phase != "NO_TRADE":
                move("NO_TRADE", "no-trend breaker")
            continue
        if st.phase == "NO_TRADE":
            move("SCANNING", "breaker lifted")
        if sleeve in snap.entries_refused:      # the portfolio's breakers allow no entry now
            continue
        if not _ok(close, sma_f, sma_s, adx, atr) or atr <= 0:
            continue
        long_signal = close > sma_s and sma_f > sma_s and adx > params.adx_entry
        short_signal = close < sma_s and sma_f < sma_s and adx > params.adx_entry
        if not (long_signal or short_signal):
            continue
        side = "long" if long_signal else "short"
        qty, sizing = size(equity, close, atr, snap, book, symbol, params)
        qty = tradable_qty(symbol, qty, snap.marks.get(symbol, close))   # the exchange's step and minimums
        if qty * close < MIN_NOTIONAL_USDT:
            continue
        move("SIGNAL_DETECTED", f"{side}: close {close:.2f}, SMA{params.fast_sma} {sma_f:.2f}, "
             f"SMA{params.slow_sma} {sma_s:.2f}, ADX {adx:.1f}")
        st.side, st.entry_atr, st.decided_day = side, atr, snap.day
        st.trail, st.trail_active, st.extreme_close = None, False, None
        # the hard stop goes out with the entry (Bybit: the order's stopLoss), anchored at the
        # decision close until the fill's price is known; the next close moves it to the fill's
        st.stop = close - params.hard_stop_atr * atr if long_signal else close + params.hard_stop_atr * atr
        st.stop_reason = ExitReason.HARD_STOP
        stops[symbol] = StopLevel(st.stop, st.stop_reason)
        intents.append(OrderIntent(sleeve, symbol, Market.PERP, Side.BUY if long_signal else Side.SELL, qty,
                                   OrderType.MARKET, "entry", f"entry:{asset}",
                                   leverage=params.max_leverage))
        move("ENTERING", f"{side} {qty:.6g} ({sizing})", qty=qty, **{"sizing": sizing})
    return EngineDecision(intents, state.model_dump(mode="json"), events, {}, stops)


def size(equity: float, close: float, atr: float, snap: Snapshot, book, symbol: str,
         params: TrendParams) -> tuple[float, str]:
    """qty = risk x E / (hard-stop distance); halved on high BTC/ETH correlation; then the caps."""
    qty = params.risk_per_trade * equity / (params.hard_stop_atr * atr)
    notes = [f"risk {params.risk_per_trade:.2%} of {equity:.2f} over {params.hard_stop_atr:g} ATR"]
    corr = snap.btc_eth_correlation
    if corr is not None and not math.isnan(corr) and corr > params.correlation_halving:
        qty /= 2
        notes.append(f"halved: correlation {corr:.3f} > {params.correlation_halving}")
    asset_cap = params.max_asset_notional * equity / close
    if qty > asset_cap:
        qty = asset_cap
        notes.append(f"capped at {params.max_asset_notional:.0%} of equity")
    others = sum(p.notional(snap.marks.get(s, p.entry_price)) for s, p in book.perps.items() if s != symbol)
    total_cap = max(0.0, params.max_leverage * equity - others) / close
    if qty > total_cap:
        qty = total_cap
        notes.append(f"capped by total notional {params.max_leverage:g}x equity")
    return qty, "; ".join(notes)
