"""What the driver reads of the market: every series an engine needs, computed once and read by day.

Built from a `DataSet` (CSV files in a backfill, the stored candles in a flow), so the replay and
the live flows see the same numbers: indicators are causal (the value on day D depends only on
candles up to D), so computing them over a longer history changes nothing on the days both cover.
Engines declare what they need in `SPOT_NEEDS` / `PERP_NEEDS` (series), `perp_markets` (indicators
and their warm-up) and the all-time high, which always comes from the whole stored history.
"""
from __future__ import annotations

import functools

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from eternal.config import Settings
from eternal.data.csv_files import DataSet
from eternal.data.quality import FEAR_GREED, HistoryNeed, history_problems, validate_market_data
from eternal.errors import DataError, DataQualityError
from eternal.indicators import FundingHistory, PerpMarket, perp_market, realised_volatility, return_correlation
from eternal.models import PERP_SYMBOLS, SPOT_SYMBOLS, Quote, Sleeve, Snapshot

SPOT_NEEDS = {Sleeve.CORE: ("BTC", "ETH"), Sleeve.FUNDING: ("BTC", "ETH", "SOL"),
              Sleeve.TACTICAL: ("BTC", "ETH")}                                      # spot an engine trades
PERP_NEEDS = {Sleeve.TREND_1: ("BTC", "ETH"), Sleeve.TREND_2: ("BTC", "ETH"),
              Sleeve.FUNDING: ("BTC", "ETH", "SOL")}                                 # perps it trades
Bar = tuple[float, float, float]

# All-time highs come from the whole history (spec 2.4 CORE's ATH pause, 5.1 TACTICAL's drawdown
# levels): the daily series must start on the first day of the asset's USDT spot market (Binance,
# where ../shared/data starts: BTC and ETH 2017-08-17), never a later look-back.
ATH_NEEDS = {Sleeve.CORE: ("BTC", "ETH"), Sleeve.TACTICAL: ("BTC",)}
FULL_HISTORY_FROM = {"BTC": datetime(2017, 8, 17, tzinfo=UTC), "ETH": datetime(2017, 8, 17, tzinfo=UTC)}
REGIME_SMA = 200     # the orchestration layer's BTC SMA 200 (spec 6.1)


def needed_assets(sleeves) -> tuple[list[str], list[str]]:
    """(spot assets, perp assets) the given sleeves trade, sorted."""
    spot = sorted({a for sl in sleeves for a in SPOT_NEEDS.get(sl, ())})
    perp = sorted({a for sl in sleeves for a in PERP_NEEDS.get(sl, ())})
    return spot, perp


def history_needs(settings: Settings, sleeves, first_day: datetime | None = None) -> list[HistoryNeed]:
    """What history the sleeves' engines need (validated at every door, see eternal.data.quality).

    Always: the all-time-high series from `FULL_HISTORY_FROM`. With `first_day` (the first day
    decided: a backfill's start, a live run's day): the SMA warm-up before it, `slow_sma` perp
    candles for TREND, `REGIME_SMA` BTC spot candles for the orchestration layer.
    """
    ath: dict[str, list[str]] = {}
    warm: dict[str, tuple[int, list[str]]] = {}
    for sleeve in sleeves:
        for asset in ATH_NEEDS.get(sleeve, ()):
            ath.setdefault(SPOT_SYMBOLS[asset], []).append(sleeve.name.replace("_", "-"))
        params = {Sleeve.TREND_1: settings.trend_1, Sleeve.TREND_2: settings.trend_2}.get(sleeve)
        if params is not None and first_day is not None:
            for asset in PERP_NEEDS[sleeve]:
                n, who = warm.get(PERP_SYMBOLS[asset], (0, []))
                warm[PERP_SYMBOLS[asset]] = (max(n, params.slow_sma),
                                             [*who, f"SMA {params.slow_sma} of {sleeve.name.replace('_', '-')}"])
    if first_day is not None and set(sleeves) == set(Sleeve):
        n, who = warm.get(SPOT_SYMBOLS["BTC"], (0, []))
        warm[SPOT_SYMBOLS["BTC"]] = (max(n, REGIME_SMA), [*who, f"SMA {REGIME_SMA} of the regime"])
    needs = [HistoryNeed(sym, f"all-time high of {', '.join(who)}", starts_by=FULL_HISTORY_FROM[sym.split('/')[0]])
             for sym, who in ath.items()]
    needs += [HistoryNeed(sym, ", ".join(who) + " warm-up", rows_before=(first_day, n)) for sym, (n, who) in warm.items()]
    return needs


def earliest_start(data: DataSet, needs: list[HistoryNeed], first: datetime) -> datetime:
    """The first day from `first` on at which every warm-up need holds (a backfill's default start)."""
    start = pd.Timestamp(first)
    for need in needs:
        if need.rows_before is not None and (need.series, "1d") in data.candles:
            index = data.candles[(need.series, "1d")].index
            n = need.rows_before[1]
            if len(index) > n:
                start = max(start, index[n])
    return start.to_pydatetime()


def check_dataset(data: DataSet, settings: Settings, sleeves, *, asof: datetime | None = None,
                  first_day: datetime | None = None, end: datetime | None = None,
                  always_ge: bool = False) -> None:
    """The one validation of market data, whichever door it came through (CSV import, download,
    backfill, a flow's gather): every daily candle series, every funding series and the Fear & Greed
    index of `data` (rows before `end` when given) against the Great Expectations suite, plus the
    history the `sleeves` need (`history_needs`). Raises DataQualityError, one line naming the file
    (when read from one) or the series, the timestamps and the rule."""
    def cut(f):
        return f[f.index < end] if end is not None and isinstance(f.index, pd.DatetimeIndex) else f

    candles = {sym: cut(f) for (sym, tf), f in data.candles.items() if tf == "1d"}
    funding = {sym: cut(f) for sym, f in data.funding.items()}
    names = {sym: f"{sym} ({data.files[sym]})" for sym in candles if sym in data.files}
    names |= {sym: f"{sym} funding ({data.files[sym + ' funding']})" for sym in funding
              if sym + " funding" in data.files}
    if "fear_greed" in data.files:
        names[FEAR_GREED] = f"{FEAR_GREED} ({data.files['fear_greed']})"
    validate_market_data(candles, funding, asof, max_daily_move=settings.data.max_daily_move,
                         max_funding_rate=settings.data.max_funding_rate_8h,
                         fear_greed=cut(data.fear_greed) if data.fear_greed is not None else None,
                         needs=history_needs(settings, sleeves, first_day), names=names, always_ge=always_ge)


def check_history(data: DataSet, settings: Settings, sleeves, first_day: datetime) -> None:
    """The warm-up the sleeves need before `first_day` (DataQualityError, the suite's one line)."""
    needs = [n for n in history_needs(settings, sleeves, first_day) if n.rows_before is not None]
    failures = history_problems({sym: f for (sym, tf), f in data.candles.items() if tf == "1d"}, needs)
    if failures:
        raise DataQualityError("data quality failed: " + "; ".join(f.describe() for f in failures),
                               [f.to_dict() for f in failures])


def perp_markets(data: DataSet, assets, settings: Settings) -> dict[str, PerpMarket]:
    """Indicators for every perp the sleeves trade, computed once per series."""
    lengths = {settings.trend_1.fast_sma, settings.trend_1.slow_sma,
               settings.trend_2.fast_sma, settings.trend_2.slow_sma}
    return {a: perp_market(a, PERP_SYMBOLS[a], data.daily(PERP_SYMBOLS[a]), data.funding.get(PERP_SYMBOLS[a]),
                           lengths, settings.trend_1.adx_length, settings.trend_1.atr_length)
            for a in assets}


@dataclass
class MarketView:
    """Daily series aligned on `days` (UTC midnights every series covers) and funding settlements.

    Spot arrays by asset: open, high, low, close and the all-time-high close; perps as
    `PerpMarket`s (indicators) with `perp_pos[asset][i]` their row for `days[i]`.
    """

    days: pd.DatetimeIndex
    spot_assets: list[str]
    perp_assets: list[str]
    spot: dict[str, dict[str, np.ndarray]]
    markets: dict[str, PerpMarket]
    perp_pos: dict[str, np.ndarray]
    correlation: np.ndarray | None
    volatility: np.ndarray | None
    fear_greed: np.ndarray | None
    btc_funding: FundingHistory
    regime: PerpMarket | None
    regime_pos: np.ndarray | None
    settlement_ts: list[datetime]                          # every settlement time of any traded perp
    settlement_rates: dict[datetime, dict[str, float]]      # time -> perp symbol -> rate
    settings: Settings

    @classmethod
    def build(cls, data: DataSet, settings: Settings, sleeves, *, with_regime: bool = True,
              without: set[str] = frozenset()) -> MarketView:
        """`without`: assets left out (no stored series yet): the engines skip them."""
        spot_assets, perp_assets = needed_assets(sleeves)
        spot_assets = [a for a in spot_assets if a not in without]
        perp_assets = [a for a in perp_assets if a not in without]
        frames = {SPOT_SYMBOLS[a]: data.daily(SPOT_SYMBOLS[a]) for a in spot_assets}
        frames |= {PERP_SYMBOLS[a]: data.daily(PERP_SYMBOLS[a]) for a in perp_assets}
        if not frames:
            raise DataError("no sleeve selected: nothing to read")
        first = max(f.index[0] for f in frames.values())
        last = min(f.index[-1] for f in frames.values())
        days = pd.date_range(first, last, freq="D", tz="UTC") if first <= last else pd.DatetimeIndex([], tz="UTC")
        spot = {}
        for a in spot_assets:
            f = frames[SPOT_SYMBOLS[a]]
            aligned = f.reindex(days)
            if aligned["close"].isna().any():
                missing = aligned.index[aligned["close"].isna()][:5]
                raise DataError(f"{SPOT_SYMBOLS[a]} misses days: {[f'{d:%Y-%m-%d}' for d in missing]}")
            spot[a] = {c: aligned[c].to_numpy(float) for c in ("open", "high", "low", "close")}
            spot[a]["ath"] = f["close"].cummax().reindex(days).to_numpy(float)
        markets = perp_markets(data, perp_assets, settings)
        perp_pos = {a: markets[a].days.get_indexer(days) for a in perp_assets}
        for a, pos in perp_pos.items():
            if (pos < 0).any():
                raise DataError(f"{PERP_SYMBOLS[a]} misses days: "
                                f"{[f'{d:%Y-%m-%d}' for d in days[pos < 0][:5]]}")
        correlation = (return_correlation(markets["BTC"], markets["ETH"], settings.trend_1.correlation_window_days)
                       .reindex(days).to_numpy(float) if {"BTC", "ETH"} <= set(perp_assets) else None)
        btc = data.daily(SPOT_SYMBOLS["BTC"]) if (SPOT_SYMBOLS["BTC"], "1d") in data.candles else None
        vol = (realised_volatility(btc["close"], settings.tactical.volatility_window_days).reindex(days).to_numpy(float)
               if btc is not None else None)
        fear_greed = (data.fear_greed["value"].reindex(days).to_numpy(float)
                      if data.fear_greed is not None and len(data.fear_greed) else None)
        regime = (perp_market("BTC", SPOT_SYMBOLS["BTC"], btc, None, (50, 200))
                  if with_regime and btc is not None else None)
        rates: dict[datetime, dict[str, float]] = {}
        for a in perp_assets:
            m = markets[a]
            times, values = m.settlement_lists()
            for t, r in zip(times, values):
                rates.setdefault(t, {})[m.symbol] = r
        return cls(days, spot_assets, perp_assets, spot, markets, perp_pos, correlation, vol, fear_greed,
                   FundingHistory.of(data.funding.get(PERP_SYMBOLS["BTC"])), regime,
                   regime.days.get_indexer(days) if regime is not None else None,
                   sorted(rates), rates, settings)

    # by day ------------------------------------------------------------------------------------
    def index(self, day: datetime) -> int | None:
        """Position of `day` (a UTC midnight) in `days`, or None when not every series has it."""
        if self._day0 is None:
            return None
        i = (day - self._day0).days
        return i if 0 <= i < len(self.days) else None

    def day(self, i: int) -> datetime:
        """`days[i]` as an aware datetime (UTC midnight)."""
        return self._day0 + timedelta(days=i)

    @functools.cached_property
    def _day0(self) -> datetime | None:        # index() runs for every event: no Timestamp per call
        return self.days[0].to_pydatetime() if len(self.days) else None

    @property
    def first_day(self) -> datetime | None:
        return self._day0

    @property
    def last_day(self) -> datetime | None:
        return self._last_day

    @functools.cached_property
    def _last_day(self) -> datetime | None:      # read for every day of a run's schedule
        return self.days[-1].to_pydatetime() if len(self.days) else None

    def opens(self, i: int) -> dict[str, float]:
        """Symbol -> open of day i, spot and perp: the first price after the previous close (a new
        dict per call, built once per day: an event reads it several times)."""
        return dict(self._by_day(self._opens_of, i, self._build_opens))

    @functools.cached_property
    def _opens_of(self) -> dict[int, dict[str, float]]:
        return {}

    def _build_opens(self, i: int) -> dict[str, float]:
        out = {SPOT_SYMBOLS[a]: float(self.spot[a]["open"][i]) for a in self.spot_assets}
        return out | {PERP_SYMBOLS[a]: float(self.markets[a].open[self.perp_pos[a][i]]) for a in self.perp_assets}

    def perp_bars(self, i: int) -> dict[str, Bar]:
        """Perp symbol -> (open, high, low) of day i: the range its stops and liquidations see."""
        out = {}
        for a in self.perp_assets:
            m, j = self.markets[a], self.perp_pos[a][i]
            out[m.symbol] = (float(m.open[j]), float(m.high[j]), float(m.low[j]))
        return out

    def closes(self, i: int) -> dict[str, float]:
        """Asset -> spot close of day i (a new dict per call, built once per day, as `opens`)."""
        return dict(self._by_day(self._closes_of, i, self._build_closes))

    def marks(self, i: int) -> dict[str, float]:
        """Perp symbol -> close of day i (the mark price the daily data gives)."""
        return dict(self._by_day(self._marks_of, i, self._build_marks))

    @staticmethod
    def _by_day(cache: dict[int, dict[str, float]], i: int, build) -> dict[str, float]:
        cached = cache.get(i)
        if cached is None:
            if len(cache) > 8:
                cache.clear()
            cached = cache[i] = build(i)
        return cached

    @functools.cached_property
    def _closes_of(self) -> dict[int, dict[str, float]]:
        return {}

    @functools.cached_property
    def _marks_of(self) -> dict[int, dict[str, float]]:
        return {}

    def _build_closes(self, i: int) -> dict[str, float]:
        return {a: float(self.spot[a]["close"][i]) for a in self.spot_assets}

    def _build_marks(self, i: int) -> dict[str, float]:
        return {self.markets[a].symbol: float(self.markets[a].close[self.perp_pos[a][i]]) for a in self.perp_assets}

    def regime_inputs(self, i: int):
        from eternal.allocation import MarketRegimeInputs

        if self.regime is None or self.volatility is None:
            return None
        k = int(self.regime_pos[i])
        if k < 0:
            return None
        return MarketRegimeInputs(self.day(i), float(self.spot["BTC"]["close"][i]),
                                  float(self.regime.sma[50][k]), float(self.regime.sma[200][k]),
                                  float(self.regime.adx[k]), float(self.volatility[i]))

    def snapshot(self, i: int, books, states, inflows, cash_requests=None,
                 entries_refused: frozenset = frozenset()) -> Snapshot:
        """What every daily engine may read at the close of day i (decisions at days[i] + 1 day)."""
        day = self.day(i)
        asof = day + timedelta(days=1)
        closes = self.closes(i)
        fg = self.fear_greed[i] if self.fear_greed is not None else np.nan
        vol = self.volatility[i] if self.volatility is not None else np.nan
        return Snapshot(
            asof, day, closes, {a: float(self.spot[a]["ath"][i]) for a in self.spot_assets},
            {a: Quote(c, c, c) for a, c in closes.items()}, books, states, dict(inflows),
            self.markets, {a: int(self.perp_pos[a][i]) for a in self.perp_assets}, self.marks(i),
            float(self.correlation[i]) if self.correlation is not None else None,
            fear_greed=None if np.isnan(fg) else int(fg),
            volatility={} if np.isnan(vol) else {"BTC": float(vol)},
            recent_funding={"BTC": self.btc_funding.window(asof, self.settings.tactical.negative_funding_days)},
            regime_inputs=self.regime_inputs(i), cash_requests=dict(cash_requests or {}),
            entries_refused=entries_refused)

    # funding -------------------------------------------------------------------------------------
    def settlements_in(self, start: datetime, end: datetime) -> list[datetime]:
        """Settlement times with start <= ts < end, in order (irregular ones too)."""
        import bisect

        lo = bisect.bisect_left(self.settlement_ts, start)
        hi = bisect.bisect_left(self.settlement_ts, end)
        return self.settlement_ts[lo:hi]

    def latest_rate(self, asset: str, at: datetime) -> float | None:
        return self.markets[asset].latest_funding(at)

    def recent_rates(self, asset: str, at: datetime, n: int = 3) -> tuple[float, ...]:
        return self.markets[asset].recent_rates(at, n)
