"""Bulk insert-or-update that works on SQLite and PostgreSQL alike."""
from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite

_CHUNK = 5_000


def upsert(conn: Connection, table: Table, rows: Sequence[dict], keys: Sequence[str]) -> int:
    """Insert rows, updating the non-key columns of rows whose keys already exist."""
    if not rows:
        return 0
    dialect = conn.dialect.name
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect)
    if insert is None:
        raise NotImplementedError(f"upsert is not implemented for {dialect}")
    columns = [c for c in rows[0] if c not in keys]
    stmt = insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(keys), set_={c: stmt.excluded[c] for c in columns}
    ) if columns else stmt.on_conflict_do_nothing(index_elements=list(keys))
    # executemany: SQLAlchemy batches it ("insertmanyvalues"), far cheaper to compile than one
    # literal multi-row VALUES statement per chunk
    for start in range(0, len(rows), _CHUNK):
        conn.execute(stmt, list(rows[start:start + _CHUNK]))
    return len(rows)
