"""Funding collection (00:05, 08:05, 16:05 UTC): the driver over everything due, settlements above all."""
from __future__ import annotations

from prefect import flow

from eternal.config import load_settings
from flows.daily_cycle import run_time
from flows.params import OptionalUtcTime
from tasks.drive import drive_flow

FLOW = "funding-collection"


@flow(name=FLOW, log_prints=True)
def funding_collection(asof: OptionalUtcTime = None) -> dict:
    """Every event due up to the run's slot: each settlement is booked as the exchange paid it and
    FUNDING decides after it; a daily close that fell due is processed too, in its place in time.

    Args:
        asof: The run's time, UTC (a plain date is 00:00 UTC; a time without an offset is UTC).
            Empty: the scheduled time of the run. A time before the ledger's clock does nothing.
    """
    s = load_settings()
    return drive_flow(FLOW, run_time(asof), s)
