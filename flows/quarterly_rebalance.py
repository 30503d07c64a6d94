"""Quarterly rebalance (00:15 UTC on quarter starts): the driver, then the weights it left.

The rebalance itself is decided at one defined point, the first close of the quarter (the close of
its last day, at 00:00 of the first), by the orchestration layer before the engines: whichever flow
runs first at or after it processes that close. This flow makes sure it happened and reports it.
"""
from __future__ import annotations

from datetime import datetime

from prefect import flow

from eternal.config import load_settings
from flows.daily_cycle import run_time
from tasks.drive import drive_flow

FLOW = "quarterly-rebalance"


@flow(name=FLOW, log_prints=True)
def quarterly_rebalance(asof: datetime | None = None) -> dict:
    """Every event due up to the run's slot (the quarter's first close among them), then a table
    of each sleeve's target and actual weight."""
    return drive_flow(FLOW, run_time(asof), load_settings())
