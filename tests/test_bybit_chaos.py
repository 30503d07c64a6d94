"""Chaos against the Bybit emulator: the daily cycle in demo mode over consecutive real days, with
random faults on the order path (`make chaos`; CHAOS_DAYS days, from 2024-01-02; not an ETERNAL_
variable: the test session clears those).

Every request to create, look up or cancel an order draws a fault with probability 0.15: the
answer lost after Bybit accepted it, HTTP 503 before it, Bybit's rate limit (10006), an HTTP 200
whose body is not JSON. Funding is settled on every held perp each day. A run that fails is
simply followed by the next day's run, as the schedule would. At the end, one run without faults:
no order at Bybit that our ledger does not hold, none twice, our open orders are Bybit's, and every
sleeve's books equal its account (no fill and no funding payment lost).
"""
from __future__ import annotations

import os
import random
from collections import Counter
from datetime import timedelta

import pytest

from eternal.driver import book_differences
from eternal.models import utc
from eternal.store.driver_store import SqlLedger
from tests.flow_support import daily
from tests import test_bybit_flow
from tests.test_bybit_flow import venue_books

demo = test_bybit_flow.demo            # the five demo sub-accounts and the stored market

pytestmark = [pytest.mark.chaos, pytest.mark.db, pytest.mark.flow]
PATHS = ("/v5/order/create", "/v5/order/realtime", "/v5/order/history", "/v5/order/cancel")
FAULTS = [{"drop": True, "status": None, "body": None, "ret_code": None},
          {"drop": False, "status": 503, "body": None, "ret_code": None},
          {"drop": False, "status": None, "body": None, "ret_code": 10006},
          {"drop": False, "status": 200, "body": "<html>bad gateway</html>", "ret_code": None}]


def test_random_faults_on_every_order_lose_nothing_and_send_nothing_twice(demo, dataset, monkeypatch):
    from eternal.config import load_settings
    from tests.flow_support import store_market

    emu, engine = demo
    monkeypatch.setenv("ETERNAL_BYBIT__BACKOFF_S", "[0.01, 0.02, 0.05]")
    days = int(os.environ.get("CHAOS_DAYS", "3"))
    store_market(engine, dataset, "2024-01-10", f"{utc('2024-01-03') + timedelta(days=days):%Y-%m-%d}")
    rng = random.Random(12)
    injected: Counter = Counter()
    real = emu._take_fault

    def chaotic(path):
        if path.startswith(PATHS) and rng.random() < 0.15:
            fault = dict(rng.choice(FAULTS), path=path, delay_s=0.0, times=1)
            injected[("drop" if fault["drop"] else fault["status"] or fault["ret_code"], path)] += 1
            return fault
        return real(path)

    failed_runs = 0
    day = utc("2024-01-01")
    for _ in range(days):
        emu.set_prices_from_candles(f"{day:%Y-%m-%d}")
        for base in ("BTC", "ETH", "SOL"):
            emu.settle_funding(f"{base}USDT", 0.0001)
        monkeypatch.setattr(emu, "_take_fault", chaotic)
        try:
            daily(f"{day + timedelta(days=1):%Y-%m-%d}T00:05:00Z")
        except Exception:
            failed_runs += 1
        monkeypatch.setattr(emu, "_take_fault", real)
        day += timedelta(days=1)
    daily(f"{day:%Y-%m-%d}T00:10:00Z")               # the same slot again, without faults: converges
    print(f"\nchaos over {days} days: faults injected {sum(injected.values())} "
          f"{dict(Counter(k for k, _ in injected.elements()))}, runs failed {failed_runs}")
    ledger = SqlLedger(engine)
    p = ledger.load()
    at_bybit = [o for a in emu.accounts.values() for o in a.orders.values()]
    ids = [o.link_id for o in at_bybit]
    assert len(ids) == len(set(ids)) and ledger.known_orders(set(ids)) == set(ids)
    assert {o.link_id for o in at_bybit if o.status in ("New", "PartiallyFilled")} == set(p.open_orders)
    theirs = venue_books(load_settings())
    assert {sl.value: book_differences(p.books[sl], theirs[sl]) for sl in theirs} == {sl.value: [] for sl in theirs}
    assert p.halted == {} and sum(injected.values()) > 0
