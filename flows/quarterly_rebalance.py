"""Quarterly rebalance: every sleeve back to its regime target, by transfers (00:15 UTC on the
first day of each quarter, after the daily cycle has run CORE's own calendar rebalance)."""
from __future__ import annotations

from datetime import datetime

from prefect import flow, runtime
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from eternal import allocation
from eternal.config import load_settings
from eternal.models import SPOT_SYMBOLS, UTC, Plan, Quote, utc
from eternal.reporting import order_rows
from tasks.allocation import allocate
from tasks.context import orders_slot, stores
from tasks.execution import execute_plan
from tasks.market_data import gather_snapshot

FLOW = "quarterly-rebalance"
PREFIX = "rebalance:"          # the next daily cycle counts these transfers as money in or out


@flow(name=FLOW, log_prints=True)
def quarterly_rebalance(asof: datetime | None = None) -> dict:
    """Bring every sleeve to the current regime's targets, once per quarter; orders and transfers
    are idempotent, so a retried or re-triggered run moves nothing twice."""
    s = load_settings()
    asof = utc(asof) if asof else utc(runtime.flow_run.scheduled_start_time or datetime.now(UTC))
    now = asof
    _, ledger = stores(s)
    run_id = ledger.start_run(FLOW, asof, s.mode.value, now)
    try:
        with orders_slot():                              # one order-placing flow at a time
            snap, _ = gather_snapshot(asof, s)
            before = allocation.weights_of({sl: b.equity(snap.closes, snap.marks) for sl, b in snap.books.items()})
            orch = allocate(snap, s, quarterly=True, prefix=PREFIX)
            plan = Plan(asof, snap.day, orch.intents, {}, orch.events, transfers=orch.transfers)
            quotes = {SPOT_SYMBOLS[a]: q for a, q in snap.quotes.items()} | {
                sym: Quote(m, m, m) for sym, m in snap.marks.items()}
            execute = execute_plan.with_options(retries=s.execution.retries,
                                                retry_delay_seconds=list(s.execution.retry_delays_s))
            result = execute(plan, quotes, FLOW, asof, s, now, accrue_staking=False)
            books = ledger.load_books()
            after = allocation.weights_of({sl: b.equity(snap.closes, snap.marks) for sl, b in books.items()})
            with ledger.engine.begin() as conn:
                ledger.save_allocation_state(orch.state, now, conn)
                ledger.append_events(orch.events, f"{FLOW} {asof:%Y-%m-%d}", conn)
            rows = [{"sleeve": sl.value, "target": round(orch.targets.get(sl, 0.0), 6),
                     "before": round(before.get(sl, 0.0), 6), "after": round(after.get(sl, 0.0), 6)}
                    for sl in books]
            create_table_artifact(rows, key="quarterly-rebalance-weights",
                                  description=f"{orch.regime} regime: target vs actual weights before and after")
            create_markdown_artifact("\n".join(f"- {e.message}" for e in orch.events) or "nothing to do",
                                     key="quarterly-rebalance-decisions", description="decisions with reasons")
            create_table_artifact(order_rows(result.orders) or [{"client_order_id": "none", "status": "no orders"}],
                                  key="quarterly-rebalance-orders", description="planned and executed orders")
            report = {"regime": orch.regime.value, "transfers": len(orch.transfers), "orders": len(result.orders),
                      "weights_before": {k.value: v for k, v in before.items()},
                      "weights_after": {k.value: v for k, v in after.items()}}
    except BaseException as exc:
        ledger.finish_run(run_id, "failed", {"error": str(exc)}, datetime.now(UTC))
        raise
    ledger.finish_run(run_id, "completed", report, datetime.now(UTC))
    return report
