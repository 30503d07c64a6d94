"""Ad-hoc backfill: the daily cycle replayed over history, visible as one run in the Prefect UI.
The work is `tasks.backfill.run_job`, which `eternal backfill` also calls directly when no Prefect
server is configured."""
from __future__ import annotations

from contextvars import ContextVar

from prefect import flow

from flows.params import OptionalUtcTime
from tasks.backfill import StartedJob, check_amounts, load_data, run_job, summary_markdown, write_report  # noqa: F401

PROGRESS_BAR: ContextVar[bool] = ContextVar("backfill_progress_bar", default=False)
"""A terminal progress bar (the CLI's, unless --no-progress); never a form field: a worker has no terminal."""
STARTED: ContextVar[StartedJob | None] = ContextVar("backfill_started", default=None)
"""`eternal backfill`'s job, started before Prefect was imported (`tasks.backfill.StartedJob`): the
run follows it when its parameters are this run's."""


@flow(name="backfill")
def backfill(start: OptionalUtcTime = None, end: OptionalUtcTime = None, engines: str | None = None,
             capital: float | None = None, data_dir: str | None = None, out: str = "out/backfill",
             monthly_deposit_usdt: float = 0.0) -> dict:
    """The replay as one Prefect run: parameters from the UI form, progress shown as an artifact.
    Its ledger goes to ETERNAL_BACKFILL_DATABASE_URL when set (a setting: a URL may hold a
    password, and Prefect stores parameters in the clear), else to OUT/backfill.db, started afresh.

    Args:
        start: The first day replayed, UTC (a plain date is 00:00 UTC). Empty: the first day the
            data holds the engines' warm-up.
        end: The day after the last one replayed (exclusive), UTC. Empty: after the data's last day.
        engines: Comma-separated sleeves: core, trend-1, trend-2, trend (both), funding, tactical.
            Empty: the whole portfolio; one sleeve alone receives the whole capital.
        capital: Starting capital in USDT, above 0. Empty: ETERNAL_INITIAL_CAPITAL.
        data_dir: A directory of CSV files on the machine that runs the flow. Empty:
            ETERNAL_DATA_DIR, else the market data stored in the database.
        out: The directory for trades.csv, equity.csv, summary.json, events.csv (on that machine).
        monthly_deposit_usdt: USDT deposited at each month's end through the deposit rules (0: none).
    """
    params = dict(start=start, end=end, engines=engines, capital=capital, data_dir=data_dir, out=out,
                  monthly_deposit_usdt=monthly_deposit_usdt)
    started = STARTED.get()
    if started is not None and started.params == params:
        STARTED.set(None)
        return started.follow()
    return run_job(**params, progress_bar=PROGRESS_BAR.get())
