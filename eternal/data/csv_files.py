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

from eternal.errors import DataError, DataQualityError

_CANDLES = re.compile(r"^ohlcv_(?P<tf>\d+[mhd])_(?P<base>[A-Z0-9]+)-(?P<quote>[A-Z0-9]+)_(?P<market>spot|perp)\.csv$")
_FUNDING = re.compile(r"^funding_\d+h_(?P<base>[A-Z0-9]+?)(?P<quote>USDT|USDC)_perp\.csv$")
_FEAR_GREED = "fear_greed_1d.csv"
CANDLE_COLUMNS = ["open", "high", "low", "close", "volume"]


def candle_symbol(base: str, quote: str, market: str) -> str:
    return f"{base}/{quote}" if market == "spot" else f"{base}/{quote}:{quote}"


@dataclass
class DataSet:
    """Market data in memory, keyed like the database: (symbol, timeframe) and symbol.
    `files`: the file each series was read from ("BTC/USDT" or "fear_greed" -> file name)."""

    candles: dict[tuple[str, str], pd.DataFrame] = field(default_factory=dict)
    funding: dict[str, pd.DataFrame] = field(default_factory=dict)
    fear_greed: pd.DataFrame | None = None
    files: dict[str, str] = field(default_factory=dict)

    def daily(self, symbol: str) -> pd.DataFrame:
        try:
            return self.candles[(symbol, "1d")]
        except KeyError:
            raise DataError(f"no daily candles for {symbol}: import or download them first "
                            f"(have: {sorted(s for s, tf in self.candles if tf == '1d')})") from None


_UTC_SUFFIX = re.compile(r"(?:Z|[+-]00:?00)$")


def _read(path: Path, columns: list[str], numeric: list[str]) -> pd.DataFrame:
    """The file's rows as text checked to be UTC times and numbers; every problem one line naming the
    file, the row's timestamp and the rule (a DataQualityError, as the validation suite raises).
    Values that are missing (a NaN, a truncated last line) stay NaN for the suite to report."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    missing = [c for c in ["timestamp", *columns] if c not in df.columns]
    if missing:
        _refuse(path, "columns", f"columns {', '.join(['timestamp', *columns])} present",
                detail=f"missing {', '.join(missing)} (has {', '.join(df.columns)})")
    raw = df["timestamp"].str.strip()
    stamps = pd.to_datetime(raw, utc=True, format="ISO8601", errors="coerce")
    bad = raw[stamps.isna()]
    if len(bad):
        _refuse(path, "timestamp", "timestamp is an ISO-8601 time", rows=list(bad))
    naive = raw[~raw.str.contains(_UTC_SUFFIX)]
    if len(naive):
        _refuse(path, "utc_index", "timestamps are UTC (end in Z or +00:00)", rows=list(naive))
    out = df[columns].set_axis(pd.DatetimeIndex(stamps, name="timestamp"))
    for column in numeric:
        text = out[column].str.strip()
        values = pd.to_numeric(text.replace("", None), errors="coerce")
        not_numbers = text[values.isna() & ~text.str.lower().isin(["", "nan", "null", "none"])]
        if len(not_numbers):
            _refuse(path, "numeric", f"{column} is a number",
                    rows=[t.isoformat() for t in not_numbers.index],
                    detail=f"got {', '.join(map(repr, not_numbers.iloc[:3]))}")
        out[column] = values.astype("float64")
    return out


def _refuse(path: Path, rule: str, expectation: str, rows: list[str] = (), detail: str = ""):
    from eternal.data.quality import Failure

    failure = Failure(path.name, expectation, list(rows)[:10], len(rows), max(len(rows) - 10, 0), rule, detail=detail)
    raise DataQualityError(f"data quality failed: {failure.describe()}", [failure.to_dict()])


def read_candles(path: Path) -> pd.DataFrame:
    return _read(path, CANDLE_COLUMNS, CANDLE_COLUMNS)


def read_funding(path: Path, symbol: str | None = None) -> pd.DataFrame:
    """Settlements; a `symbol` column, when the file has one, must name the file's own perp
    (e.g. BTCUSDT in funding_8h_BTCUSDT_perp.csv)."""
    out = _read(path, ["funding_rate"], ["funding_rate"])
    if symbol is not None:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, usecols=lambda c: c == "symbol")
        if "symbol" in raw:
            other = raw["symbol"].str.strip().set_axis(out.index)
            other = other[other != symbol]
            if len(other):
                _refuse(path, "symbol", f"symbol is {symbol}", rows=[t.isoformat() for t in other.index],
                        detail=f"got {', '.join(map(repr, other.iloc[:3]))}")
    return out


def read_fear_greed(path: Path) -> pd.DataFrame:
    """`value` stays float here (a NaN or 2.5 must reach the suite, which wants an integer 0..100);
    `as_fear_greed` makes it int64 once validated."""
    df = _read(path, ["value", "classification"], ["value"])
    value = df["value"]
    return as_fear_greed(df) if value.notna().all() and (value == value.round()).all() else df


def as_fear_greed(df: pd.DataFrame) -> pd.DataFrame:
    """A validated index frame with int64 values, as the store and the engines hold it."""
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
                data.files[sym if m["tf"] == "1d" else f"{sym} {m['tf']}"] = path.name
        elif m := _FUNDING.match(path.name):
            sym = candle_symbol(m["base"], m["quote"], "perp")
            data.funding[sym] = read_funding(path, f"{m['base']}{m['quote']}")
            data.files[f"{sym} funding"] = path.name
        elif path.name == _FEAR_GREED:
            data.fear_greed = read_fear_greed(path)
            data.files["fear_greed"] = path.name
    if not data.candles and not data.funding and data.fear_greed is None:
        raise DataError(f"no market data files found in {directory} (expected ohlcv_1d_BTC-USDT_spot.csv ...)")
    return data
