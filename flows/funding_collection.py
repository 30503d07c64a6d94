"""Funding collection, every 8 hours: settle -> book -> FUNDING decides (pure) -> execute -> record."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from prefect import flow, runtime

from eternal.config import load_settings
from eternal.models import UTC, utc
from tasks.context import orders_slot, stores
from tasks.execution import execute_plan
from tasks.funding import (
    FLOW,
    decide_funding,
    funding_market,
    record_funding,
    settle_funding,
)


@flow(name=FLOW, log_prints=True)
def funding_collection(asof: datetime | None = None) -> dict:
    """Funding collection: book the latest settlement for every perp position, let FUNDING decide."""
    s = load_settings()
    asof = utc(asof) if asof else utc(runtime.flow_run.scheduled_start_time or datetime.now(UTC))
    # the cycle's clock is its asof: fills and records of a back-dated run carry that time
    now = asof
    _, ledger = stores(s)
    run_id = None
    try:
        with orders_slot():                              # one order-placing flow at a time
            fm = funding_market(asof, s)                   # the latest settlement at or before asof
            run_id = ledger.start_run(FLOW, fm.ts, s.mode.value, now)
            payments = settle_funding(fm, s, now)          # exchange and ledger, each payment once
            decision = decide_funding(fm, payments, s, now)   # pure engine; transfers + state, once
            execute = execute_plan.with_options(retries=s.execution.retries,
                                                retry_delay_seconds=list(s.execution.retry_delays_s))
            orders = replace(decision.plan, transfers=[])  # its transfers were made with the decision
            result = execute(orders, fm.quotes(), FLOW, fm.ts, s, now, accrue_staking=False)
            report = record_funding(fm, payments, decision, result, s)
    except BaseException as exc:
        run_id = run_id if run_id is not None else ledger.start_run(FLOW, asof, s.mode.value, now)
        ledger.finish_run(run_id, "failed", {"error": str(exc)}, datetime.now(UTC))
        raise
    ledger.finish_run(run_id, "completed", report, datetime.now(UTC))
    return report
