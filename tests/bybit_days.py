"""Days at the Bybit emulator as the schedule lives them (test support, not a test module).

`Days` walks the flows' real slots (daily cycle 00:05, funding collection 00:05, 08:05, 16:05, the
quarterly rebalance 00:15 on a quarter's first day) over consecutive real days. Before each slot
the emulator's prices become the stored closes of the day before (spot candles for spot, perp
candles for linear: what the day's decisions were made at), and every funding settlement of the
stored history up to the slot is paid on the positions held then, at its stored rate. A run is
either the flow in this process or, to kill it, the flow in a subprocess that SIGKILLs itself at a
driver boundary (`ETERNAL_TEST_KILL_AT`, eternal.driver._crash_point); either may fail, and the
next slot simply runs, as the schedule would.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd

from eternal.models import utc
from tests.flow_support import daily, funding, quarterly

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOWS = {"daily": daily, "funding": funding, "quarterly": quarterly}
MODULES = {"daily": "flows.daily_cycle import daily_cycle as f",
           "funding": "flows.funding_collection import funding_collection as f",
           "quarterly": "flows.quarterly_rebalance import quarterly_rebalance as f"}


@dataclass(frozen=True)
class Slot:
    flow: str
    asof: datetime

    def __str__(self) -> str:
        return f"{self.flow} {self.asof:%Y-%m-%dT%H:%MZ}"


def slots(first_day: str, days: int) -> Iterator[Slot]:
    """The schedule's runs from `first_day` 00:05 on, `days` days of them, in the order they run."""
    day = utc(first_day)
    for _ in range(days):
        yield Slot("daily", day + timedelta(minutes=5))
        yield Slot("funding", day + timedelta(minutes=5))
        if day.day == 1 and day.month in (1, 4, 7, 10):
            yield Slot("quarterly", day + timedelta(minutes=15))
        yield Slot("funding", day + timedelta(hours=8, minutes=5))
        yield Slot("funding", day + timedelta(hours=16, minutes=5))
        day += timedelta(days=1)


class Days:
    """The emulator's market (prices, funding settlements) from the stored real data."""

    def __init__(self, emu, dataset):
        self.emu = emu
        self.bars = {}          # (category, venue symbol) -> daily open, low, high, close
        for (sym, tf), df in dataset.candles.items():
            if tf == "1d":
                self.bars[("linear" if ":" in sym else "spot", sym.split(":")[0].replace("/", ""))] = \
                    df[["open", "low", "high", "close"]]
        self.rates = {sym.split(":")[0].replace("/", ""): df["funding_rate"] for sym, df in dataset.funding.items()}
        self.settled_to: datetime | None = None
        self.lived: pd.Timestamp | None = None       # the last day whose close the venue lived
        self.opened: pd.Timestamp | None = None      # the last day whose open it lived
        self.settlements = 0

    def market_at(self, ts: datetime) -> None:
        """The venue up to `ts`, its clock moving with it (fills, settlements and transfers are
        stamped in history, as a real venue stamps them when they happen):

        * each day closed since the last call lives the rest of its range (its low, high, then
          close, at its last minutes: resting limits and stops see the day's range, as on the
          paper exchange);
        * a day's open is its price after its 00:05 runs (they decide and trade at the close
          before, as the backfill decides at it; the open follows within minutes on a real
          venue): the price its later settlements are paid at and its later runs trade at, as
          on the paper exchange, which pays and fills a settlement's orders at the day's open;
        * every settlement in (the last one, ts] is paid at its time on the positions held then.
        """
        ts = utc(ts)
        today = pd.Timestamp(ts.date(), tz="UTC")
        if self.lived is None:                   # the first slot: nothing rests yet, the close only
            self._at(today - pd.Timedelta(seconds=1))
            self._live(today - pd.Timedelta(days=1), ("close",))
            self.lived = today - pd.Timedelta(days=1)
        for d in pd.date_range(self.lived + pd.Timedelta(days=1), today - pd.Timedelta(days=1), freq="D"):
            if self.opened is None or self.opened < d:      # a day without a later slot of its own
                self._at(d)
                self._live(d, ("open",))
            for n, column in enumerate(("low", "high", "close")):
                self._at(d + pd.Timedelta(days=1) - pd.Timedelta(minutes=3 - n))
                self._live(d, (column,))
        self.lived = today - pd.Timedelta(days=1)
        start = self.settled_to or (ts - timedelta(hours=8))
        due = sorted((t, symbol, float(rates[t])) for symbol, rates in self.rates.items()
                     if ("linear", symbol) in self.emu.prices
                     for t in rates.index[(rates.index > start) & (rates.index <= ts)])
        opens_at = today + pd.Timedelta(hours=1)            # after the day's 00:05 runs
        if ts >= opens_at and (self.opened is None or self.opened < today):
            self._at(min([t for t, _, _ in due if t >= opens_at] + [ts - timedelta(minutes=5)]))
            self._live(today, ("open",))
            self.opened = today
        for t, symbol, rate in due:
            self._at(t)
            self.settlements += len(self.emu.settle_funding(symbol, rate))
        self.settled_to = ts
        self._at(ts)

    def _at(self, ts) -> None:
        self.emu.set_clock(pd.Timestamp(ts).to_pydatetime())

    def _live(self, day: pd.Timestamp, prices: tuple[str, ...]) -> None:
        for (category, symbol), bars in self.bars.items():
            if day in bars.index:
                for column in prices:
                    self.emu.set_price(symbol, float(bars.at[day, column]), category)

    @staticmethod
    def run(slot: Slot) -> str:
        """The flow in this process: 'ok' or 'failed'."""
        try:
            FLOWS[slot.flow](slot.asof.isoformat())
        except Exception:
            return "failed"
        return "ok"

    @staticmethod
    def run_killed(slot: Slot, boundary: str) -> str:
        """The flow in its own process, which SIGKILLs itself at `boundary`: 'killed', or 'ok' /
        'failed' when the run never reached it."""
        from prefect.settings import PREFECT_API_URL

        env = {**os.environ, "ETERNAL_TEST_KILL_AT": boundary, "PREFECT_API_URL": PREFECT_API_URL.value(),
               "PYTHONPATH": ROOT, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
        proc = subprocess.run([sys.executable, "-c", f"from {MODULES[slot.flow]}; f(asof='{slot.asof.isoformat()}')"],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        return "killed" if proc.returncode == -9 else "ok" if proc.returncode == 0 else "failed"
