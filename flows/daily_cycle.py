"""The daily cycle (00:05 UTC): the driver over everything due, the day's close above all."""
from __future__ import annotations

from datetime import datetime, timedelta

from prefect import flow, runtime

from eternal.config import load_settings
from eternal.models import UTC, last_closed_day, utc
from flows.params import OptionalUtcTime
from tasks.drive import drive_flow

FLOW = "daily-cycle"


def cycle_key(asof: datetime) -> datetime:
    """The close a run at `asof` decides on, as the time it happens (D+1 00:00 for day D)."""
    return last_closed_day(asof) + timedelta(days=1)


def run_time(asof: datetime | None) -> datetime:
    """The run's slot: `asof` when given, else its scheduled time (a late run keeps its slot)."""
    return utc(asof) if asof else utc(runtime.flow_run.scheduled_start_time or datetime.now(UTC))


@flow(name=FLOW, log_prints=True)
def daily_cycle(asof: OptionalUtcTime = None) -> dict:
    """Every event due up to the run's slot, in time order (missed settlements, opens and closes
    included): at each close the day's stops, then allocation and the engines decide; each
    decision is stored before it is sent. A slot the ledger has passed does nothing.

    Args:
        asof: The run's time, UTC (a plain date is 00:00 UTC; a time without an offset is UTC).
            Empty: the scheduled time of the run. A time before the ledger's clock does nothing.
    """
    s = load_settings()
    return drive_flow(FLOW, run_time(asof), s)
