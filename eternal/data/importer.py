"""`eternal data import DIR`: load the CSV files of a data directory into the database."""
from __future__ import annotations

from pathlib import Path

from eternal.data.csv_files import read_dir
from eternal.data.store import MarketStore


def import_dir(store: MarketStore, directory: Path | str,
               timeframes: tuple[str, ...] = ("1d",)) -> dict[str, int]:
    """Upsert every series of `directory`; returns rows written per series (re-import is a no-op)."""
    data = read_dir(directory, timeframes)
    written: dict[str, int] = {}
    for (symbol, tf), df in data.candles.items():
        written[f"candles {symbol} {tf}"] = store.upsert_candles(symbol, tf, df)
    for symbol, df in data.funding.items():
        written[f"funding {symbol}"] = store.upsert_funding(symbol, df)
    if data.fear_greed is not None:
        written["fear_greed"] = store.upsert_fear_greed(data.fear_greed)
    return written
