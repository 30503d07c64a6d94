"""Persistence: SQLAlchemy 2 models, Alembic migrations, and the ledger repository."""
from eternal.store.db import connect, ensure_schema

__all__ = ["connect", "ensure_schema"]
