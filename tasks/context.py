"""What every task needs: settings and the database (cached per process)."""
from __future__ import annotations

from eternal.config import Settings, load_settings
from eternal.data.store import MarketStore
from eternal.store.db import cached_engine
from eternal.store.ledger import LedgerStore


def settings() -> Settings:
    return load_settings()


def stores(s: Settings) -> tuple[MarketStore, LedgerStore]:
    engine = cached_engine(s.database_url)
    return MarketStore(engine), LedgerStore(engine)
