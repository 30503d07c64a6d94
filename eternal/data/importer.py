"""`eternal data import DIR`: load the CSV files of a data directory into the database.

All or nothing: every file is read and validated, merged with what is stored (a file may extend
or correct a stored series), by the same suite as a backfill and a flow's gather
(`eternal.market.check_dataset`), and only then written, in one transaction.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from eternal.config import Settings
from eternal.data.csv_files import DataSet, as_fear_greed, read_dir
from eternal.data.store import MarketStore
from eternal.models import Sleeve


def import_dir(store: MarketStore, directory: Path | str, settings: Settings | None = None,
               timeframes: tuple[str, ...] = ("1d",), events: list | None = None) -> dict[str, int]:
    """Write the rows of `directory` that are new or differ from the stored ones; returns rows
    written per series (a re-import writes 0). A stored row replaced by other values is a
    `stored_rows_replaced` event appended to `events`. Raises DataError/DataQualityError, one line
    naming the file, before any write."""
    from eternal.market import check_dataset

    from eternal.config import load_settings

    settings = settings or load_settings()
    data = read_dir(directory, timeframes)
    sleeves = [sl for sl in Sleeve if getattr(settings.weights, sl.weight_field) > 0]
    check_dataset(merged_with_stored(store, data), settings, sleeves)
    if data.fear_greed is not None:
        data.fear_greed = as_fear_greed(data.fear_greed)
    changes = only_changes(store, data)
    if events is not None:
        events += changes
    return store.write(data)


def only_changes(store: MarketStore, data: DataSet) -> list:
    """Keep in `data` only the rows new to the store or different from the stored ones (so a
    re-import writes nothing); one `stored_rows_replaced` event per series whose stored rows the
    files change (warning: history was rewritten)."""
    from datetime import UTC, datetime

    from eternal.models import Event

    def diff(name: str, stored: pd.DataFrame, new: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
        if not len(stored):
            return new
        known = new.index.isin(stored.index)
        old = stored.reindex(new.index[known])[columns]
        differs = (old.to_numpy() != new.loc[known, columns].to_numpy()).any(axis=1)
        replaced = new.index[known][differs]
        if len(replaced):
            shown = ", ".join(f"{t:%Y-%m-%d %H:%M}" for t in replaced[:5]) + (" ..." if len(replaced) > 5 else "")
            events.append(Event(datetime.now(UTC), "stored_rows_replaced",
                                f"{name}: the import replaced {len(replaced)} stored row(s) with other values: {shown}",
                                None, "warning", {"series": name, "timestamps": [t.isoformat() for t in replaced]}))
        return new[~known | np.isin(new.index, replaced)]

    events: list = []
    for (symbol, tf), df in list(data.candles.items()):
        data.candles[(symbol, tf)] = diff(f"{symbol} {tf}", store.load_candles(symbol, tf), df,
                                         ["open", "high", "low", "close", "volume"])
    for symbol, df in list(data.funding.items()):
        data.funding[symbol] = diff(f"{symbol} funding", store.load_funding(symbol), df, ["funding_rate"])
    if data.fear_greed is not None:
        data.fear_greed = diff("Fear & Greed", store.load_fear_greed(), data.fear_greed, ["value", "classification"])
    return events


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
