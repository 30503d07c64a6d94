"""Engines and schema: SQLite by default, PostgreSQL by URL; schema only through Alembic."""
from __future__ import annotations

import logging
import os
import sqlite3
import weakref
from functools import lru_cache
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.exc import OperationalError

from eternal.errors import ConfigError, DatabaseUnavailable, EternalError  # noqa: F401 - DatabaseUnavailable: raised here
from eternal.secrets import redact_url, register, reveal, scrub

MIGRATIONS = Path(__file__).parent / "migrations"


# every engine `connect` made and every SQLite connection they opened -> the pid of the process
# that made it, for `close_all`
_ENGINES: weakref.WeakKeyDictionary[Engine, int] = weakref.WeakKeyDictionary()


class _SQLiteConnection(sqlite3.Connection):
    """sqlite3's connection, as `sqlite3.connect(factory=...)` makes it; unlike the base class it can
    be weakly referenced, so `close_all` finds every one still open."""


_SQLITE: weakref.WeakKeyDictionary[_SQLiteConnection, int] = weakref.WeakKeyDictionary()


def close_all() -> None:
    """Close every pooled connection of the engines `connect` made in this process: a SQLite ledger
    is checkpointed and its -wal file removed, as at a normal interpreter exit (the CLI's fast exit
    and a forked backfill job's end call this). What a forked child inherited from its parent is
    left alone: SQLite forbids using a connection across a fork, closing one included."""
    me = os.getpid()
    for engine, pid in list(_ENGINES.items()):
        if pid == me:
            engine.dispose()
    # a connection whose engine is gone but which a reference cycle still holds (a pool and its
    # records) stays open until the cycle collector runs, which `os._exit` never waits for: the
    # ledger's -wal file was left behind (now and then: found by CI). Each is closed here (a full
    # collection did it too, but took 0.2 s after a full backfill).
    for conn, pid in list(_SQLITE.items()):
        if pid != me:
            continue
        try:
            conn.close()
        except sqlite3.ProgrammingError:      # made in a thread that checks: that thread closes it
            pass


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    if isinstance(dbapi_conn, _SQLiteConnection):
        _SQLITE[dbapi_conn] = os.getpid()
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def connect(url: str | SecretStr, *, migrate: bool = True) -> Engine:
    """An engine for `url` (best a SecretUrl from the settings), with the schema upgraded to head
    on first use. Messages show the URL masked and never the password."""
    register(url)
    url = reveal(url)
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        check_sqlite_dir(url)
    try:
        engine = create_engine(url, future=True, **({"connect_args": {"factory": _SQLiteConnection}}
                                                     if url.startswith("sqlite") else {}))
    except Exception as exc:  # bad URL, missing driver
        raise ConfigError(scrub(f"ETERNAL_DATABASE_URL={_safe(url)!r} cannot be used: {exc}")) from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    _ENGINES[engine] = os.getpid()
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        raise DatabaseUnavailable(scrub(
            f"database {_safe(url)} is unreachable: {' '.join(str(exc.orig).split())}. Start it or fix "
            "ETERNAL_DATABASE_URL."
        )) from None
    if migrate:
        ensure_schema(engine)
    return engine


DEFAULT_SQLITE = Path("var/eternal.db")
"""The default ledger (ETERNAL_DATABASE_URL unset), relative to the working directory: its
directory is created on first use."""


def check_sqlite_dir(url: str, setting: str = "ETERNAL_DATABASE_URL") -> None:
    """A SQLite file whose directory does not exist is refused (a mistyped path would otherwise
    start an empty ledger beside the real one); only the default's `var/` is created. `setting`:
    where the URL came from, named in the refusal."""
    path = Path(url.removeprefix("sqlite:///").split("?")[0]).expanduser()
    if path.parent.is_dir():
        return
    if path == DEFAULT_SQLITE:
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    raise ConfigError(f"SQLite database {path}: its directory {path.parent} does not exist (a mistyped path would "
                      f"start an empty ledger): correct {setting}, or create the directory first")


def _safe(url: str) -> str:
    """The URL with its user:password masked, for messages (not at all when it does not parse:
    then nothing says which part of it is the password)."""
    from sqlalchemy.engine import make_url

    try:
        make_url(url)
    except Exception:
        return "<unparseable url>"
    return redact_url(url)


def ensure_schema(engine: Engine) -> None:
    """Upgrade the schema to Alembic head (creates everything on an empty database)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection_engine"] = engine
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if _at_head(engine, cfg):
        return
    from eternal.store.locks import exclusive

    with exclusive(engine, "schema"):       # two processes starting on a new database: one creates it
        if not _at_head(engine, cfg):
            command.upgrade(cfg, "head")


def _at_head(engine: Engine, cfg) -> bool:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    if "alembic_version" not in inspect(engine).get_table_names():
        return False
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_heads()
    return set(current) == set(ScriptDirectory.from_config(cfg).get_heads())


@lru_cache(maxsize=8)
def cached_engine(url: str | SecretStr) -> Engine:
    return connect(url)
