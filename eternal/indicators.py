"""Indicators, computed once per series with pandas-ta and read by position (never per day).

A `PerpMarket` holds one perpetual's daily candles, its SMAs, ADX and ATR as numpy arrays, and its
funding settlements; an engine reads row `i` (the decision day) and short windows ending there.
"""
from __future__ import annotations

import bisect
import functools
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import pandas_ta as ta


@dataclass(frozen=True)
class PerpMarket:
    asset: str
    symbol: str
    days: pd.DatetimeIndex                  # candle open times, UTC
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    sma: dict[int, np.ndarray]
    adx: np.ndarray                         # ADX_14 of ta.adx with defaults
    atr: np.ndarray                         # ta.atr defaults (RMA, 14)
    funding_ts: np.ndarray = field(default_factory=lambda: np.array([], dtype="datetime64[ns]"))
    funding_rate: np.ndarray = field(default_factory=lambda: np.array([], dtype=float))

    def index_of(self, day: datetime) -> int | None:
        i = self.days.searchsorted(pd.Timestamp(day))
        return int(i) if i < len(self.days) and self.days[i] == pd.Timestamp(day) else None

    def adx_below_for(self, i: int, days: int, level: float) -> bool:
        """True when the ADX of day i and of the `days` - 1 days before were all below `level` (a
        NaN is not below it; fewer than `days` days: False): TREND's no-trend breaker (spec 3).
        Counted once per (days, level) over the whole series; day i's answer reads days up to i."""
        return self._adx_runs("<", days, level, i)

    def adx_above_for(self, i: int, days: int, level: float) -> bool:
        """True when the ADX of day i and of the `days` - 1 days before were all above `level` (a
        NaN is not above it; fewer than `days` days: False): the no-trend breaker's lifting."""
        return self._adx_runs(">", days, level, i)

    def _adx_runs(self, op: str, days: int, level: float, i: int) -> bool:
        runs = self._adx_runs_of.get((op, days, level))
        if runs is None:
            hit = ((self.adx < level) if op == "<" else (self.adx > level)).astype(np.int64)
            runs = np.convolve(hit, np.ones(days, dtype=np.int64))[:len(hit)] == days
            self._adx_runs_of[(op, days, level)] = runs
        return bool(runs[i])

    @functools.cached_property
    def _adx_runs_of(self) -> dict[tuple[str, int, float], np.ndarray]:
        """(comparison, days, level) -> for each day, whether it ends such a run (counted once)."""
        return {}

    def latest_funding(self, at: datetime) -> float | None:
        """The latest settled rate with settlement time at or before `at`."""
        j = bisect.bisect_right(self._settlements[0], at)
        return self._settlements[1][j - 1] if j > 0 else None

    def recent_settlements(self, at: datetime, n: int) -> list[tuple[datetime, float]]:
        """The last `n` settlements at or before `at`, oldest first."""
        times, rates = self._settlements
        j = bisect.bisect_right(times, at)
        return list(zip(times[max(0, j - n):j], rates[max(0, j - n):j]))

    def recent_rates(self, at: datetime, n: int) -> tuple[float, ...]:
        """The rates of the last `n` settlements at or before `at`, oldest first (FUNDING's
        every tick: no (time, rate) pairs built to be dropped)."""
        times, rates = self._settlements
        j = bisect.bisect_right(times, at)
        return tuple(rates[max(0, j - n):j])

    def settlement_lists(self) -> tuple[list[datetime], list[float]]:
        """(aware UTC datetimes, rates) of every settlement, as Python lists, in time order."""
        return self._settlements

    @functools.cached_property
    def _settlements(self) -> tuple[list[datetime], list[float]]:
        """(UTC datetimes, rates) as Python lists: the engines look funding up several times per
        event, and a pandas Timestamp per lookup was a third of a replay's time (converted here
        as one array, not a Timestamp each)."""
        return _as_lists(self.funding_ts, self.funding_rate)

    def settlements(self, start: datetime, end: datetime) -> list[tuple[datetime, float]]:
        """Settlements with start <= ts < end, in time order (irregular ones included)."""
        return settlements_between(self.funding_ts, self.funding_rate, start, end)


def _as_lists(ts: np.ndarray, rates: np.ndarray) -> tuple[list[datetime], list[float]]:
    """Settlements (naive UTC datetime64, rates) as Python lists of aware UTC datetimes and floats,
    converted as one array each (a pandas Timestamp per element was a large part of a replay)."""
    return pd.DatetimeIndex(ts).tz_localize("UTC").to_pydatetime().tolist(), rates.astype(float).tolist()


def _ns(at: datetime) -> np.datetime64:
    """An aware datetime as naive UTC datetime64[ns] (the funding arrays' dtype); without a pandas
    Timestamp: TACTICAL's funding window is read at every close."""
    if at.tzinfo is None:
        raise TypeError(f"a naive datetime ({at}): funding times are UTC, give tzinfo")
    return np.datetime64(at.astimezone(UTC).replace(tzinfo=None), "ns")


def settlements_between(ts: np.ndarray, rates: np.ndarray, start: datetime,
                        end: datetime) -> list[tuple[datetime, float]]:
    """Settlements with start <= ts < end from sorted arrays, in time order."""
    lo, hi = np.searchsorted(ts, _ns(start)), np.searchsorted(ts, _ns(end))
    return [(pd.Timestamp(t, tz="UTC").to_pydatetime(), float(r)) for t, r in zip(ts[lo:hi], rates[lo:hi])]


@dataclass(frozen=True)
class FundingHistory:
    """One perpetual's funding settlements alone (no candles needed: TACTICAL reads BTC's funding
    over years where the perp has no usable price history yet)."""

    ts: np.ndarray                          # datetime64[ns], naive UTC, sorted
    rate: np.ndarray

    @classmethod
    def of(cls, funding: pd.DataFrame | None) -> FundingHistory:
        if funding is None or not len(funding):
            return cls(np.array([], dtype="datetime64[ns]"), np.array([], dtype=float))
        return cls(funding.index.tz_convert(None).to_numpy(dtype="datetime64[ns]"),
                   funding["funding_rate"].to_numpy(dtype=float))

    def window(self, end: datetime, days: int) -> tuple[float, ...]:
        """Rates settled in (end - days, end], oldest first: what is known at `end`."""
        times, rates = self._lists
        hi = bisect.bisect_right(times, end)
        lo = bisect.bisect_right(times, end - timedelta(days=days))
        return tuple(rates[lo:hi])

    @functools.cached_property
    def _lists(self) -> tuple[list[datetime], list[float]]:
        """(aware UTC datetimes, rates) as Python lists: TACTICAL reads a window at every close."""
        return _as_lists(self.ts, self.rate)


def realised_volatility(close: pd.Series, window: int = 30, periods_per_year: int = 365) -> pd.Series:
    """Rolling standard deviation (ddof 1) of daily log returns over `window` returns, annualised
    with sqrt(periods_per_year); NaN until `window` returns exist."""
    returns = np.log(close.astype(float)).diff()
    return returns.rolling(window, min_periods=window).std(ddof=1) * np.sqrt(periods_per_year)


def perp_market(asset: str, symbol: str, candles: pd.DataFrame, funding: pd.DataFrame | None = None,
                sma_lengths: Iterable[int] = (20, 50, 100, 200), adx_length: int = 14,
                atr_length: int = 14) -> PerpMarket:
    high, low, close = candles["high"], candles["low"], candles["close"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adx = ta.adx(high, low, close, length=adx_length)
        atr = ta.atr(high, low, close, length=atr_length)
    # the SMA is pandas' rolling mean, not ta.sma: ta.sma is a numba function whose first call in a
    # process loads numba's compiler (0.5-1.8 s measured, a fresh backfill's or flow run's); the
    # two agree to 5e-15 relative, and TREND-1's 189 round trips are the same (benchmarks/peers.py)
    smas = {n: close.astype(float).rolling(n, min_periods=n).mean() for n in sorted(set(sma_lengths))}

    def arr(series: pd.Series | None) -> np.ndarray:
        if series is None:            # too short a series: pandas-ta returns None
            return np.full(len(candles), np.nan)
        return series.reindex(candles.index).to_numpy(dtype=float)

    if funding is not None and len(funding):
        f_ts = funding.index.tz_convert(None).to_numpy(dtype="datetime64[ns]")
        f_rate = funding["funding_rate"].to_numpy(dtype=float)
    else:
        f_ts, f_rate = np.array([], dtype="datetime64[ns]"), np.array([], dtype=float)
    return PerpMarket(asset, symbol, candles.index, candles["open"].to_numpy(float),
                      high.to_numpy(float), low.to_numpy(float), close.to_numpy(float),
                      {n: arr(s) for n, s in smas.items()},
                      arr(adx[f"ADX_{adx_length}"] if adx is not None else None), arr(atr), f_ts, f_rate)


def return_correlation(a: PerpMarket, b: PerpMarket, window: int = 30) -> pd.Series:
    """Rolling correlation of daily close-to-close returns over `window` days, on common days."""
    ca = pd.Series(a.close, index=a.days)
    cb = pd.Series(b.close, index=b.days)
    both = pd.concat([ca, cb], axis=1, join="inner").pct_change()
    return both.iloc[:, 0].rolling(window).corr(both.iloc[:, 1])
