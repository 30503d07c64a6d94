"""The daily cycle: gather -> validate -> decide (pure) -> execute (retried, idempotent) -> record."""
from __future__ import annotations

from datetime import datetime, timedelta

from prefect import flow, runtime

from eternal import allocation, cycle
from eternal.config import load_settings
from eternal.models import SPOT_SYMBOLS, UTC, Quote, last_closed_day, utc
from tasks.allocation import allocate
from tasks.context import orders_slot, stores
from tasks.execution import execute_plan, sync_exchange
from tasks.market_data import active_sleeves, gather_snapshot
from tasks.record import record_cycle

FLOW = "daily-cycle"


def cycle_key(asof: datetime) -> datetime:
    """The scheduled time that names a cycle (and its order ids): the close it decides on.
    Every run for the same closed day, scheduled, retried or re-triggered, shares it."""
    return last_closed_day(asof) + timedelta(days=1)


@flow(name=FLOW, log_prints=True)
def daily_cycle(asof: datetime | None = None) -> dict:
    """Daily cycle: gather validated data and state, decide, execute idempotently, record."""
    s = load_settings()
    asof = utc(asof) if asof else utc(runtime.flow_run.scheduled_start_time or datetime.now(UTC))
    # the cycle's clock is its asof: fills and records of a back-dated run carry that time
    now = asof
    scheduled = cycle_key(asof)
    _, ledger = stores(s)
    run_id = ledger.start_run(FLOW, scheduled, s.mode.value, now)
    try:
        with orders_slot():                              # one order-placing flow at a time
            sync_exchange(last_closed_day(asof), s, now)     # stops that fired during the closed day
            snap, transfers_seen = gather_snapshot(asof, s)
            orch = allocate(snap, s)                         # regime, band, what earlier rebalances owe
            snap = allocation.with_transfers(snap, orch.transfers, orch.requests)
            plan = cycle.daily(snap, s, tuple(active_sleeves(s)))   # a sleeve weighted 0 is not decided for
            plan = allocation.merged(orch, plan)
            execute = execute_plan.with_options(retries=s.execution.retries,
                                                retry_delay_seconds=list(s.execution.retry_delays_s))
            quotes = {SPOT_SYMBOLS[a]: q for a, q in snap.quotes.items()}
            quotes |= {sym: Quote(m, m, m) for sym, m in snap.marks.items()}   # perps: the mark
            result = execute(plan, quotes, FLOW, scheduled, s, now)
            report = record_cycle(snap, plan, result, s, str(scheduled), now, orch.state)
            report["transfers_seen"] = transfers_seen      # the next cycle's inflows start after it
    except BaseException as exc:
        ledger.finish_run(run_id, "failed", {"error": str(exc)}, datetime.now(UTC))
        raise
    ledger.finish_run(run_id, "completed", report, datetime.now(UTC))
    return report
