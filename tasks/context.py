"""What every task needs: settings and the database (cached per process)."""
from __future__ import annotations

from eternal.config import Settings, load_settings
from eternal.data.store import MarketStore
from eternal.store.db import cached_engine
from eternal.store.ledger import LedgerStore


ORDERS_LIMIT = "eternal-orders"
"""The global concurrency limit (1 slot) every flow that places orders holds while it runs:
`prefect gcl create eternal-orders --limit 1` (deployments/README.md). Without it (tests, the
embedded default) the flows still never interleave their orders: each order-placing step holds
the paper exchange's lock in our database."""


def orders_slot():
    from prefect.concurrency.sync import concurrency

    return concurrency(ORDERS_LIMIT, occupy=1)


def settings() -> Settings:
    return load_settings()


def stores(s: Settings) -> tuple[MarketStore, LedgerStore]:
    engine = cached_engine(s.database_url)
    return MarketStore(engine), LedgerStore(engine)
