"""Deposit intake: a deposit split between the sleeves by the allocation rules, booked once."""
from __future__ import annotations

from datetime import datetime

from prefect import flow, runtime
from prefect.artifacts import create_table_artifact

from eternal.config import load_settings
from eternal.models import UTC
from tasks.context import orders_slot
from tasks.deposits import take_deposit

FLOW = "deposit-intake"


@flow(name=FLOW, log_prints=True)
def deposit_intake(amount_usdt: float, reference: str | None = None) -> dict:
    """Take a deposit of `amount_usdt` USDT: the most underweight sleeve first, up to its target,
    the rest by target weights. `reference` names it (default: this flow run), so a retried or
    re-triggered run never books it twice; the next daily cycle deploys it."""
    s = load_settings()
    now = datetime.now(UTC)
    ref = reference or f"run {runtime.flow_run.id or now.isoformat()}"
    with orders_slot():
        report = take_deposit(amount_usdt, ref, s, now)
    rows = [{"sleeve": sl, "usdt": round(v, 8), "target": report["targets"].get(sl)}
            for sl, v in report["split"].items()] if not report["duplicate"] else [
        {"sleeve": "none", "usdt": 0.0, "target": None}]
    create_table_artifact(rows, key="deposit-intake", description=(
        f"deposit {ref}: {amount_usdt:,.2f} USDT" + (" (already taken: nothing booked)" if report["duplicate"] else "")))
    return report
