"""The daily cycle in demo mode: the one driver trading on Bybit (the V5 emulator) through ccxt.

Five sub-accounts, one per sleeve, hold the starting capital split by the sleeves' weights
(60,000 / 15,000 / 5,000 / 15,000 / 5,000 USDT). The emulator's prices are the stored closes of the
day the cycle decides on, so the slippage guard lets every order through.
"""
from __future__ import annotations

import pytest

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
        url = f"sqlite:///{tmp_path / 'eternal.db'}"
        monkeypatch.setenv("ETERNAL_DATABASE_URL", url)
        monkeypatch.setenv("ETERNAL_MODE", "demo")
        monkeypatch.setenv("ETERNAL_EXCHANGE__PUBLIC_URL", emu.url)
        engine = connect(url)
        store_market(engine, dataset, "2017-08-17", "2024-01-10")
        yield emu, engine


def venue_books(s):
    from tasks.exchange import open_exchange

    ex = open_exchange(s, None)
    return {sl: ex.books[sl] for sl in ex.clients}


def test_the_daily_cycle_in_demo_mode_trades_on_bybit_and_its_ledger_equals_the_accounts(demo):
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
