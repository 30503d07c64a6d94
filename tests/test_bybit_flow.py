"""The daily cycle in demo mode: the one driver trading on Bybit (the V5 emulator) through ccxt.

Five sub-accounts, one per sleeve, hold the starting capital split by the sleeves' weights
(60,000 / 15,000 / 5,000 / 15,000 / 5,000 USDT). The emulator's prices are the stored closes of the
day the cycle decides on, so the slippage guard lets every order through.
"""
from __future__ import annotations

import logging

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogHandler

from eternal.config import load_settings
from eternal.driver import book_differences
from eternal.models import Sleeve
from eternal.store.db import connect
from eternal.store.driver_store import SqlLedger
from tests.bybit_emulator import BybitEmulator
from tests.flow_support import daily, store_market

pytestmark = [pytest.mark.db, pytest.mark.flow]
WEIGHTS = {Sleeve.CORE: 0.60, Sleeve.TREND_1: 0.15, Sleeve.TREND_2: 0.05, Sleeve.FUNDING: 0.15,
           Sleeve.TACTICAL: 0.05}


@pytest.fixture
def demo(tmp_path, dataset, monkeypatch, prefect_harness):
    with BybitEmulator(spread=0.0002) as emu:      # 2 bps: a post-only buy at the close rests
        for sleeve, w in WEIGHTS.items():
            key = f"demo-{sleeve.value}"
            emu.add_account(key, f"secret-{key}-0123456789", usdt=100_000.0 * w)
            name = sleeve.weight_field.upper()
            monkeypatch.setenv(f"ETERNAL_BYBIT__KEYS__{name}__API_KEY", key)
            monkeypatch.setenv(f"ETERNAL_BYBIT__KEYS__{name}__API_SECRET", f"secret-{key}-0123456789")
        # the master account: deposits land there, its key makes every universal transfer
        emu.add_account("demo-main", "secret-demo-main-0123456789", usdt=0.0, master=True)
        monkeypatch.setenv("ETERNAL_BYBIT__KEYS__MAIN__API_KEY", "demo-main")
        monkeypatch.setenv("ETERNAL_BYBIT__KEYS__MAIN__API_SECRET", "secret-demo-main-0123456789")
        url = f"sqlite:///{tmp_path / 'eternal.db'}"
        monkeypatch.setenv("ETERNAL_DATABASE_URL", url)
        monkeypatch.setenv("ETERNAL_MODE", "demo")
        monkeypatch.setenv("ETERNAL_BYBIT__RATE_LIMIT_MS", "1")    # the emulator has no limit of its own
        monkeypatch.setenv("ETERNAL_EXCHANGE__PUBLIC_URL", emu.url)
        engine = connect(url)
        store_market(engine, dataset, "2017-08-17", "2024-01-10")
        yield emu, engine


def venue_books(s):
    from tasks.exchange import open_exchange

    ex = open_exchange(s, None)
    return {sl: ex.books[sl] for sl in ex.clients}


def test_the_daily_cycle_in_demo_mode_trades_on_bybit_its_ledger_equals_the_accounts_and_no_key_leaks(
        demo, caplog):
    """Two days of the daily cycle on five sub-accounts, then a run that fails at the exchange (the
    wallet answers 401, Bybit's 10003): the ledger equals every account, no order id is sent twice,
    and neither any key nor any secret appears in the log records, the database file, the Prefect
    runs' parameters, logs and artifacts, or the error text."""
    emu, engine = demo
    emu.set_prices_from_candles("2024-01-01")
    first = daily("2024-01-02T00:05:00Z")           # decides on the close of 2024-01-01
    assert first["orders"] > 0 and first["halted"] == {}
    sent = {o.link_id for a in emu.accounts.values() for o in a.orders.values()}
    assert len(sent) == sum(len(a.orders) for a in emu.accounts.values())      # no id twice
    emu.set_prices_from_candles("2024-01-02")
    second = daily("2024-01-03T00:05:00Z")          # the close of 2024-01-02
    assert second["halted"] == {}                   # reconciled at the start: nothing unexplained
    p = SqlLedger(engine).load()
    theirs = venue_books(load_settings())
    assert {sl.value: book_differences(p.books[sl], theirs[sl]) for sl in theirs} == \
        {sl.value: [] for sl in theirs}
    # CORE's post-only tranche limits at the close of 2024-01-01 rest at Bybit (BTC and ETH rose since);
    # our ledger holds exactly those open
    core = {o.link_id: o.status for o in emu.accounts["demo-core"].orders.values()}
    assert len(core) == 2 and set(core.values()) == {"New"}
    assert set(core) == {cid for cid, rec in p.open_orders.items() if rec.intent.sleeve == Sleeve.CORE}
    filled = [o.link_id for a in emu.accounts.values() for o in a.orders.values() if o.status == "Filled"]
    assert filled and SqlLedger(engine).known_orders(set(filled)) == set(filled)    # every fill has our order

    # the same ledger run in paper mode (a forgotten --mode): refused, nothing halted nor changed
    from eternal.errors import ConfigError

    before = SqlLedger(engine).load().doc()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ETERNAL_MODE", "paper")
        with pytest.raises(ConfigError, match="this ledger trades in demo mode"):
            daily("2024-01-04T00:05:00Z")
    assert SqlLedger(engine).load().doc() == before and before["mode"] == "demo"

    # the keys: a failed run, then every place a key could have leaked to
    accounts = [s.value for s in WEIGHTS] + ["main"]
    secrets = [f"secret-demo-{a}-0123456789" for a in accounts] + [f"demo-{a}" for a in accounts]
    caplog.set_level(logging.DEBUG)
    emu.fault("/v5/account/wallet-balance", status=401, body='{"retCode":10003,"retMsg":"API key is invalid."}',
              times=None)
    emu.set_prices_from_candles("2024-01-03")
    with pytest.raises(Exception) as failed:
        daily("2024-01-04T00:05:00Z")
    emu.clear_faults()
    texts = [caplog.text, str(failed.value), repr(failed.value)]
    db_file = engine.url.database
    raw = open(db_file, "rb").read()
    APILogHandler().flush()                         # the run logs reach the API in batches
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(limit=20, sort="START_TIME_DESC")
        texts += [str(r.parameters) + str(r.state.message if r.state else "") for r in runs[:2]]
        logs = [log.message for r in runs[:2]
                for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[r.id])))]
        texts += logs
        texts += [str(a.data) for a in client.read_artifacts(limit=50)]
    found = [s for s in secrets if any(s in t for t in texts) or s.encode() in raw]
    assert found == [] and "Bybit refused the API key" in str(failed.value)
    assert any("Bybit refused the API key" in m for m in logs)                 # the logs were read ...
    assert not any("Retry 1/3" in m for m in logs)                           # ... and a bad key is not retried
