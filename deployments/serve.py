"""Serve every schedule in one process, no worker: `python -m deployments.serve`.

The schedules match prefect.yaml (checked by tests/test_deployments.py). Each scheduled run passes
no `asof`: the flow reads its scheduled start time, so a retried or re-triggered run of the same
slot decides on the same closed day with the same client order ids.
"""
from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from prefect import serve  # noqa: E402
from prefect.schedules import Cron  # noqa: E402

from flows.backfill import backfill  # noqa: E402
from flows.daily_cycle import daily_cycle  # noqa: E402
from flows.deposit_intake import deposit_intake  # noqa: E402
from flows.funding_collection import funding_collection  # noqa: E402
from flows.override import halt, resume  # noqa: E402
from flows.quarterly_rebalance import quarterly_rebalance  # noqa: E402
from flows.sweep import sweep  # noqa: E402

SCHEDULES = {   # name -> (flow, cron or None for manual runs only, whether it places orders)
    "daily-cycle": (daily_cycle, "5 0 * * *", True),   # 00:05 UTC, after the daily candle has closed
    "funding-collection": (funding_collection, "5 0,8,16 * * *", True),   # 5 min after each settlement
    "quarterly-rebalance": (quarterly_rebalance, "15 0 1 1,4,7,10 *", True),   # after the daily cycle
    "deposit-intake": (deposit_intake, None, True),
    "halt": (halt, None, True),          # the kill switch: acts on the ledger and the venue's orders
    "resume": (resume, None, True),      # pauses for the operator's form in the UI
    "backfill": (backfill, None, False),
    "sweep": (sweep, None, False),       # many backfills in parallel on Dask
}


def deployments() -> list:
    return [fn.to_deployment(name=name, schedule=Cron(cron, timezone="UTC") if cron else None,
                             concurrency_limit=1 if trades else None,
                             description=(fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else None)
            for name, (fn, cron, trades) in SCHEDULES.items()]


def main() -> None:
    serve(*deployments())


if __name__ == "__main__":
    main()
