"""What the driver reads of the market: every series an engine needs, computed once and read by day.

Built from a `DataSet` (CSV files in a backfill, the stored candles in a flow), so the replay and
the live flows see the same numbers: indicators are causal (the value on day D depends only on
candles up to D), so computing them over a longer history changes nothing on the days both cover.
Engines declare what they need in `SPOT_NEEDS` / `PERP_NEEDS` (series), `perp_markets` (indicators
and their warm-up) and the all-time high, which always comes from the whole stored history.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from eternal.config import Settings
from eternal.data.csv_files import DataSet
from eternal.errors import DataError
from eternal.indicators import FundingHistory, PerpMarket, perp_market, realised_volatility, return_correlation
from eternal.models import PERP_SYMBOLS, SPOT_SYMBOLS, Quote, Sleeve, Snapshot

SPOT_NEEDS = {Sleeve.CORE: ("BTC", "ETH"), Sleeve.FUNDING: ("BTC", "ETH", "SOL"),
              Sleeve.TACTICAL: ("BTC", "ETH")}                                      # spot an engine trades
PERP_NEEDS = {Sleeve.TREND_1: ("BTC", "ETH"), Sleeve.TREND_2: ("BTC", "ETH"),
              Sleeve.FUNDING: ("BTC", "ETH", "SOL")}                                 # perps it trades
Bar = tuple[float, float, float]


def needed_assets(sleeves) -> tuple[list[str], list[str]]:
    """(spot assets, perp assets) the given sleeves trade, sorted."""
    spot = sorted({a for sl in sleeves for a in SPOT_NEEDS.get(sl, ())})
    perp = sorted({a for sl in sleeves for a in PERP_NEEDS.get(sl, ())})
    return spot, perp


def perp_markets(data: DataSet, assets, settings: Settings) -> dict[str, PerpMarket]:
    """Indicators for every perp the sleeves trade, computed once per series."""
    lengths = {settings.trend_1.fast_sma, settings.trend_1.slow_sma,
               settings.trend_2.fast_sma, settings.trend_2.slow_sma}
    return {a: perp_market(a, PERP_SYMBOLS[a], data.daily(PERP_SYMBOLS[a]), data.funding.get(PERP_SYMBOLS[a]),
                           lengths, settings.trend_1.adx_length, settings.trend_1.atr_length)
            for a in assets}


def _ts(value) -> datetime:
    return pd.Timestamp(value, tz="UTC").to_pydatetime()


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
            for t, r in zip(m.funding_ts, m.funding_rate):
                rates.setdefault(_ts(t), {})[m.symbol] = float(r)
        return cls(days, spot_assets, perp_assets, spot, markets, perp_pos, correlation, vol, fear_greed,
                   FundingHistory.of(data.funding.get(PERP_SYMBOLS["BTC"])), regime,
                   regime.days.get_indexer(days) if regime is not None else None,
                   sorted(rates), rates, settings)

    # by day ------------------------------------------------------------------------------------
    def index(self, day: datetime) -> int | None:
        """Position of `day` (a UTC midnight) in `days`, or None when not every series has it."""
        if not len(self.days):
            return None
        i = (pd.Timestamp(day) - self.days[0]).days
        return i if 0 <= i < len(self.days) else None

    @property
    def first_day(self) -> datetime | None:
        return self.days[0].to_pydatetime() if len(self.days) else None

    @property
    def last_day(self) -> datetime | None:
        return self.days[-1].to_pydatetime() if len(self.days) else None

    def opens(self, i: int) -> dict[str, float]:
        """Symbol -> open of day i, spot and perp: the first price after the previous close."""
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
        return {a: float(self.spot[a]["close"][i]) for a in self.spot_assets}

    def marks(self, i: int) -> dict[str, float]:
        """Perp symbol -> close of day i (the mark price the daily data gives)."""
        return {self.markets[a].symbol: float(self.markets[a].close[self.perp_pos[a][i]]) for a in self.perp_assets}

    def regime_inputs(self, i: int):
        from eternal.allocation import MarketRegimeInputs

        if self.regime is None or self.volatility is None:
            return None
        k = int(self.regime_pos[i])
        if k < 0:
            return None
        return MarketRegimeInputs(self.days[i].to_pydatetime(), float(self.spot["BTC"]["close"][i]),
                                  float(self.regime.sma[50][k]), float(self.regime.sma[200][k]),
                                  float(self.regime.adx[k]), float(self.volatility[i]))

    def snapshot(self, i: int, books, states, inflows, cash_requests=None) -> Snapshot:
        """What every daily engine may read at the close of day i (decisions at days[i] + 1 day)."""
        day = self.days[i].to_pydatetime()
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
            regime_inputs=self.regime_inputs(i), cash_requests=dict(cash_requests or {}))

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
        return tuple(r for _, r in self.markets[asset].recent_settlements(at, n))
