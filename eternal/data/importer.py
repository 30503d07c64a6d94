"""`eternal data import DIR`: load the CSV files of a data directory into the database.

All or nothing: every file is read and validated, merged with what is stored (a file may extend
or correct a stored series), by the same suite as a backfill and a flow's gather
(`eternal.market.check_dataset`), and only then written, in one transaction.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from eternal.config import Settings
from eternal.data.csv_files import DataSet, as_fear_greed, read_dir
from eternal.data.store import MarketStore
from eternal.models import Sleeve


def import_dir(store: MarketStore, directory: Path | str, settings: Settings | None = None,
               timeframes: tuple[str, ...] = ("1d",)) -> dict[str, int]:
    """Upsert every series of `directory`; returns rows written per series (re-import is a no-op
    in effect). Raises DataError/DataQualityError, one line naming the file, before any write."""
    from eternal.market import check_dataset

    from eternal.config import load_settings

    settings = settings or load_settings()
    data = read_dir(directory, timeframes)
    sleeves = [sl for sl in Sleeve if getattr(settings.weights, sl.weight_field) > 0]
    check_dataset(merged_with_stored(store, data), settings, sleeves)
    if data.fear_greed is not None:
        data.fear_greed = as_fear_greed(data.fear_greed)
    return store.write(data)


def merged_with_stored(store: MarketStore, data: DataSet) -> DataSet:
    """What the store will hold after writing `data` (its rows replace stored rows of the same
    time; its own duplicates stay, so the suite sees them), for the daily series, funding, index."""
    def merge(stored: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
        if not len(stored):
            return new
        kept = stored[~stored.index.isin(new.index)]
        return pd.concat([kept, new]).sort_index(kind="stable")

    merged = DataSet(files=dict(data.files))
    for (symbol, tf), df in data.candles.items():
        merged.candles[(symbol, tf)] = merge(store.load_candles(symbol, tf), df) if tf == "1d" else df
    for symbol, df in data.funding.items():
        merged.funding[symbol] = merge(store.load_funding(symbol), df)
    if data.fear_greed is not None:
        merged.fear_greed = merge(store.load_fear_greed(), data.fear_greed)
    return merged
