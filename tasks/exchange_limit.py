"""The Prefect global concurrency limit `bybit-api`: one run at a time talks to Bybit (issue 13).

ccxt's limiter spaces the requests of one client; runs of different flows, processes or portfolios
on the same accounts would still add up against Bybit's limits, so in an exchange mode every flow
does its exchange work holding a slot of `bybit-api`. The limit is created on first use with one
slot (an operator may raise it, or deactivate it, in the UI or with `prefect
global-concurrency-limit`: what is there is never overwritten); created first, it is never the
"does not exist - skipping acquisition" warning Prefect gives for a missing one. Paper mode talks
to no venue and takes no slot.

A run killed while holding the slot (SIGKILL, power cut) cannot give it back, and Prefect frees
it only when the lease expires and only where its server services run: an ephemeral server (the
CLI without PREFECT_API_URL, the test harness) never does, and a restarted server has forgotten
the lease. So the slot is taken under the driver lock with its lease recorded in our database
(`SqlLedger.record_slot_lease`): a record the next run finds is a dead run's, and it gives that
slot back (by its lease, else by name when Prefect no longer knows the lease) before taking its own.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from uuid import UUID

from sqlalchemy import Engine

from eternal.config import EXCHANGE_MODES, Settings
from eternal.errors import EternalError
from eternal.store.driver_store import SqlLedger

BYBIT_API = "bybit-api"
DEFAULT_SLOTS = 1               # one run at a time on the accounts; the driver lock already serialises one ledger
LEASE_S = 120.0                 # a live run renews it every 90 s; a dead run's is freed by Prefect after this

log = logging.getLogger(__name__)


def ensure_limit(name: str = BYBIT_API, slots: int = DEFAULT_SLOTS) -> bool:
    """The global concurrency limit `name` exists (created here, active with `slots`, unless it
    already does, whatever its setting): True when this call created it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return False
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
        except ObjectAlreadyExists:          # another run created it in between
            return False
    log.info("created the Prefect global concurrency limit %r with %d slot(s)", name, slots)
    return True


def give_back_dead_slot(engine: Engine, name: str = BYBIT_API) -> bool:
    """Under the driver lock: the slot of `name` a dead run of this database left taken, given
    back (True), or nothing recorded (False)."""
    from prefect.client.orchestration import get_client

    ledger = SqlLedger(engine)
    lease_id = ledger.slot_lease()
    if lease_id is None:
        return False
    with get_client(sync_client=True) as client:
        before = client.read_global_concurrency_limit_by_name(name).active_slots
        client.release_concurrency_slots_with_lease(UUID(lease_id))
        after = client.read_global_concurrency_limit_by_name(name).active_slots
        if after == before and after > 0:    # Prefect no longer knows the lease (restarted, ephemeral)
            client.release_concurrency_slots([name], 1, 1.0)
    ledger.record_slot_lease(None, datetime.now(UTC))
    log.warning("the %r slot a dead run held (lease %s) is given back", name, lease_id)
    return True


def _record(engine: Engine, lease_ids: list[UUID]) -> None:
    if lease_ids:
        SqlLedger(engine).record_slot_lease(str(lease_ids[-1]), datetime.now(UTC))


def _forget(engine: Engine) -> None:
    SqlLedger(engine).record_slot_lease(None, datetime.now(UTC))


@contextmanager
def exchange_slot(s: Settings, engine: Engine, *, required: bool = True) -> Iterator[None]:
    """Under the driver lock: hold a slot of `bybit-api` (waiting for it) in an exchange mode;
    nothing on paper. `required=False` (an operator's halt): when Prefect cannot be reached, go on
    without the slot (ccxt's limiter still spaces this process's requests) rather than keep the
    kill switch from the venue."""
    if s.mode not in EXCHANGE_MODES:
        yield
        return
    from prefect.concurrency.context import ConcurrencyContext
    from prefect.concurrency.sync import concurrency

    with ExitStack() as stack:
        try:
            ensure_limit()
            give_back_dead_slot(engine)
            # Prefect records a granted lease in the innermost ConcurrencyContext (for its own
            # cleanup): ours, so the lease id can be recorded as well
            leases = stack.enter_context(ConcurrencyContext()).cleanup_lease_ids
            stack.callback(_forget, engine)       # after the slot is given back
            wait = s.bybit.slot_wait_s
            try:
                stack.enter_context(concurrency(BYBIT_API, occupy=1, strict=True, lease_duration=LEASE_S,
                                                raise_on_lease_renewal_failure=False, timeout_seconds=wait))
            except TimeoutError:
                raise EternalError(       # not retried: the wait was the retry
                    f"waited {wait:g} s for a slot of the Prefect global concurrency limit {BYBIT_API!r}: another "
                    "run is talking to Bybit, or one that died holding it (a run of another database) left it "
                    "taken; a Prefect server frees it when its lease ends (5 min); an ephemeral one does not: "
                    f"`prefect global-concurrency-limit inspect {BYBIT_API}`, then reset it with "
                    f"`prefect global-concurrency-limit update {BYBIT_API} --active-slots 0` when no run is "
                    "alive (ETERNAL_BYBIT__SLOT_WAIT_S sets the wait)") from None
            _record(engine, leases)
        except Exception as exc:
            if required:
                raise
            log.warning("the %r concurrency slot could not be taken (%s: %s): going on without it",
                        BYBIT_API, type(exc).__name__, exc)
        yield
