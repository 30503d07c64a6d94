"""Quarterly rebalance (00:15 UTC on quarter starts): the driver, then the weights it left.

The rebalance itself is decided at one defined point, the first close of the quarter (the close of
its last day, at 00:00 of the first), by the orchestration layer before the engines: whichever flow
runs first at or after it processes that close. This flow makes sure it happened and reports it.
"""
from __future__ import annotations

from prefect import flow

from eternal.config import load_settings
from flows.daily_cycle import run_time
from flows.params import OptionalUtcTime
from tasks.drive import drive_flow

FLOW = "quarterly-rebalance"


@flow(name=FLOW, log_prints=True)
def quarterly_rebalance(asof: OptionalUtcTime = None) -> dict:
    """Every event due up to the run's slot (the quarter's first close among them), then a table
    of each sleeve's target and actual weight.

    Args:
        asof: The run's time, UTC (a plain date is 00:00 UTC; a time without an offset is UTC).
            Empty: the scheduled time of the run. A time before the ledger's clock does nothing.
    """
    return drive_flow(FLOW, run_time(asof), load_settings())
