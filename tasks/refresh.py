"""Market data brought up to the last closed day before a run decides on it.

Where from: the CSV files of `ETERNAL_DATA_DIR` on paper when it is set (the offline way: the
rows it adds are imported through the same door as `eternal data import`), otherwise Bybit's
public history. Either way a run that cannot have the day it decides on is refused with one line
saying what to do, and nothing is traded. The CLI calls this before it starts a flow (a refusal
then costs no Prefect server start); the flow's own call then finds the data fresh.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from eternal.config import Mode, Settings
from eternal.errors import DataError, DataUnreachable
from eternal.market import FULL_HISTORY_FROM, needed_assets
from eternal.models import PERP_SYMBOLS, SPOT_SYMBOLS, Event, last_closed_day, utc
from eternal.secrets import reveal

OFFLINE_WAY = ("offline: `eternal data import DIR` (or ETERNAL_DATA_DIR=DIR, read by every run), then "
               "`eternal run daily --asof DAY` with DAY at most the day after the data's last day")


def market_symbols(s: Settings, market, ledger, asof: datetime, sleeves, log=None):
    """(spot assets, perp assets, their daily series, assets left out) a run at `asof` reads:
    what the sleeves trade and every coin held; without a refresh, an asset never stored is left
    out (one warning when `log` is given)."""
    spot, perp = needed_assets(sleeves)
    held = {a for b in ledger.load_books().values() for a in (*b.holdings, *b.staked) if b.qty(a)}
    stored_symbols = set(market.candle_symbols("1d"))
    missing = {a for a in (*spot, *perp) if (a in spot and SPOT_SYMBOLS[a] not in stored_symbols)
               or (a in perp and PERP_SYMBOLS[a] not in stored_symbols)} - held
    if missing and not (s.mode != Mode.REPLAY and s.data.refresh_before_cycle):
        if log is not None:
            log.warning("no candles stored for %s: the engines skip %s (import or download them)",
                        ", ".join(sorted(missing)), "it" if len(missing) == 1 else "them")
    else:
        missing = set()
    spot, perp = [a for a in spot if a not in missing], [a for a in perp if a not in missing]
    symbols = [SPOT_SYMBOLS[a] for a in sorted(set(spot) | held)] + [PERP_SYMBOLS[a] for a in perp]
    return spot, perp, symbols, missing


def refresh_before_run(s: Settings, asof: datetime, log) -> None:
    """The refresh a run at `asof` makes, done first (the CLI's, before it starts a flow)."""
    if s.mode != Mode.REPLAY and s.data.refresh_before_cycle:
        from eternal import cycle
        from tasks.context import stores

        sleeves = [sl for sl in cycle.SLEEVES if getattr(s.weights, sl.weight_field) > 0]
        market, ledger = stores(s)
        *_, symbols, _ = market_symbols(s, market, ledger, asof, sleeves)
        refresh_market(s, market, ledger, symbols, asof, log)


def stale_symbols(market, symbols, asof: datetime) -> list[str]:
    day = last_closed_day(asof)
    return [sym for sym in symbols if (market.last_candle_ts(sym, "1d") or utc("1970-01-01")) < day]


def refresh_market(s: Settings, market, ledger, symbols, asof: datetime, log: logging.Logger | logging.LoggerAdapter) -> None:
    """Every series of `symbols` up to the last day closed at `asof`, from ETERNAL_DATA_DIR (paper)
    or Bybit; DataError (one line, the offline way named) when that cannot be done."""
    if not (stale := stale_symbols(market, symbols, asof)):
        return
    day = last_closed_day(asof)
    if s.data_dir is not None and s.mode == Mode.PAPER:
        _import_dir(s, market, ledger, stale, day, log)
        return
    from eternal.data.download import download_market_data, make_bybit_public

    log.info("refreshing %s up to %s from Bybit", stale, day.date())
    corrected: list[Event] = []
    try:    # a series new to the store comes whole (all-time highs need the full history)
        download_market_data(market, since=min(FULL_HISTORY_FROM.values()), now=asof, progress=False,
                             exchange=make_bybit_public(reveal(s.exchange.public_url)), events=corrected,
                             max_daily_move=s.data.max_daily_move, max_funding_rate=s.data.max_funding_rate_8h)
    except DataUnreachable:
        last = min((t for sym in stale if (t := market.last_candle_ts(sym, "1d")) is not None), default=None)
        held = f"stored up to {last:%Y-%m-%d}" if last else "nothing stored"
        raise DataUnreachable(f"no internet: Bybit cannot be reached to bring {', '.join(stale)} up to "
                              f"{day:%Y-%m-%d} ({held}); {OFFLINE_WAY}") from None
    for event in corrected:
        log.warning(event.message)
    ledger.append_events(corrected)


def _import_dir(s: Settings, market, ledger, stale: list[str], day: datetime, log) -> None:
    from eternal.data.csv_files import read_dir
    from eternal.data.importer import import_dir

    files = read_dir(s.data_dir)
    short = {sym: (f.index[-1] if len(f) else None) for sym in stale
             if len(f := files.candles.get((sym, "1d"), [])) == 0 or f.index[-1] < day}
    if short:
        ends = ", ".join(f"{sym} {'none' if t is None else f'{t:%Y-%m-%d}'}" for sym, t in short.items())
        last = min((t for t in short.values() if t is not None), default=None)
        hint = (f"run with --asof {last + timedelta(days=1):%Y-%m-%d} or earlier" if last is not None
                else "add the files")
        raise DataError(f"ETERNAL_DATA_DIR={s.data_dir} holds no daily candle of {day:%Y-%m-%d}, the day a run at "
                        f"this time decides on (last: {ends}): {hint}, or add newer CSV files there")
    log.info("importing %s up to %s from ETERNAL_DATA_DIR=%s", stale, day.date(), s.data_dir)
    replaced: list[Event] = []
    import_dir(market, s.data_dir, s, events=replaced)
    for event in replaced:
        log.warning(event.message)
    ledger.append_events(replaced)
