"""Daily-cycle flow runs on a fresh paper ledger, our work timed apart from Prefect's (issue 15):
part 4 of `benchmarks/backfill.py`, which starts it in its own process with PREFECT_API_URL set.

The ledger is a SQLite file in --dir holding the real market data of 2023-01-01..2024-03-01
(`tests.flow_support.store_market`, as the flow tests store it). The first run (2024-01-02 00:05)
starts the portfolio and pays the imports and the client's first connection; then --runs runs, one
per following day, each `daily_cycle(asof=...)` called as a deployment would run it.

Per run, one JSON line: asof; wall (the flow call); task (the wall inside the `drive` task's
function: the driver, the ledger's SQL, the data checks, `tasks/record.py`'s report and alerts);
artifacts (the Prefect artifact calls made inside it); ours = task - artifacts; orders; and CPU
times, which a busy machine does not inflate as it does walls: cpu (this process, all its threads,
over the flow call; the server's is not in it) and ours_cpu (the CPU time of the thread that runs
the task's function, inside it, minus the artifact calls).

    PREFECT_API_URL=http://127.0.0.1:4200/api python benchmarks/daily_flow.py --runs 3 --dir /tmp/daily
"""
from __future__ import annotations

import argparse
import cProfile
import functools
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))                 # this checkout's eternal, tasks, flows, tests
DATA = Path(os.environ.get("ETERNAL_DATA_DIR") or ROOT.parent / "shared" / "data").resolve()
FIRST = "2024-01-02T00:05:00Z"                # the first run: decides on the close of 2024-01-01
STORED = ("2023-01-01", "2024-03-01")         # market data in the ledger's database (end exclusive)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="warm runs after the first (at most 55: the data stored)")
    ap.add_argument("--dir", type=Path, required=True, help="a directory for the ledger (created)")
    ap.add_argument("--profile", type=Path, help="write cProfile stats of the warm runs (CPU time) here")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    os.environ.update({"ETERNAL_DATABASE_URL": f"sqlite:///{args.dir.resolve() / 'ledger.db'}",
                       "ETERNAL_DATA__REFRESH_BEFORE_CYCLE": "false", "ETERNAL_MODE": "paper",
                       "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"})
    os.chdir(args.dir)

    import tasks.drive
    import tasks.record
    from eternal.data.csv_files import read_dir
    from eternal.models import utc
    from eternal.store.db import connect
    from flows.daily_cycle import daily_cycle
    from tests.flow_support import store_market

    store_market(connect(os.environ["ETERNAL_DATABASE_URL"]), read_dir(DATA), *STORED)
    spent = {"task": 0.0, "artifacts": 0.0, "task_cpu": 0.0, "artifacts_cpu": 0.0}

    def timed(name: str, fn):
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            t, c = time.perf_counter(), time.thread_time()
            try:
                return fn(*a, **kw)
            finally:
                spent[name] += time.perf_counter() - t
                spent[f"{name}_cpu"] += time.thread_time() - c
        return wrapper

    # drive_flow copies the task with its options (`with_options` keeps this fn)
    tasks.drive.drive.fn = timed("task", tasks.drive.drive.fn)
    for name in ("create_markdown_artifact", "create_table_artifact"):
        setattr(tasks.record, name, timed("artifacts", getattr(tasks.record, name)))
    profile = cProfile.Profile(time.process_time) if args.profile else None
    for n in range(args.runs + 1):
        asof = utc(FIRST) + timedelta(days=n)
        spent.update(task=0.0, artifacts=0.0, task_cpu=0.0, artifacts_cpu=0.0)
        if profile is not None and n > 0:
            profile.enable()
        t, c = time.perf_counter(), time.process_time()
        result = daily_cycle(asof=asof.isoformat())
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        if profile is not None:
            profile.disable()
        print(json.dumps({"asof": f"{asof:%Y-%m-%d %H:%M}", "wall": wall, "task": spent["task"],
                          "artifacts": spent["artifacts"], "ours": spent["task"] - spent["artifacts"],
                          "cpu": cpu, "ours_cpu": spent["task_cpu"] - spent["artifacts_cpu"],
                          "orders": result["orders"]}), flush=True)
    if profile is not None:
        profile.dump_stats(args.profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
