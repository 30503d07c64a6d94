"""Gather: market data (refreshed in live-like modes), validated, plus state -> one Snapshot."""
from __future__ import annotations

from datetime import datetime, timedelta

from prefect import get_run_logger, task

from eternal import cycle
from eternal.config import Mode, Settings
from eternal.data.quality import validate_market_data
from eternal.errors import DataQualityError
from eternal.errors import DataError
from eternal.indicators import FundingHistory, realised_volatility, return_correlation
from eternal.models import PERP_SYMBOLS, SPOT_SYMBOLS, Event, Quote, Sleeve, Snapshot, last_closed_day
from eternal.replay import PERP_NEEDS, SPOT_NEEDS, perp_markets
from tasks.context import stores


def active_sleeves(s: Settings) -> list[Sleeve]:
    """Sleeves with an engine and a weight: the ones the cycle decides for."""
    return [sl for sl in cycle.ENGINES if getattr(s.weights, sl.weight_field) > 0]


def needed_assets(sleeves) -> tuple[list[str], list[str]]:
    spot = sorted({a for sl in sleeves for a in SPOT_NEEDS.get(sl, ())})
    perp = sorted({a for sl in sleeves for a in PERP_NEEDS.get(sl, ())})
    return spot, perp


@task(name="gather-snapshot")
def gather_snapshot(asof: datetime, s: Settings) -> tuple[Snapshot, int | None]:
    """The snapshot, and the newest transfer row its inflows counted (the next cycle counts the
    rows after it; the flow records it with the run)."""
    log = get_run_logger()
    market, ledger = stores(s)
    day = last_closed_day(asof)
    sleeves = active_sleeves(s)
    spot, perp = needed_assets(sleeves)
    # every coin any sleeve holds is priced too (FUNDING's SOL leg): equity is mark to market
    held = {a for b in ledger.load_books().values() for a in (*b.holdings, *b.staked) if b.qty(a)}
    spot = sorted(set(spot) | held)
    symbols = [SPOT_SYMBOLS[a] for a in spot] + [PERP_SYMBOLS[a] for a in perp]
    stale = [sym for sym in symbols if (market.last_candle_ts(sym, "1d") or datetime.min.replace(
        tzinfo=day.tzinfo)) < day]
    if stale and s.mode != Mode.REPLAY and s.data.refresh_before_cycle:
        from eternal.data.download import download_market_data, make_bybit_public

        log.info("refreshing %s up to %s from Bybit", stale, day.date())
        download_market_data(market, since=day - timedelta(days=400), now=asof, progress=False,
                             exchange=make_bybit_public(s.exchange.public_url))

    until = day + timedelta(days=1)
    frames = {sym: market.load_candles(sym, "1d", end=until) for sym in symbols}
    funding = {PERP_SYMBOLS[a]: market.load_funding(PERP_SYMBOLS[a], end=until + timedelta(seconds=1))
               for a in perp}
    try:
        validate_market_data(frames, {k: f for k, f in funding.items() if len(f)}, asof,
                             max_daily_move=s.data.max_daily_move,
                             max_funding_rate=s.data.max_funding_rate_8h)
    except DataQualityError as exc:
        ledger.append_events([Event(asof, "data_quality_failed", str(exc), None, "alert",
                                    {"failures": exc.failures})])
        raise

    if not ledger.is_initialised():
        weights = {sl: getattr(s.weights, sl.weight_field) for sl in Sleeve}
        ledger.initialise(s.initial_capital, weights, asof)
        log.info("portfolio initialised with %.2f USDT", s.initial_capital)
    closes = {a: float(frames[SPOT_SYMBOLS[a]]["close"].iloc[-1]) for a in spot}
    ath = {a: float(frames[SPOT_SYMBOLS[a]]["close"].max()) for a in spot}
    from eternal.data.csv_files import DataSet

    data = DataSet({(sym, "1d"): frames[sym] for sym in frames}, funding)
    markets = perp_markets(data, perp, s)
    index = {a: markets[a].index_of(day) for a in perp}
    marks = {PERP_SYMBOLS[a]: float(markets[a].close[i]) for a, i in index.items()}
    corr = None
    if {"BTC", "ETH"} <= set(perp):
        c = return_correlation(markets["BTC"], markets["ETH"], s.trend_1.correlation_window_days)
        corr = float(c.iloc[-1]) if len(c) else None
    last_ok = ledger.last_run("daily-cycle", "completed")
    inflows, seen = ledger.inflows_after((last_ok.summary or {}).get("transfers_seen") if last_ok else None)
    # Paper mode: no order book is stored, so the best bid and ask are the last close.
    quotes = {a: Quote(c, c, c) for a, c in closes.items()}
    signals = tactical_signals(s, market, frames, day, asof, log) if Sleeve.TACTICAL in sleeves else {}
    return Snapshot(asof, day, closes, ath, quotes, ledger.load_books(), ledger.load_states(), inflows,
                    markets, index, marks, corr, **signals,
                    regime_inputs=regime_inputs(frames.get(SPOT_SYMBOLS["BTC"]), day, s)), seen


def regime_inputs(frame, day: datetime, s: Settings):
    """BTC's close, SMA50/200, ADX(14) and realised volatility on `day`, from the spot candles the
    snapshot already loaded (the last 400 days are plenty for SMA200 and ADX)."""
    from eternal.allocation import MarketRegimeInputs
    from eternal.indicators import perp_market

    if frame is None or not len(frame) or frame.index[-1] != day:
        return None
    frame = frame[frame.index > day - timedelta(days=400)]
    if not len(frame):
        return None
    m = perp_market("BTC", SPOT_SYMBOLS["BTC"], frame, None, (50, 200))
    vol = realised_volatility(frame["close"], s.allocation.volatility_window_days)
    return MarketRegimeInputs(day, float(m.close[-1]), float(m.sma[50][-1]), float(m.sma[200][-1]),
                              float(m.adx[-1]), float(vol.iloc[-1]))


def tactical_signals(s: Settings, market, frames, day: datetime, asof: datetime, log) -> dict:
    """What TACTICAL reads besides prices: Fear & Greed of `day` (refreshed in live-like modes; a
    missing reading is no signal, never a failed cycle), BTC's realised volatility, BTC funding."""
    from eternal.data.fear_greed import fear_greed_on, update_fear_greed

    p = s.tactical
    fg = market.load_fear_greed()
    if s.mode != Mode.REPLAY and s.data.refresh_before_cycle and (not len(fg) or fg.index[-1] < day):
        try:
            update_fear_greed(market, s.data.fear_greed_url, timeout_s=s.data.fear_greed_timeout_s,
                              retries=s.data.fear_greed_retries)
            fg = market.load_fear_greed()
        except DataError as exc:
            log.warning("Fear & Greed not refreshed, no signal from it today: %s", exc)
    reading = fear_greed_on(fg, day) if len(fg) else None
    vol = realised_volatility(frames[SPOT_SYMBOLS["BTC"]]["close"], p.volatility_window_days)
    close_time = day + timedelta(days=1)
    funding = market.load_funding(PERP_SYMBOLS["BTC"], start=close_time - timedelta(days=p.negative_funding_days),
                                  end=close_time + timedelta(seconds=1))
    return {"fear_greed": reading,
            "volatility": {"BTC": float(vol.iloc[-1])} if len(vol) and vol.notna().iloc[-1] else {},
            "recent_funding": {"BTC": FundingHistory.of(funding).window(close_time, p.negative_funding_days)}}
