"""Deposit intake: a deposit waits in the ledger for the next daily close, which splits it."""
from __future__ import annotations

import math
from datetime import datetime

from prefect import flow, runtime
from prefect.artifacts import create_markdown_artifact

from eternal.config import EXCHANGE_MODES, Settings, load_settings
from eternal.errors import ConfigError
from eternal.models import UTC
from eternal.store.driver_store import DRIVER_LOCK, SqlLedger
from eternal.store.locks import exclusive
from tasks.context import stores

FLOW = "deposit-intake"


def check_deposit(amount_usdt: float, s: Settings) -> None:
    """A finite amount above 0, on paper (ConfigError otherwise, nothing booked)."""
    if not (math.isfinite(amount_usdt) and amount_usdt > 0):
        raise ConfigError(f"amount_usdt must be a positive number of USDT, got {amount_usdt}")
    if s.mode in EXCHANGE_MODES:
        raise ConfigError(f"ETERNAL_MODE={s.mode.value}: deposits are read from Bybit's deposit history by "
                          "every run (each once, by its deposit id); booking one here too would count it twice")


@flow(name=FLOW, log_prints=True)
def deposit_intake(amount_usdt: float, reference: str | None = None) -> dict:
    """Take a deposit of `amount_usdt` USDT. At the next daily close the orchestration layer splits
    it (the most underweight sleeve first, up to its target, the rest by target weights) before the
    engines decide, the same point as in a backfill. `reference` names it (default: this flow run):
    a retried or re-triggered run never books it twice.

    Args:
        amount_usdt: The deposit in USDT, above 0.
        reference: What names this deposit (a bank transfer's id, say): a deposit is booked once
            per reference. Empty: this flow run's id.
    """
    s = load_settings()
    check_deposit(amount_usdt, s)
    now = datetime.now(UTC)
    ref = reference or f"run {runtime.flow_run.id or now.isoformat()}"
    _, store = stores(s)
    with exclusive(store.engine, DRIVER_LOCK):
        added = SqlLedger(store.engine).add_deposit(now, amount_usdt, ref)
    create_markdown_artifact(f"deposit {ref}: {amount_usdt:,.2f} USDT " +
                             ("waits for the next daily close" if added else "was taken before: nothing booked"),
                             key="deposit-intake", description="deposit intake")
    return {"reference": ref, "amount_usdt": amount_usdt, "duplicate": not added}
