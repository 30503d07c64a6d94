"""Partial fills at Bybit (issue 13): an urgent order left partly filled is followed to completion
or its rest cancelled after a timeout, and the rest is planned again from the position held.

Prices: the stored closes of 2024-01-02 (BTC perp 44,979.8; ETH spot 2,355.34; BTC spot 44,946.91),
the day the close run of 2024-01-03 00:00 decides on. The adapter follows with a 0.2 s timeout and a
20 ms poll (settings: 10 s and 0.5 s).
"""
from __future__ import annotations

import time

import pandas as pd
import pytest

from eternal.config import load_settings
from eternal.driver import Batch, Driver, Due, Kind, Portfolio, book_differences
from eternal.exchange.bybit import BybitExchange, make_client
from eternal.execution import client_order_id
from eternal.models import (Market, OrderIntent, OrderStatus, OrderType, Plan, Side, Sleeve, SleeveBook,
                            utc)
from eternal.replay import MemoryLedger
from tests.bybit_emulator import BybitEmulator

DAY = "2024-01-02"
DUE = Due(utc("2024-01-03"), Kind.CLOSE)          # decides on the close of DAY
T1, F, CORE = Sleeve.TREND_1, Sleeve.FUNDING, Sleeve.CORE
TIMEOUT_S, POLL_S = 0.2, 0.02


@pytest.fixture(scope="module")
def closes(dataset) -> dict[str, float]:
    """Symbol -> the stored close of DAY."""
    stamp = pd.Timestamp(DAY, tz="UTC")
    return {sym: float(df.loc[stamp, "close"]) for (sym, tf), df in dataset.candles.items()
            if tf == "1d" and stamp in df.index}


@pytest.fixture(scope="module")
def emu():
    with BybitEmulator() as emu:
        yield emu


@pytest.fixture
def accounts(emu, closes, request):
    """Fresh sub-accounts for CORE, TREND-1 and FUNDING (10,000 USDT each) at DAY's closes;
    returns a function making a new adapter on them (a new process: new ccxt clients)."""
    emu.clear_faults()
    for sym, close in closes.items():
        emu.set_price(sym.split(":")[0].replace("/", ""), close, "linear" if ":" in sym else "spot")
    tag = f"{request.node.name[:24]}-{len(emu.accounts)}"
    keys = {}
    for sleeve in (CORE, T1, F):
        keys[sleeve] = f"{tag}-{sleeve.value}"
        emu.add_account(keys[sleeve], "secret-" + keys[sleeve], usdt=10_000.0)

    def adapter() -> BybitExchange:
        clients = {s: make_client(k, "secret-" + k, mode="live", url=emu.url) for s, k in keys.items()}
        for c in clients.values():
            c.enableRateLimit = False
        return BybitExchange(clients, partial_fill_timeout_s=TIMEOUT_S, partial_fill_poll_s=POLL_S)

    return adapter


def market(sleeve, symbol, qty, key, side=Side.BUY, **kw) -> OrderIntent:
    kind = Market.PERP if symbol.endswith(":USDT") else Market.SPOT
    return OrderIntent(sleeve, symbol, kind, side, qty, OrderType.MARKET, "entry", key, **kw)


def at_bybit(emu, venue, sleeve):
    return list(emu.account(venue.clients[sleeve].apiKey).orders.values())


def test_a_market_order_filled_40_percent_then_the_rest_within_the_timeout_ends_filled_with_both_fills_once(
        emu, accounts, closes):
    venue = accounts()
    venue.set_leverage(T1, "BTC/USDT:USDT", 2.0)
    cid = client_order_id("daily-close", DUE.ts, T1, "entry:BTC")
    emu.partial_fill_next(0.4, rest_after_s=0.05)
    order = venue.place_order(cid, market(T1, "BTC/USDT:USDT", 0.05, "entry:BTC", leverage=2.0), DUE.ts)
    assert order.status == OrderStatus.FILLED and order.filled_qty == pytest.approx(0.05)
    [o] = at_bybit(emu, venue, T1)
    assert o.status == "Filled" and o.link_id == cid
    journal = venue.journal_since(0)
    fills = [f for _, kind, f in journal if kind == "fill"]
    assert [f.client_order_id for f in fills] == [cid, cid]
    assert [f.qty for f in fills] == pytest.approx([0.02, 0.03])
    assert all(f.price == closes["BTC/USDT:USDT"] == 44979.8 for f in fills)
    assert sum(f.fee for f in fills) == pytest.approx(0.05 * 44979.8 * 0.00055)
    assert venue.journal_since(journal[-1][0]) == []                      # each fill once
    assert venue.books[T1].perps["BTC/USDT:USDT"].qty == pytest.approx(0.05)


@pytest.mark.parametrize("sleeve, symbol, qty, bybit_status", [
    (T1, "BTC/USDT:USDT", 0.05, "Cancelled"),
    (F, "ETH/USDT", 1.0, "PartiallyFilledCanceled"),      # spot: ccxt says 'closed'; it is no fill
])
def test_a_market_order_whose_rest_never_fills_is_cancelled_after_the_timeout_with_40_percent_filled(
        emu, accounts, sleeve, symbol, qty, bybit_status):
    venue = accounts()
    cid = client_order_id("daily-close", DUE.ts, sleeve, f"entry:{symbol}")
    emu.partial_fill_next(0.4)
    started = time.monotonic()
    order = venue.place_order(cid, market(sleeve, symbol, qty, f"entry:{symbol}"), DUE.ts)
    assert time.monotonic() - started >= TIMEOUT_S
    assert order.status == OrderStatus.CANCELLED and order.filled_qty == pytest.approx(0.4 * qty)
    [o] = at_bybit(emu, venue, sleeve)
    assert o.status == bybit_status and o.cum_qty == pytest.approx(0.4 * qty)
    fills = [f for _, kind, f in venue.journal_since(0) if kind == "fill"]
    assert [(f.client_order_id, f.qty) for f in fills] == [(cid, pytest.approx(0.4 * qty))]
    assert venue.fetch_order(cid, sleeve).status == OrderStatus.CANCELLED      # so a re-run sends nothing


def test_a_post_only_limit_is_not_followed_it_rests(emu, accounts, closes):
    venue = accounts()
    cid = client_order_id("daily-close", DUE.ts, CORE, "tranche1:BTC:buy")
    below = round(closes["BTC/USDT"] * 0.99, 1)               # 1 % under the close of DAY: rests
    intent = OrderIntent(CORE, "BTC/USDT", Market.SPOT, Side.BUY, 0.01, OrderType.LIMIT, "tranche",
                         "tranche1:BTC:buy", limit_price=below, post_only=True)
    started = time.monotonic()
    order = venue.place_order(cid, intent, DUE.ts)
    assert time.monotonic() - started < TIMEOUT_S and order.status == OrderStatus.OPEN
    assert [o.status for o in at_bybit(emu, venue, CORE)] == ["New"]


def test_through_the_driver_a_cancelled_partial_fill_is_booked_once_and_a_second_run_sends_nothing(
        emu, accounts):
    """The close run acts on a TREND entry that fills 40 % and is cancelled; the next look at the
    journal books 0.02 BTC once; the same run again (a re-run after a crash) finds the order by its
    id, sends nothing, books nothing twice; our book equals the account."""
    s = load_settings()
    plan = Plan(DUE.ts, DUE.day, [market(T1, "BTC/USDT:USDT", 0.05, "entry:BTC", leverage=2.0)], {}, [])
    prices = {"BTC/USDT:USDT": 44979.8}
    cid = client_order_id("daily-close", DUE.ts, T1, "entry:BTC")
    ledger = MemoryLedger()
    p = Portfolio({sl: SleeveBook(sl, 10_000.0) for sl in (CORE, T1, F)})

    def run() -> tuple[BybitExchange, Batch]:            # act on the plan, then book the journal
        venue = accounts()
        driver = Driver(None, venue, ledger, s, (T1,), orchestrated=False)
        batch = Batch(DUE)
        driver.act(p, DUE, plan, batch, prices)
        driver.sync(p, batch)
        ledger.commit(p, batch)
        return venue, batch

    emu.partial_fill_next(0.4)
    venue, first = run()
    [rec] = first.orders
    assert rec.client_order_id == cid and rec.status == OrderStatus.CANCELLED
    assert rec.filled_qty == pytest.approx(0.02) and cid not in p.open_orders
    [fill] = first.fills
    assert fill.client_order_id == cid and fill.qty == pytest.approx(0.02)
    fee = fill.fee
    assert fee == pytest.approx(0.02 * 44979.8 * 0.00055)

    venue, second = run()                                   # the same plan again: a new process
    assert [e.kind for e in second.events] == ["order_recovered"] and second.fills == []
    assert len(at_bybit(emu, venue, T1)) == 1               # never sent twice
    assert [f.client_order_id for f in ledger.fills] == [cid] and ledger.orders[cid].filled_qty == pytest.approx(0.02)
    pos = p.books[T1].perps["BTC/USDT:USDT"]
    assert pos.qty == pytest.approx(0.02)                   # what TREND sees at its next decision
    assert p.books[T1].cash == pytest.approx(10_000.0 - 0.02 * 44979.8 / 2 - fee)
    assert book_differences(p.books[T1], venue.books[T1]) == []


def test_a_rest_left_resting_by_a_run_that_died_is_cancelled_by_the_next_runs_look_at_the_venue(emu, accounts):
    """A run died while following a TREND entry filled 40 %: our ledger holds the order open, Bybit
    holds its rest (0.03 BTC) resting. The next run's look at the venue books the 0.02 BTC filled,
    cancels the rest and records the order cancelled: TREND sees 0.02 held and plans the rest."""
    s = load_settings()
    venue = accounts()
    venue._follow = lambda order, intent: order            # the follow-up never ran: the process died
    cid = client_order_id("daily-close", DUE.ts, T1, "entry:BTC")
    emu.partial_fill_next(0.4)
    from eternal.execution import execute

    placed = execute([market(T1, "BTC/USDT:USDT", 0.05, "entry:BTC", leverage=2.0)], venue, flow="daily-close",
                     scheduled=DUE.ts, now=DUE.ts, known={})
    [rec] = placed.orders
    assert rec.status == OrderStatus.OPEN and at_bybit(emu, venue, T1)[0].status == "PartiallyFilled"
    p = Portfolio({sl: SleeveBook(sl, 10_000.0) for sl in (CORE, T1, F)})
    p.open_orders[cid] = rec
    driver = Driver(None, accounts(), MemoryLedger(), s, (T1,), orchestrated=False)   # the next run
    batch = Batch(None)
    driver.sync(p, batch)
    assert at_bybit(emu, venue, T1)[0].status == "Cancelled" and cid not in p.open_orders
    assert rec.status == OrderStatus.CANCELLED and rec.filled_qty == pytest.approx(0.02)
    assert [f.qty for f in batch.fills] == [pytest.approx(0.02)] and p.books[T1].perps["BTC/USDT:USDT"].qty == pytest.approx(0.02)
