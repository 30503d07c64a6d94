"""Issue 13: the venue's trading rules from `load_markets()` in the stored `instruments` table, and
the rate limits (ccxt's limiter on, the Prefect global concurrency limit `bybit-api`).

The emulator serves Bybit's instruments-info rows (tests/bybit_stub.py), whose spot minimums are
not the packaged table's (BTC/USDT minOrderQty 0.000048, packaged 0.000011): what is stored and
applied in demo mode is the venue's.
"""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from eternal.errors import EternalError
from sqlalchemy import select

from eternal.config import Mode
from eternal.exchange import bybit
from eternal.exchange.bybit import BybitExchange, make_client
from eternal.instruments import Instrument, default
from eternal.models import Sleeve, utc
from eternal.store.db import connect
from eternal.store.instruments import load_instruments, refresh_instruments
from eternal.store.models import EventRow, InstrumentRow, OrderRow
from tasks.exchange_limit import BYBIT_API, exchange_slot
from tests.bybit_emulator import BybitEmulator
from tests.flow_support import daily
from tests.test_bybit_flow import demo  # noqa: F401  (the fixture: five demo sub-accounts on the emulator)

T0, T1 = utc("2024-01-02T00:05:00Z"), utc("2024-01-03T00:05:00Z")


def instrument_rows(engine) -> dict[str, tuple]:
    with engine.connect() as conn:
        return {r.symbol: (r.qty_step, r.min_qty, r.min_notional, r.price_tick, r.max_leverage, r.source,
                           r.updated_at) for r in conn.execute(select(InstrumentRow)).all()}


def events(engine, kind: str) -> list:
    with engine.connect() as conn:
        return conn.execute(select(EventRow).where(EventRow.kind == kind).order_by(EventRow.id)).all()


# the stored table (SQLite and PostgreSQL) ----------------------------------------------------------

@pytest.mark.db
def test_the_instruments_table_is_upserted_and_a_changed_rule_is_an_event_naming_old_and_new(db_url):
    engine = connect(db_url)                         # the migration 0003 creates `instruments`
    try:
        assert refresh_instruments(engine, default(), T0, "bybit demo") == []     # first read: no change
        assert load_instruments(engine) == default()
        assert instrument_rows(engine)["ETH/USDT:USDT"] == (0.01, 0.01, 5.0, 0.01, 100.0, "bybit demo", T0)

        wider = dict(default())
        wider["ETH/USDT:USDT"] = Instrument("ETH/USDT:USDT", 0.1, 0.1, 5.0, 0.01, 100.0)
        changed = refresh_instruments(engine, wider, T1, "bybit demo")
        assert [e.kind for e in changed] == ["instrument_rules_changed"]
        assert changed[0].message == ("bybit demo: ETH/USDT:USDT trading rules changed: qty_step 0.01 -> 0.1, "
                                      "min_qty 0.01 -> 0.1; orders from now on are rounded to the new rules")
        assert changed[0].data["changes"] == {"qty_step": {"old": 0.01, "new": 0.1},
                                              "min_qty": {"old": 0.01, "new": 0.1}}
        rows = instrument_rows(engine)
        assert rows["ETH/USDT:USDT"] == (0.1, 0.1, 5.0, 0.01, 100.0, "bybit demo", T1)
        assert rows["BTC/USDT"][-1] == T1            # every row says when the venue last said so
        [stored] = events(engine, "instrument_rules_changed")
        assert stored.message == changed[0].message and stored.level == "warning"
        assert refresh_instruments(engine, wider, T1, "bybit demo") == []          # the same again: nothing
    finally:
        engine.dispose()


# the adapter -------------------------------------------------------------------------------------

def test_the_bybit_adapters_rules_are_the_loaded_markets_instruments_info():
    with BybitEmulator() as emu:
        emu.add_account("k-rules", "secret-k-rules")
        bybit._MARKETS.clear()                       # this process's markets cache: read them now
        ex = BybitExchange({Sleeve.CORE: make_client("k-rules", "secret-k-rules", mode="demo", url=emu.url,
                                                     rate_limit_ms=1)})
        rules = ex.rules
    assert set(rules) == set(default())
    # the venue's (tests/bybit_stub.py rows), not the packaged table's
    assert rules["BTC/USDT"] == Instrument("BTC/USDT", 0.000001, 0.000048, 5.0, 0.01, None)
    assert default()["BTC/USDT"].min_qty == 0.000011
    assert rules["ETH/USDT:USDT"] == Instrument("ETH/USDT:USDT", 0.01, 0.01, 5.0, 0.01, 100.0)
    assert rules["SOL/USDT:USDT"].qty_step == 0.1 and rules["SOL/USDT:USDT"].min_notional == 5.0


# rate limits -------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["demo", "testnet", "live"])
def test_make_client_leaves_ccxts_rate_limiter_on_in_every_exchange_mode(mode):
    assert make_client("k", "s", mode=mode).enableRateLimit is True
    fast = make_client("k", "s", mode=mode, rate_limit_ms=1)
    assert fast.enableRateLimit is True and fast.rateLimit == 1


def test_paper_mode_takes_no_bybit_api_slot(monkeypatch):
    import tasks.exchange_limit as limit

    monkeypatch.setattr(limit, "ensure_limit", lambda *a, **k: pytest.fail("paper mode asked Prefect for a slot"))
    with exchange_slot(SimpleNamespace(mode=Mode.PAPER), None):
        pass


def test_a_halt_goes_on_without_the_slot_when_prefect_is_unreachable_a_run_does_not(monkeypatch, caplog):
    import tasks.exchange_limit as limit

    def unreachable(*a, **k):
        raise ConnectionError("Prefect API at http://127.0.0.1:1/api is unreachable")

    monkeypatch.setattr(limit, "ensure_limit", unreachable)
    s = SimpleNamespace(mode=Mode.DEMO, bybit=SimpleNamespace(slot_wait_s=300.0))
    with pytest.raises(ConnectionError):
        with exchange_slot(s, None):
            pytest.fail("a run went on without its slot")
    entered = []
    with caplog.at_level(logging.WARNING, logger="tasks.exchange_limit"):
        with exchange_slot(s, None, required=False):
            entered.append(True)
    assert entered and "'bybit-api' concurrency slot could not be taken (ConnectionError" in caplog.text


def _enters_within(s, engine, seconds: float) -> bool:
    """Whether `exchange_slot` is entered (and left) within `seconds` (a slot never given back
    would block it for good: the test harness's ephemeral Prefect server frees no expired lease)."""
    import threading

    done = threading.Event()

    def take():
        with exchange_slot(s, engine):
            pass
        done.set()

    threading.Thread(target=take, daemon=True).start()
    return done.wait(seconds)


@pytest.mark.parametrize("prefect_knows_the_lease", [True, False])
def test_a_slot_left_by_a_run_that_died_holding_it_is_given_back_by_the_next_run(
        tmp_path, prefect_harness, prefect_knows_the_lease):
    """A run SIGKILLed while holding `bybit-api` leaves its lease recorded; the next run (under the
    driver lock) gives that slot back, by its lease or, when Prefect has forgotten the lease (a
    restarted or ephemeral server), by name, then takes and gives back its own."""
    import uuid

    from prefect.client.orchestration import get_client

    from eternal.store.driver_store import SqlLedger
    from tasks.exchange_limit import ensure_limit

    engine = connect(f"sqlite:///{tmp_path / 'eternal.db'}")
    ensure_limit()
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(BYBIT_API).active_slots == 0
        if prefect_knows_the_lease:
            lease = client.increment_concurrency_slots_with_lease([BYBIT_API], 1, "concurrency", 60).json()["lease_id"]
        else:
            client.increment_concurrency_slots([BYBIT_API], 1, "concurrency")
            lease = str(uuid.uuid4())
        assert client.read_global_concurrency_limit_by_name(BYBIT_API).active_slots == 1
    SqlLedger(engine).record_slot_lease(lease, T0)                 # ... and the run holding it died
    assert _enters_within(SimpleNamespace(mode=Mode.DEMO, bybit=SimpleNamespace(slot_wait_s=300.0)), engine, 30.0)
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(BYBIT_API).active_slots == 0
    assert SqlLedger(engine).slot_lease() is None
    engine.dispose()


def test_a_slot_held_by_a_dead_run_of_another_database_fails_the_run_after_the_wait_in_one_line(
        tmp_path, prefect_harness):
    """The slot is taken and this database has no record of who took it (a run of another
    portfolio died holding it; an ephemeral Prefect server never frees it): the run waits
    ETERNAL_BYBIT__SLOT_WAIT_S, then fails saying why and what to do, instead of hanging."""
    from prefect.client.orchestration import get_client

    from tasks.exchange_limit import ensure_limit

    engine = connect(f"sqlite:///{tmp_path / 'eternal.db'}")
    ensure_limit()
    with get_client(sync_client=True) as client:
        client.increment_concurrency_slots([BYBIT_API], 1, "concurrency")
    try:
        with pytest.raises(EternalError, match="waited 1 s for a slot of the Prefect global concurrency limit"):
            with exchange_slot(SimpleNamespace(mode=Mode.DEMO, bybit=SimpleNamespace(slot_wait_s=1.0)), engine):
                pass
    finally:
        with get_client(sync_client=True) as client:
            client.release_concurrency_slots([BYBIT_API], 1, 1.0)
    engine.dispose()


# the flow: demo mode on the emulator -------------------------------------------------------------

class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_demo_runs_store_the_venues_rules_round_orders_to_a_changed_step_and_hold_a_bybit_api_slot(
        demo, monkeypatch):
    """Day 1 stores the emulator's instruments-info and creates `bybit-api` (1 slot), held while the
    run talks to the exchange and free after it, without Prefect's "do not exist" warning. Then
    Bybit widens ETH/USDT:USDT's qty step 0.01 -> 0.1: day 2 stores it with an event naming the
    change, and FUNDING's 0.31 ETH perp short (0.31 on the packaged step) goes out as 0.3."""
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency

    import tasks.drive

    emu, engine = demo
    with get_client(sync_client=True) as client:
        try:
            client.delete_global_concurrency_limit_by_name(BYBIT_API)   # another test's, in this session
        except Exception:
            pass
    held = []
    real_refresh = tasks.drive.refresh_instruments

    def refresh_and_look(*args, **kwargs):           # inside the run, talking to Bybit: the slot is held
        with get_client(sync_client=True) as client:
            held.append(client.read_global_concurrency_limit_by_name(BYBIT_API).active_slots)
        return real_refresh(*args, **kwargs)

    monkeypatch.setattr(tasks.drive, "refresh_instruments", refresh_and_look)
    logs = _Collect()
    logging.getLogger("prefect").addHandler(logs)
    try:
        bybit._MARKETS.clear()
        emu.set_prices_from_candles("2024-01-01")
        daily("2024-01-02T00:05:00Z")
        # the control: a missing limit is the warning that `bybit-api` never gives
        with concurrency("eternal-test-missing-limit", occupy=1):
            pass
    finally:
        logging.getLogger("prefect").removeHandler(logs)
    assert any("'eternal-test-missing-limit'] do not exist" in m for m in logs.messages)
    assert not any(BYBIT_API in m and "do not exist" in m for m in logs.messages)
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(BYBIT_API)
    assert (limit.limit, limit.active, limit.active_slots) == (1, True, 0) and held == [1]

    rows = instrument_rows(engine)
    assert set(rows) == set(default())
    assert rows["BTC/USDT"][:6] == (0.000001, 0.000048, 5.0, 0.01, None, "bybit demo")    # the venue's minimum
    assert rows["ETH/USDT:USDT"][:6] == (0.01, 0.01, 5.0, 0.01, 100.0, "bybit demo")
    assert events(engine, "instrument_rules_changed") == []

    eth_perp = next(r for r in emu.instruments["linear"] if r["symbol"] == "ETHUSDT")
    eth_perp["lotSizeFilter"].update(qtyStep="0.1", minOrderQty="0.1")
    bybit._MARKETS.clear()                           # a new process, or the hour's re-read
    emu.set_prices_from_candles("2024-01-02")
    daily("2024-01-03T00:05:00Z")

    rows = instrument_rows(engine)
    assert rows["ETH/USDT:USDT"] == (0.1, 0.1, 5.0, 0.01, 100.0, "bybit demo", utc("2024-01-03T00:05:00Z"))
    [changed] = events(engine, "instrument_rules_changed")
    assert changed.message.startswith("bybit demo: ETH/USDT:USDT trading rules changed: qty_step 0.01 -> 0.1, "
                                      "min_qty 0.01 -> 0.1")
    sent = [o for o in emu.accounts["demo-funding"].orders.values() if o.category == "linear"]
    assert [(o.symbol, o.side, o.qty) for o in sent] == [("ETHUSDT", "Sell", 0.3)]
    with engine.connect() as conn:
        ours = conn.execute(select(OrderRow.qty, OrderRow.filled_qty).where(
            OrderRow.client_order_id == sent[0].link_id)).one()
    assert tuple(ours) == (0.3, 0.3)                 # our order is what Bybit took, filled whole
    spot = [o.qty for o in emu.accounts["demo-funding"].orders.values() if o.category == "spot"]
    assert spot == [0.31]                            # the spot leg's step (0.00001) did not change
    assert held == [1, 1]
