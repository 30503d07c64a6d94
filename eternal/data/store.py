"""Market data in the database: candles, funding rates, fear & greed, as DataFrames.

DataFrame conventions (everywhere in eternal/): a tz-aware UTC DatetimeIndex named `timestamp`
(candle open time, funding settlement time, index date); candles have float columns
open, high, low, close, volume; funding has `funding_rate`; fear & greed `value`, `classification`.
"""
from __future__ import annotations

from datetime import datetime

import pandas as pd
from sqlalchemy import Engine, func, select

from eternal.store.models import CandleRow, FearGreedRow, FundingRateRow
from eternal.store.upsert import upsert

CANDLE_COLUMNS = ["open", "high", "low", "close", "volume"]


def _index_utc(values) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.to_datetime(list(values), utc=True), name="timestamp")


class MarketStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    # candles -------------------------------------------------------------------------------
    def upsert_candles(self, symbol: str, timeframe: str, df: pd.DataFrame, conn=None) -> int:
        rows = [
            {"symbol": symbol, "timeframe": timeframe, "ts": ts.to_pydatetime(),
             "open": float(o), "high": float(h), "low": float(lo), "close": float(c), "volume": float(v)}
            for ts, o, h, lo, c, v in zip(df.index, *(df[col].to_numpy() for col in CANDLE_COLUMNS))
        ]
        return self._upsert(conn, CandleRow.__table__, rows, ["symbol", "timeframe", "ts"])

    def _upsert(self, conn, table, rows, keys) -> int:
        if conn is not None:
            return upsert(conn, table, rows, keys)
        with self.engine.begin() as own:
            return upsert(own, table, rows, keys)

    def write(self, data) -> dict[str, int]:
        """Every series of a `DataSet` in one transaction (all or nothing); rows written per series."""
        written: dict[str, int] = {}
        with self.engine.begin() as conn:
            for (symbol, tf), df in data.candles.items():
                written[f"candles {symbol} {tf}"] = self.upsert_candles(symbol, tf, df, conn)
            for symbol, df in data.funding.items():
                written[f"funding {symbol}"] = self.upsert_funding(symbol, df, conn)
            if data.fear_greed is not None:
                written["fear_greed"] = self.upsert_fear_greed(data.fear_greed, conn)
        return written

    def load_candles(self, symbol: str, timeframe: str = "1d",
                     start: datetime | None = None, end: datetime | None = None) -> pd.DataFrame:
        """Candles with open time in [start, end)."""
        q = select(CandleRow.ts, *(getattr(CandleRow, c) for c in CANDLE_COLUMNS)).where(
            CandleRow.symbol == symbol, CandleRow.timeframe == timeframe)
        if start is not None:
            q = q.where(CandleRow.ts >= start)
        if end is not None:
            q = q.where(CandleRow.ts < end)
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(CandleRow.ts)).all()
        df = pd.DataFrame([r[1:] for r in rows], columns=CANDLE_COLUMNS, dtype="float64")
        df.index = _index_utc(r[0] for r in rows)
        return df

    def last_candle_ts(self, symbol: str, timeframe: str) -> datetime | None:
        with self.engine.connect() as conn:
            return conn.execute(select(func.max(CandleRow.ts)).where(
                CandleRow.symbol == symbol, CandleRow.timeframe == timeframe)).scalar()

    def candle_symbols(self, timeframe: str = "1d") -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(CandleRow.symbol).where(
                CandleRow.timeframe == timeframe).distinct().order_by(CandleRow.symbol)).scalars())

    # funding -------------------------------------------------------------------------------
    def upsert_funding(self, symbol: str, df: pd.DataFrame, conn=None) -> int:
        rows = [{"symbol": symbol, "ts": ts.to_pydatetime(), "funding_rate": float(r)}
                for ts, r in zip(df.index, df["funding_rate"].to_numpy())]
        return self._upsert(conn, FundingRateRow.__table__, rows, ["symbol", "ts"])

    def load_funding(self, symbol: str, start: datetime | None = None,
                     end: datetime | None = None) -> pd.DataFrame:
        q = select(FundingRateRow.ts, FundingRateRow.funding_rate).where(FundingRateRow.symbol == symbol)
        if start is not None:
            q = q.where(FundingRateRow.ts >= start)
        if end is not None:
            q = q.where(FundingRateRow.ts < end)
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(FundingRateRow.ts)).all()
        return pd.DataFrame({"funding_rate": [r[1] for r in rows]}, dtype="float64",
                            index=_index_utc(r[0] for r in rows))

    def last_funding_ts(self, symbol: str) -> datetime | None:
        with self.engine.connect() as conn:
            return conn.execute(select(func.max(FundingRateRow.ts)).where(
                FundingRateRow.symbol == symbol)).scalar()

    # fear & greed --------------------------------------------------------------------------
    def upsert_fear_greed(self, df: pd.DataFrame, conn=None) -> int:
        rows = [{"ts": ts.to_pydatetime(), "value": int(v), "classification": str(c)}
                for ts, v, c in zip(df.index, df["value"].to_numpy(), df["classification"].to_numpy())]
        return self._upsert(conn, FearGreedRow.__table__, rows, ["ts"])

    def load_fear_greed(self) -> pd.DataFrame:
        with self.engine.connect() as conn:
            rows = conn.execute(select(FearGreedRow.ts, FearGreedRow.value,
                                       FearGreedRow.classification).order_by(FearGreedRow.ts)).all()
        return pd.DataFrame({"value": [r[1] for r in rows], "classification": [r[2] for r in rows]},
                            index=_index_utc(r[0] for r in rows))
