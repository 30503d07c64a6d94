"""Ours against the tool a user would pick instead: `make bench` (or python benchmarks/peers.py).

TREND-1 alone with 100,000 USDT over 2020-06-14 .. 2026-01-01 (the first day the data allows:
the ETH perp lists on 2019-11-27 and SMA 200 needs 200 candles; the backfill refuses an earlier
--start) on the same CSV files, each run a fresh process as a user waits for it (interpreter
start, imports, everything up to the exit):

* `eternal backfill --engines trend-1 ...` (python -m eternal.cli, this checkout's code);
* the same rules written for backtrader (`benchmarks/peers_backtrader.py`).

BENCH_PAIRS pairs (default 5), alternating which goes first. Prints the median and range of each
wall time, their ratio, backtrader's loop alone (cerebro.run) and, only when a Prefect server is
configured (without one the backfill runs without Prefect and logs no flow run), our flow's own span
(from "Beginning flow run" to "backfill done" in its log: data, checks, the replay, the ledger), then
whether the trade lists agree: round trips by asset, side, entry and exit day (quantity and exit
reason too), and the final equity within FINAL_EQUITY_TOLERANCE. Exits 1 when they disagree.
"""
from __future__ import annotations

import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ETERNAL_DATA_DIR") or ROOT.parent / "shared" / "data")
PAIRS = int(os.environ.get("BENCH_PAIRS", "5"))
START, END, CAPITAL = "2020-06-14", "2026-01-01", "100000"
FINAL_EQUITY_TOLERANCE = 0.01          # USDT: float noise of two summation orders is about 1e-6
ENV = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
       "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
       # a busy machine can take longer than Prefect's default to start the ephemeral server;
       # this only turns such a failure into a slower run, it speeds nothing up
       "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS":
           os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")}
LOG_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d\.\d+) \|", re.M)


@dataclass(frozen=True)
class RoundTrip:
    """One position from its entry fill to its exit fill (days as YYYY-MM-DD)."""

    asset: str
    side: str                  # "long" | "short"
    entry_day: str
    exit_day: str
    qty: float
    exit_reason: str
    entry_price: float
    exit_price: float

    def key(self) -> tuple[str, str, str, str]:
        return self.asset, self.side, self.entry_day, self.exit_day


def round_trips(fills: list[dict]) -> list[RoundTrip]:
    """Fills (timestamp, symbol, side, qty, price, reason; in time order per symbol) paired into
    round trips: each entry with the next fill of its symbol, which must close it whole."""
    open_: dict[str, dict] = {}
    out = []
    for f in fills:
        sym = f["symbol"]
        if f["reason"] == "entry":
            if sym in open_:
                raise ValueError(f"{sym}: entry on {f['timestamp'][:10]} while a position is open")
            open_[sym] = f
            continue
        entry = open_.pop(sym, None)
        if entry is None or float(entry["qty"]) != float(f["qty"]) or entry["side"] == f["side"]:
            raise ValueError(f"{sym}: {f['reason']} on {f['timestamp'][:10]} does not close an open entry whole")
        out.append(RoundTrip(sym.split("/")[0], "long" if entry["side"] == "buy" else "short",
                             entry["timestamp"][:10], f["timestamp"][:10], float(entry["qty"]), f["reason"],
                             float(entry["price"]), float(f["price"])))
    if open_:
        raise ValueError(f"positions never closed: {sorted(open_)}")
    return sorted(out, key=lambda t: (t.entry_day, t.asset))


def compare_round_trips(ours: list[RoundTrip], theirs: list[RoundTrip]) -> list[str]:
    """One line per difference (empty: the lists agree on asset, side, entry and exit day, qty
    and exit reason)."""
    lines = []
    a, b = {t.key(): t for t in ours}, {t.key(): t for t in theirs}
    for k in sorted(set(a) - set(b)):
        lines.append(f"only ours: {' '.join(k)} ({a[k].exit_reason})")
    for k in sorted(set(b) - set(a)):
        lines.append(f"only backtrader: {' '.join(k)} ({b[k].exit_reason})")
    for k in sorted(set(a) & set(b)):
        if a[k].qty != b[k].qty or a[k].exit_reason != b[k].exit_reason:
            lines.append(f"{' '.join(k)}: qty {a[k].qty:g} vs {b[k].qty:g}, exit {a[k].exit_reason} vs "
                         f"{b[k].exit_reason}")
    return lines


def read_fills(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_ours(out: Path) -> tuple[float, float | None]:
    """(wall s, flow span s or None) of one `eternal backfill` in a fresh process."""
    cmd = [sys.executable, "-m", "eternal.cli", "backfill", "--engines", "trend-1", "--start", START, "--end", END,
           "--capital", CAPITAL, "--data-dir", str(DATA), "--out", str(out), "--no-progress"]
    t = time.perf_counter()
    done = subprocess.run(cmd, env=ENV, cwd=out.parent, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"eternal backfill failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return wall, flow_span(done.stdout + "\n" + done.stderr)


def flow_span(log: str) -> float | None:
    """Seconds from the flow's "Beginning flow run" to its "backfill done" log line."""
    def at(marker: str) -> float | None:
        for line in log.splitlines():
            if marker in line and (m := LOG_TIME.match(line)):
                h, mi, s = m.groups()
                return int(h) * 3600 + int(mi) * 60 + float(s)
        return None

    begin, done = at("Beginning flow run"), at("backfill done")
    return None if begin is None or done is None else (done - begin) % 86400


def run_backtrader(out: Path) -> tuple[float, dict]:
    """(wall s, its JSON line: loop_s, final_equity) of the backtrader port in a fresh process."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "peers_backtrader.py"), "--data-dir", str(DATA),
           "--start", START, "--end", END, "--capital", CAPITAL, "--out", str(out)]
    t = time.perf_counter()
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"backtrader run failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return wall, json.loads(done.stdout.strip().splitlines()[-1])


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):6.2f} s  ({min(xs):.2f}-{max(xs):.2f})"


def main() -> int:
    walls: dict[str, list[float]] = {"ours": [], "bt": []}
    spans: list[float] = []
    loops: list[float] = []
    problems: list[str] = []
    summary = None
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        for n in range(PAIRS):
            ours_dir, bt_file = Path(tmp) / f"ours{n}", Path(tmp) / f"backtrader{n}.csv"
            for who in (("ours", "bt") if n % 2 == 0 else ("bt", "ours")):
                if who == "ours":
                    wall, span = run_ours(ours_dir)
                    walls["ours"].append(wall)
                    if span is not None:
                        spans.append(span)
                else:
                    wall, result = run_backtrader(bt_file)
                    walls["bt"].append(wall)
                    loops.append(result["loop_s"])
            ours_trips = round_trips(read_fills(ours_dir / "trades.csv"))
            bt_trips = round_trips(read_fills(bt_file))
            ours_equity = json.loads((ours_dir / "summary.json").read_text())["final_equity"]
            diff = compare_round_trips(ours_trips, bt_trips)
            if abs(ours_equity - result["final_equity"]) > FINAL_EQUITY_TOLERANCE:
                diff.append(f"final equity {ours_equity:,.6f} vs {result['final_equity']:,.6f} USDT")
            problems += [f"pair {n + 1}: {line}" for line in diff]
            price_gap = max((abs(a.entry_price - b.entry_price) / a.entry_price
                             + abs(a.exit_price - b.exit_price) / a.exit_price
                             for a, b in zip(ours_trips, bt_trips) if a.key() == b.key()), default=0.0)
            summary = (len(ours_trips), len(bt_trips), ours_equity, result["final_equity"], price_gap)

    ours, bt = statistics.median(walls["ours"]), statistics.median(walls["bt"])
    print(f"peers: TREND-1 {START}..{END} (end exclusive), {float(CAPITAL):,.0f} USDT, {PAIRS} alternating pairs, "
          f"each a fresh process, data {DATA}")
    print(f"  eternal backfill --engines trend-1   wall {spread(walls['ours'])}")
    if spans:
        print(f"    its flow, 'Beginning flow run' to 'backfill done'  {spread(spans)}")
    print(f"  backtrader {version('backtrader'):<24}  "
          f"wall {spread(walls['bt'])}")
    print(f"    its loop alone (cerebro.run)      {spread(loops)}")
    print(f"  ratio ours / backtrader (median walls): {ours / bt:.2f}x  (issue 15: at most 1x, on the way to 0.5x)")
    n_ours, n_bt, eq_ours, eq_bt, gap = summary
    verdict = "agree" if not problems else f"DIFFER ({len(problems)} differences)"
    print(f"  trade lists: {n_ours} round trips ours, {n_bt} backtrader: {verdict} (asset, side, entry and exit "
          f"day, qty, exit reason); prices within {gap:.1e} relative")
    print(f"  final equity: ours {eq_ours:,.6f} USDT, backtrader {eq_bt:,.6f} (difference {eq_ours - eq_bt:+.2e}, "
          f"tolerance {FINAL_EQUITY_TOLERANCE} USDT)")
    for line in problems[:20]:
        print("    " + line)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
