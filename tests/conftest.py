"""Shared fixtures: real data from ../shared/data, both databases, one Prefect harness."""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

# Before anything imports prefect or reads settings: no telemetry, no stray ETERNAL_ settings.
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["GX_ANALYTICS_ENABLED"] = "False"
for _k in [k for k in os.environ if k.startswith("ETERNAL_") and k != "ETERNAL_TEST_PG_URL"]:   # read below
    del os.environ[_k]

import tempfile  # noqa: E402

from hypothesis.configuration import set_hypothesis_home_dir  # noqa: E402

set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "eternal-hypothesis"))  # not in the repo

import pandas as pd  # noqa: E402
import prefect  # noqa: E402,F401
from prefect.logging.configuration import ensure_logging_setup  # noqa: E402

# Prefect's log handlers, made now on the session's stderr: `import prefect` is lazy, and the first
# `from prefect import flow` made them on the stderr of whichever test did it, a capsys test's
# stream that is closed when it ends ("I/O operation on closed file" in every later flow test of
# that worker: seen once the test files were handed out in another order)
ensure_logging_setup()
import pytest  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT.parent / "shared" / "data").resolve()
PG_BASE_URL = os.environ.get("ETERNAL_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
"""A PostgreSQL database the suite may connect to as a user allowed to CREATE DATABASE. Nothing in
it is touched: the suite creates databases of its own beside it and drops them at the end."""
# One database per suite run and xdist worker (test_<run>_gw0, ...): never a schema of a shared
# database dropped, and two suites running at once never share one.
_RUN = (os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"p{os.getpid()}")[:8]
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")


def _own_database_url() -> str:
    from sqlalchemy.engine import make_url

    base = make_url(PG_BASE_URL)
    return base.set(database=f"{base.database}_{_RUN}_{_WORKER}").render_as_string(hide_password=False)


PG_URL = _own_database_url()


def create_database(name: str) -> None:
    """Create PostgreSQL database `name` on the test server unless it exists (dropped at the end
    of the session)."""
    admin = create_engine(PG_BASE_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
                conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()


def _ensure_worker_database() -> None:
    from sqlalchemy.engine import make_url

    create_database(make_url(PG_URL).database)


@pytest.fixture(scope="session", autouse=True)
def _drop_own_databases():
    """The databases this session's worker made (its own and those named after it, e.g. _replay),
    dropped when it ends; open connections are closed first."""
    yield
    from sqlalchemy.engine import make_url

    own = make_url(PG_URL).database
    admin = create_engine(PG_BASE_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            names = [n for (n,) in conn.execute(text("SELECT datname FROM pg_database"))
                     if n == own or n.startswith(own + "_")]
    except Exception:           # no PostgreSQL in this session: nothing was made
        names = []
    if names:
        from eternal.store.db import cached_engine, close_all

        cached_engine.cache_clear()
        close_all()
    try:
        for name in names:
            try:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            except Exception as exc:    # a leftover database fails no test; the next run uses new names
                print(f"\nleft PostgreSQL database {name} behind: {exc}", file=sys.stderr)
    finally:
        admin.dispose()


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch, tmp_path):
    """Each test: no .env from the checkout, no retry delays, no network refresh."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ETERNAL_EXECUTION__RETRY_DELAYS_S", "[0, 0, 0]")
    monkeypatch.setenv("ETERNAL_DATA__REFRESH_BEFORE_CYCLE", "false")


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch) -> list:
    """Every outgoing connection of every test, refused unless it stays on this machine (loopback
    or a Unix socket)."""
    seen, real_connect = [], socket.socket.connect

    def connect(sock, address):
        seen.append(address)
        local = sock.family == socket.AF_UNIX           # a socket file on this machine (multiprocessing's)
        if not local and not (isinstance(address, tuple) and address[0] in ("127.0.0.1", "::1")):
            raise AssertionError(f"a test tried to connect to {address!r}: tests stay on 127.0.0.1")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return seen


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "ohlcv_1d_BTC-USDT_spot.csv").exists():
        pytest.fail(f"real market data not found at {SHARED_DATA}: clone with ../shared beside the repo")
    return SHARED_DATA


@pytest.fixture(scope="session")
def dataset(shared_data):
    from eternal.data.csv_files import read_dir

    return read_dir(shared_data)


def _masked(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _reset_postgres() -> None:
    try:
        _ensure_worker_database()
    except Exception as exc:
        pytest.fail(f"PostgreSQL at {_masked(PG_BASE_URL)} is unreachable or refuses CREATE DATABASE "
                    f"({exc.__class__.__name__}: {exc}). Start PostgreSQL (trust auth, database 'test') or set "
                    "ETERNAL_TEST_PG_URL=postgresql+psycopg2://USER@HOST:PORT/DB, a database USER may connect to "
                    "and a USER allowed to create databases: the suite creates its own beside DB and drops them.")
    engine = create_engine(PG_URL)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    except Exception as exc:  # loud, never a skip: CI must run the PostgreSQL half
        pytest.fail(f"PostgreSQL at {_masked(PG_URL)} is unreachable ({exc.__class__.__name__}: {exc}). "
                    "The database tests run on SQLite AND PostgreSQL; start PostgreSQL "
                    "(trust auth, database 'test') or set ETERNAL_TEST_PG_URL (see tests/conftest.py).")
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'eternal.db'}"
    _reset_postgres()
    from eternal.store.db import cached_engine

    cached_engine.cache_clear()   # engines of an earlier test point at dropped tables
    return PG_URL


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the session (about 15 s to start), heartbeats off."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield


def candles(dataset, symbol: str) -> pd.DataFrame:
    return dataset.daily(symbol)


def computed_once(tmp_path_factory, name: str, produce):
    """A session result that every xdist worker of this run shares: the first to ask computes it
    and pickles it beside the workers' temp dirs, the others wait on a lock and load it."""
    import fcntl
    import pickle

    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return produce()
    path = tmp_path_factory.getbasetemp().parent / f"{name}.pickle"
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return pickle.loads(path.read_bytes())
        value = produce()
        path.write_bytes(pickle.dumps(value))
        return value


@pytest.fixture(scope="session")
def full_backfill(dataset, tmp_path_factory):
    return computed_once(tmp_path_factory, "full_backfill", lambda: _full_backfill(dataset))


def _full_backfill(dataset):
    """The whole portfolio 2020-09-14..2026-01-01, 100,000 USDT and 1,000 USDT monthly, breakers on.
    `.seen[day]` holds what the governance tests measure at each close: FUNDING's hedge per asset
    and TREND's perp notional per asset as shares of their sleeve's equity, each asset's net
    exposure as a share of the portfolio, the breakers' state, and every sleeve's coins and perps."""
    from eternal.config import Settings
    from eternal.models import Sleeve, utc
    from eternal.replay import run_backfill
    from eternal.risk import net_exposures

    seen: dict[str, dict] = {}

    def on_day(day, books, exchange_books, closes, marks, state):
        total = sum(b.equity(closes, marks) for b in books.values())
        f = books[Sleeve.FUNDING]
        fe = f.equity(closes, marks)
        trend = {}
        for s in (Sleeve.TREND_1, Sleeve.TREND_2):
            e = books[s].equity(closes, marks)
            trend[s] = {sym.split("/")[0]: abs(p.qty) * marks[sym] / e for sym, p in books[s].perps.items()} if e > 0 else {}
        seen[f"{day:%Y-%m-%d}"] = {
            "funding": {sym.split("/")[0]: abs(p.qty) * marks[sym] / fe for sym, p in f.perps.items()} if fe > 0 else {},
            "trend": trend,
            "exposure": {a: v / total for a, v in net_exposures(books, closes, marks).items()},
            # the breakers through the crashes (tests/test_governance.py)
            "level": state.level, "drawdown": state.drawdown, "unit_value": state.unit_value, "hwm": state.hwm,
            "entries_blocked_until": state.entries_blocked_until, "units": state.units,
            "coins": {s: {a: q for a, q in b.holdings.items() if abs(q) > 1e-9} for s, b in books.items()},
            "perps": {s: dict((sym, p.qty) for sym, p in b.perps.items()) for s, b in books.items()}}

    r = run_backfill(dataset, Settings(), start=utc("2020-09-14"), end=utc("2026-01-01"), progress=False,
                     monthly_deposit=1_000.0, compare_breakers=False, on_day=on_day)
    r.seen = seen
    return r

