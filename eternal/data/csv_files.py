"""The CSV format of ../shared/data (see its README): file names map to series.

  ohlcv_1d_BTC-USDT_spot.csv  -> candles 'BTC/USDT', timeframe '1d'   (timestamp = open time, UTC)
  ohlcv_1d_BTC-USDT_perp.csv  -> candles 'BTC/USDT:USDT'
  funding_8h_BTCUSDT_perp.csv -> funding 'BTC/USDT:USDT'               (fraction per settlement)
  fear_greed_1d.csv           -> fear & greed index
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from eternal.errors import DataError

_CANDLES = re.compile(r"^ohlcv_(?P<tf>\d+[mhd])_(?P<base>[A-Z0-9]+)-(?P<quote>[A-Z0-9]+)_(?P<market>spot|perp)\.csv$")
_FUNDING = re.compile(r"^funding_\d+h_(?P<base>[A-Z0-9]+?)(?P<quote>USDT|USDC)_perp\.csv$")
_FEAR_GREED = "fear_greed_1d.csv"
CANDLE_COLUMNS = ["open", "high", "low", "close", "volume"]


def candle_symbol(base: str, quote: str, market: str) -> str:
    return f"{base}/{quote}" if market == "spot" else f"{base}/{quote}:{quote}"


@dataclass
class DataSet:
    """Market data in memory, keyed like the database: (symbol, timeframe) and symbol."""

    candles: dict[tuple[str, str], pd.DataFrame] = field(default_factory=dict)
    funding: dict[str, pd.DataFrame] = field(default_factory=dict)
    fear_greed: pd.DataFrame | None = None

    def daily(self, symbol: str) -> pd.DataFrame:
        try:
            return self.candles[(symbol, "1d")]
        except KeyError:
            raise DataError(f"no daily candles for {symbol}: import or download them first "
                            f"(have: {sorted(s for s, tf in self.candles if tf == '1d')})") from None


def _read(path: Path, columns: list[str]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except Exception as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    missing = [c for c in ["timestamp", *columns] if c not in df.columns]
    if missing:
        raise DataError(f"{path.name}: missing columns {missing} (has {list(df.columns)})")
    idx = pd.DatetimeIndex(pd.to_datetime(df["timestamp"], utc=True), name="timestamp")
    out = df[columns].set_axis(idx)
    return out


def read_candles(path: Path) -> pd.DataFrame:
    return _read(path, CANDLE_COLUMNS).astype("float64")


def read_funding(path: Path) -> pd.DataFrame:
    return _read(path, ["funding_rate"]).astype("float64")


def read_fear_greed(path: Path) -> pd.DataFrame:
    df = _read(path, ["value", "classification"])
    return df.astype({"value": "int64", "classification": "str"})


def read_dir(directory: Path | str, timeframes: tuple[str, ...] = ("1d",)) -> DataSet:
    """Every recognised file of `directory`; unknown files are ignored, an empty dir is an error."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"data directory {directory} does not exist")
    data = DataSet()
    for path in sorted(directory.glob("*.csv")):
        if m := _CANDLES.match(path.name):
            if m["tf"] in timeframes:
                sym = candle_symbol(m["base"], m["quote"], m["market"])
                data.candles[(sym, m["tf"])] = read_candles(path)
        elif m := _FUNDING.match(path.name):
            data.funding[candle_symbol(m["base"], m["quote"], "perp")] = read_funding(path)
        elif path.name == _FEAR_GREED:
            data.fear_greed = read_fear_greed(path)
    if not data.candles and not data.funding:
        raise DataError(f"no market data files found in {directory} (expected ohlcv_1d_BTC-USDT_spot.csv ...)")
    return data
