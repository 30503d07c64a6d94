"""Record: engine states, the audit trail, equity snapshots and the run's artifacts."""
from __future__ import annotations

from datetime import datetime

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from eternal.config import Settings
from eternal.execution import ExecutionResult
from eternal.models import Plan, Snapshot
from eternal.reporting import cycle_markdown, order_rows
from tasks.context import stores


@task(name="record-cycle")
def record_cycle(snap: Snapshot, plan: Plan, result: ExecutionResult, s: Settings, run_key: str,
                 now: datetime, allocation_state: dict | None = None) -> dict:
    _, ledger = stores(s)
    books = ledger.load_books()
    with ledger.engine.begin() as conn:
        ledger.save_states(plan.states, now, conn)
        if allocation_state is not None:
            ledger.save_allocation_state(allocation_state, now, conn)
        ledger.append_events(plan.events, run_key, conn)
        ledger.save_equity([{"day": snap.day, "sleeve": sl.value, "equity": b.equity(snap.closes),
                             "cash": b.cash} for sl, b in books.items()], conn)
    key = f"daily-cycle-{snap.day:%Y-%m-%d}"
    create_markdown_artifact(cycle_markdown(snap.day, books, snap.closes, plan.events + result.events),
                             key=key, description="portfolio by sleeve and asset, decisions with reasons")
    create_table_artifact(order_rows(result.orders) or [{"client_order_id": "none", "status": "no orders"}],
                          key=f"{key}-orders", description="orders of this cycle")
    equity = {sl.value: b.equity(snap.closes) for sl, b in books.items()}
    return {"day": f"{snap.day:%Y-%m-%d}", "orders": len(result.orders), "sent": result.sent,
            "fills": len(result.fills), "decisions": [e.message for e in plan.events],
            "equity": equity, "total_equity": sum(equity.values())}
