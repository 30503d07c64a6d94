"""Replay cost, measured side by side in one run: `make bench` (or python benchmarks/replay.py).

CORE over all loaded history (2017-08-17 .. 2026-01-05, 3,064 days): in memory, with the ledger
persisted in bulk to SQLite, and to PostgreSQL when reachable; TREND-1 alone and CORE + both TREND
sleeves over 2020-01-01 .. 2026-01-01 (2,192 days); TACTICAL alone over 2018-01-01 .. 2026-01-01
(2,922 days); every sleeve with the orchestration layer over 2021-01-01 .. 2026-01-01 (1,826 days),
without and with a 1,000 USDT monthly deposit; plus the data-quality suite alone.
Prints median wall times of N runs, days per second, and the ratios between them.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from eternal.config import load_settings  # noqa: E402
from eternal.data.csv_files import read_dir  # noqa: E402
from eternal.data.quality import validate_market_data  # noqa: E402
from eternal.models import utc  # noqa: E402
from eternal.replay import parse_sleeves, run_backfill  # noqa: E402
from eternal.store.db import connect  # noqa: E402

DATA = Path(os.environ.get("ETERNAL_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
PG = os.environ.get("ETERNAL_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
RUNS = int(os.environ.get("BENCH_RUNS", "5"))


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    settings = load_settings()
    data = read_dir(DATA)
    days = len(data.daily("BTC/USDT"))
    frames = {s: data.daily(s) for s in ("BTC/USDT", "ETH/USDT")}
    cold = timed(lambda: validate_market_data(frames, {}, None))
    results: dict[str, list[float]] = {"quality suite (warm)": [], "replay, in memory": [],
                                       "replay + SQLite ledger": [], "TREND-1 2020-2025": [],
                                       "CORE + TREND 2020-2025": [], "TACTICAL 2018-2025": [],
                                       "all engines 2021-2025": [], "all + deposits 2021-2025": []}
    window = {"start": utc("2020-01-01"), "end": utc("2026-01-01"), "progress": False}
    pg_ok = True
    try:
        connect(PG).dispose()
        results["replay + PostgreSQL ledger"] = []
    except Exception as exc:
        pg_ok = False
        print(f"PostgreSQL not reachable ({exc.__class__.__name__}); skipping that row", file=sys.stderr)
    for _ in range(RUNS):
        results["quality suite (warm)"].append(timed(lambda: validate_market_data(frames, {}, None)))
        results["replay, in memory"].append(
            timed(lambda: run_backfill(data, settings, sleeves=parse_sleeves("core"), progress=False)))
        results["TREND-1 2020-2025"].append(
            timed(lambda: run_backfill(data, settings, sleeves=parse_sleeves("trend-1"), **window)))
        results["CORE + TREND 2020-2025"].append(
            timed(lambda: run_backfill(data, settings, sleeves=parse_sleeves("core,trend"), **window)))
        results["TACTICAL 2018-2025"].append(
            timed(lambda: run_backfill(data, settings, sleeves=parse_sleeves("tactical"), start=utc("2018-01-01"),
                                       end=utc("2026-01-01"), progress=False)))
        results["all engines 2021-2025"].append(
            timed(lambda: run_backfill(data, settings, start=utc("2021-01-01"), end=utc("2026-01-01"),
                                       progress=False)))
        results["all + deposits 2021-2025"].append(
            timed(lambda: run_backfill(data, settings, start=utc("2021-01-01"), end=utc("2026-01-01"),
                                       progress=False, monthly_deposit=1_000.0)))
        with tempfile.TemporaryDirectory() as tmp:
            engine = connect(f"sqlite:///{tmp}/bench.db")
            results["replay + SQLite ledger"].append(
                timed(lambda: run_backfill(data, settings, sleeves=parse_sleeves("core"), progress=False,
                                           engine=engine)))
        if pg_ok:
            from sqlalchemy import create_engine, text

            with create_engine(PG).begin() as conn:
                conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public"))
            engine = connect(PG)
            results["replay + PostgreSQL ledger"].append(
                timed(lambda: run_backfill(data, settings, sleeves=parse_sleeves("core"), progress=False,
                                           engine=engine)))
            engine.dispose()
    base = statistics.median(results["replay, in memory"])
    print(f"median of {RUNS} runs; CORE rows replay {days} days, TREND rows 2,192 "
          f"(first quality run, GE import: {cold:.2f} s)")
    print(f"{'case':30} {'median s':>9} {'days/s':>9} {'x in-memory':>12}")
    for name, xs in results.items():
        m = statistics.median(xs)
        n = (2192 if "2020-2025" in name else 1826 if "2021-2025" in name else 2922 if "2018-2025" in name
             else days)
        print(f"{name:30} {m:9.3f} {n / m:9.0f} {m / base:12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
