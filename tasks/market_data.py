"""Gather: market data (refreshed in live-like modes), validated, plus state -> one Snapshot."""
from __future__ import annotations

from datetime import datetime, timedelta

from prefect import get_run_logger, task

from eternal import cycle
from eternal.config import Mode, Settings
from eternal.data.quality import validate_market_data
from eternal.errors import DataQualityError
from eternal.models import SPOT_SYMBOLS, Event, Quote, Sleeve, Snapshot, last_closed_day
from eternal.replay import REQUIRED
from tasks.context import stores


def required_symbols(sleeves) -> list[str]:
    return sorted({SPOT_SYMBOLS[a] for s in sleeves if s in REQUIRED for a in REQUIRED[s]})


@task(name="gather-snapshot")
def gather_snapshot(asof: datetime, s: Settings) -> Snapshot:
    log = get_run_logger()
    market, ledger = stores(s)
    day = last_closed_day(asof)
    symbols = required_symbols(cycle.ENGINES)
    stale = [sym for sym in symbols if (market.last_candle_ts(sym, "1d") or datetime.min.replace(
        tzinfo=day.tzinfo)) < day]
    if stale and s.mode != Mode.REPLAY and s.data.refresh_before_cycle:
        from eternal.data.download import download_market_data, make_bybit_public

        log.info("refreshing %s up to %s from Bybit", stale, day.date())
        download_market_data(market, since=day - timedelta(days=400), now=asof, progress=False,
                             exchange=make_bybit_public(s.exchange.public_url))

    frames = {sym: market.load_candles(sym, "1d", end=day + timedelta(days=1)) for sym in symbols}
    try:
        validate_market_data(frames, {}, asof, max_daily_move=s.data.max_daily_move,
                             max_funding_rate=s.data.max_funding_rate_8h)
    except DataQualityError as exc:
        ledger.append_events([Event(asof, "data_quality_failed", str(exc), None, "alert",
                                    {"failures": exc.failures})])
        raise

    if not ledger.is_initialised():
        weights = {sl: getattr(s.weights, sl.weight_field) for sl in Sleeve}
        ledger.initialise(s.initial_capital, weights, asof)
        log.info("portfolio initialised with %.2f USDT", s.initial_capital)
    closes = {sym.split("/")[0]: float(f["close"].iloc[-1]) for sym, f in frames.items()}
    ath = {sym.split("/")[0]: float(f["close"].max()) for sym, f in frames.items()}
    last_ok = ledger.last_run("daily-cycle", "completed")
    inflows = ledger.inflows_since(last_ok.started_at if last_ok else None)
    # Paper mode: no order book is stored, so the best bid and ask are the last close.
    quotes = {a: Quote(c, c, c) for a, c in closes.items()}
    return Snapshot(asof, day, closes, ath, quotes, ledger.load_books(), ledger.load_states(), inflows)

