"""Deposit intake: a deposit waits in the ledger for the next daily close, which splits it."""
from __future__ import annotations

import math
from datetime import datetime

from prefect import flow, runtime
from prefect.artifacts import create_markdown_artifact

from eternal.config import EXCHANGE_MODES, Settings, load_settings
from eternal.errors import ConfigError
from eternal.models import UTC, utc
from eternal.store.driver_store import DRIVER_LOCK, SqlLedger
from eternal.store.locks import exclusive
from flows.params import OptionalUtcTime
from tasks.context import stores

FLOW = "deposit-intake"


def check_deposit(amount_usdt: float, s: Settings) -> None:
    """A finite amount above 0, on paper (ConfigError otherwise, nothing booked)."""
    if not (math.isfinite(amount_usdt) and amount_usdt > 0):
        raise ConfigError(f"amount_usdt must be a positive number of USDT, got {amount_usdt}")
    if s.mode in EXCHANGE_MODES:
        raise ConfigError(f"ETERNAL_MODE={s.mode.value}: deposits are read from Bybit's deposit history by "
                          "every run (each once, by its deposit id); booking one here too would count it twice")


def check_not_before_clock(clock: str | None, asof: datetime) -> None:
    """An operator's time is never behind the ledger's clock (ClockError): a deposit stamped
    before it would never be split (the closes before the clock are done)."""
    from eternal.driver import ClockError, Due, Kind

    if clock is not None and Due(asof, Kind.OPEN).key < clock:
        raise ClockError(f"--asof {asof:%Y-%m-%dT%H:%MZ} is before the ledger's clock ({Due.from_key(clock)}): "
                         "a ledger never goes back in time; run without --asof to catch up to now")


@flow(name=FLOW, log_prints=True)
def deposit_intake(amount_usdt: float, reference: str | None = None, asof: OptionalUtcTime = None) -> dict:
    """Take a deposit of `amount_usdt` USDT. At the next daily close the orchestration layer splits
    it (the most underweight sleeve first, up to its target, the rest by target weights) before the
    engines decide, the same point as in a backfill. `reference` names it (default: this flow run):
    a retried or re-triggered run never books it twice.

    Args:
        amount_usdt: The deposit in USDT, above 0.
        reference: What names this deposit (a bank transfer's id, say): a deposit is booked once
            per reference. Empty: this flow run's id.
        asof: When it arrived, UTC (a plain date is 00:00 UTC; a time without an offset is UTC):
            the first daily close after it splits it. Empty: now. Never before the ledger's clock.
    """
    s = load_settings()
    check_deposit(amount_usdt, s)
    now = utc(asof) if asof is not None else datetime.now(UTC)
    ref = reference or f"run {runtime.flow_run.id or now.isoformat()}"
    _, store = stores(s)
    with exclusive(store.engine, DRIVER_LOCK):
        ledger = SqlLedger(store.engine)
        if asof is not None:
            check_not_before_clock(ledger.clock(), now)
        added = ledger.add_deposit(now, amount_usdt, ref)
    create_markdown_artifact(f"deposit {ref}: {amount_usdt:,.2f} USDT " +
                             ("waits for the next daily close" if added else "was taken before: nothing booked"),
                             key="deposit-intake", description="deposit intake")
    return {"reference": ref, "amount_usdt": amount_usdt, "duplicate": not added}
