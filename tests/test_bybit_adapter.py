"""The Bybit adapter (eternal/exchange/bybit.py) through the real ccxt client against the V5 emulator.

Prices: the close of 2024-01-01 (BTC 44,179.55 spot, 44,230.2 perp; ETH 2,352.04). Each sleeve has its own
sub-account (key pair); every order carries our client order id as `orderLinkId`.
"""
from __future__ import annotations

from datetime import UTC, datetime

import pytest

from eternal.errors import ExchangeError
from eternal.exchange.base import OrderRefused
from eternal.exchange.bybit import BybitExchange, make_client
from eternal.execution import client_order_id, execute
from eternal.models import Market, OrderIntent, OrderStatus, OrderType, Side, Sleeve, StopLevel
from tests.bybit_emulator import BybitEmulator

NOW = datetime(2024, 1, 2, tzinfo=UTC)
CORE, T1, F = Sleeve.CORE, Sleeve.TREND_1, Sleeve.FUNDING


@pytest.fixture(scope="module")
def emu():
    with BybitEmulator() as emu:
        yield emu


@pytest.fixture
def venue(emu, request):
    """Fresh sub-accounts for CORE, TREND-1 and FUNDING (10,000 USDT each), prices of 2024-01-01."""
    emu.clear_faults()
    emu.set_prices_from_candles("2024-01-01")
    tag = f"{request.node.name[:20]}-{len(emu.accounts)}"
    clients = {}
    for sleeve in (CORE, T1, F):
        key = f"{tag}-{sleeve.value}"
        emu.add_account(key, "secret-" + key, usdt=10_000.0)
        clients[sleeve] = make_client(key, "secret-" + key, mode="live", url=emu.url)
        clients[sleeve].enableRateLimit = False
    return BybitExchange(clients)


def buy(sleeve, symbol, qty, key="k", **kw) -> OrderIntent:
    market = Market.PERP if symbol.endswith(":USDT") else Market.SPOT
    return OrderIntent(sleeve, symbol, market, kw.pop("side", Side.BUY), qty, OrderType.MARKET, "test", key, **kw)


def orders_at(emu, venue, sleeve) -> list[dict]:
    key = venue.clients[sleeve].apiKey
    return list(emu.account(key).orders.values())


def test_a_market_buy_fills_at_the_venue_and_comes_back_as_our_fill_and_book(emu, venue):
    cid = client_order_id("daily-close", NOW, CORE, "tranche1:BTC")
    order = venue.place_order(cid, buy(CORE, "BTC/USDT", 0.1), NOW)
    assert order.client_order_id == cid and order.status == OrderStatus.FILLED and order.filled_qty == 0.1
    assert venue.fetch_order(cid, CORE).exchange_order_id == order.exchange_order_id
    [(seq, kind, fill)] = venue.journal_since(0)
    assert kind == "fill" and fill.client_order_id == cid and fill.sleeve == CORE
    assert (fill.qty, fill.price) == (0.1, 44179.55) and fill.fee == pytest.approx(0.0001) and fill.fee_asset == "BTC"
    assert venue.journal_since(seq) == []
    book = venue.books[CORE]
    assert book.holdings["BTC"] == pytest.approx(0.0999) and book.cash == pytest.approx(10_000 - 4417.955)


def test_an_order_accepted_but_its_answer_lost_is_found_by_its_id_and_never_sent_twice(emu, venue):
    cid = client_order_id("daily-close", NOW, CORE, "tranche1:ETH")
    emu.fault("/v5/order/create", drop_after_accept=True)
    order = venue.place_order(cid, buy(CORE, "ETH/USDT", 1.0), NOW)        # no exception: resolved by id
    assert order.client_order_id == cid and order.status == OrderStatus.FILLED
    # the executor's retry looks it up first and sends nothing
    result = execute([buy(CORE, "ETH/USDT", 1.0, key="tranche1:ETH")], venue, flow="daily-close",
                     scheduled=NOW, now=NOW, known={})
    assert result.sent == 0 and [e.kind for e in result.events] == ["order_recovered"]
    assert len(orders_at(emu, venue, CORE)) == 1


def test_a_reused_id_is_resolved_to_the_order_bybit_holds(emu, venue):
    cid = client_order_id("daily-close", NOW, T1, "entry:BTC")
    venue.set_leverage(T1, "BTC/USDT:USDT", 2.0)
    first = venue.place_order(cid, buy(T1, "BTC/USDT:USDT", 0.01, leverage=2.0), NOW)
    again = venue.place_order(cid, buy(T1, "BTC/USDT:USDT", 0.01, leverage=2.0), NOW)   # Bybit: 110072
    assert again.exchange_order_id == first.exchange_order_id and len(orders_at(emu, venue, T1)) == 1


def test_a_plan_this_run_just_stored_is_sent_without_lookups_and_a_recovered_one_is_looked_up(emu, venue):
    """A fresh plan's market order costs two requests (the create, one read back in the order
    history); a plan read back after a crash looks each id up first (open orders, history)."""
    def cost(fresh: bool, key: str) -> dict[str, int]:
        before = dict(emu.counts)
        result = execute([buy(CORE, "BTC/USDT", 0.01, key=f"{key}:BTC"), buy(CORE, "ETH/USDT", 0.1, key=f"{key}:ETH")],
                         venue, flow="daily-close", scheduled=NOW, now=NOW, known={}, fresh=fresh)
        assert result.sent == 2 and [(o.status, o.filled_qty) for o in result.orders] == [
            (OrderStatus.FILLED, 0.01), (OrderStatus.FILLED, 0.1)]
        return {p: emu.counts[p] - before.get(p, 0) for p in ("/v5/order/create", "/v5/order/realtime",
                                                                  "/v5/order/history")}

    assert cost(True, "fresh") == {"/v5/order/create": 2, "/v5/order/realtime": 0, "/v5/order/history": 2}
    assert cost(False, "recovered") == {"/v5/order/create": 2, "/v5/order/realtime": 2, "/v5/order/history": 4}


def test_a_fresh_plan_whose_id_bybit_already_holds_is_resolved_not_sent_twice(emu, venue):
    """The backstop of sending without a lookup: Bybit refuses a reused orderLinkId (170141 on
    spot) and the send resolves it to the order Bybit holds."""
    cid = client_order_id("daily-close", NOW, CORE, "tranche1:BTC")
    first = venue.place_order(cid, buy(CORE, "BTC/USDT", 0.1), NOW)
    result = execute([buy(CORE, "BTC/USDT", 0.1, key="tranche1:BTC")], venue, flow="daily-close",
                     scheduled=NOW, now=NOW, known={}, fresh=True)
    assert [o.exchange_order_id for o in result.orders] == [first.exchange_order_id]
    assert len(orders_at(emu, venue, CORE)) == 1
    assert venue.books[CORE].holdings["BTC"] == pytest.approx(0.0999)


def test_a_5xx_before_acceptance_is_an_error_to_retry_and_the_retry_sends_it_once(emu, venue):
    cid = client_order_id("daily-close", NOW, CORE, "tranche1:BTC")
    emu.fault("/v5/order/create", status=503)
    with pytest.raises(ExchangeError, match="no order under its id: it was not placed"):
        venue.place_order(cid, buy(CORE, "BTC/USDT", 0.01), NOW)
    assert orders_at(emu, venue, CORE) == []
    result = execute([buy(CORE, "BTC/USDT", 0.01, key="tranche1:BTC")], venue, flow="daily-close",
                     scheduled=NOW, now=NOW, known={})
    assert result.sent == 1 and len(orders_at(emu, venue, CORE)) == 1


def test_a_200_that_is_not_json_is_resolved_by_id(emu, venue):
    cid = client_order_id("daily-close", NOW, CORE, "x")
    emu.fault("/v5/order/create", status=200, body="<html>gateway</html>")
    with pytest.raises(ExchangeError, match="unreadable answer and no order under its id"):
        venue.place_order(cid, buy(CORE, "BTC/USDT", 0.01), NOW)


def test_the_slippage_guard_refuses_a_market_order_half_a_percent_off_the_decision(emu, venue):
    venue.use_decision_prices({"BTC/USDT": 44179.55 / 1.006})
    with pytest.raises(OrderRefused, match=r"slippage guard: BTC/USDT best ask 44179.55 is \+0.60%"):
        venue.place_order(client_order_id("daily-close", NOW, CORE, "g"), buy(CORE, "BTC/USDT", 0.01), NOW)
    venue.use_decision_prices({"BTC/USDT": 44179.55 / 1.004})
    assert venue.place_order(client_order_id("daily-close", NOW, CORE, "h"), buy(CORE, "BTC/USDT", 0.01),
                             NOW).status == OrderStatus.FILLED


def test_a_perp_short_its_stop_at_the_venue_and_funding_come_back_through_the_journal(emu, venue):
    venue.set_leverage(F, "BTC/USDT:USDT", 1.0)
    cid = client_order_id("funding", NOW, F, "entry:BTC:perp")
    venue.place_order(cid, buy(F, "BTC/USDT:USDT", 0.05, side=Side.SELL, leverage=1.0), NOW)
    book = venue.books[F]
    pos = book.perps["BTC/USDT:USDT"]
    assert pos.qty == -0.05 and pos.entry_price == 44230.2 and pos.margin == pytest.approx(0.05 * 44230.2)   # perp close
    emu.settle_funding("BTCUSDT", 0.0001)                     # a short receives a positive rate
    funding = [item for _, kind, item in venue.journal_since(0) if kind == "funding"]
    assert len(funding) == 1 and funding[0].amount == pytest.approx(0.05 * 44230.2 * 0.0001, rel=1e-6)
    venue.set_stop(F, "BTC/USDT:USDT", StopLevel(46_000.0, "hard_stop"))
    emu.set_price("BTCUSDT", 46_500.0, category="linear")      # crosses the stop: the venue closes it
    fills = [item for _, kind, item in venue.journal_since(0) if kind == "fill"]
    assert [f.reason for f in fills] == ["", "hard_stop"] and fills[1].side == Side.BUY
    assert "BTC/USDT:USDT" not in venue.books[F].perps
    # the next run's process never set that stop: Bybit's stopOrderType still names the fill a
    # stop loss (the 500-run chaos halted TREND sleeves on "a fill that belongs to no order of ours")
    venue.stops.clear()
    again = [item for _, kind, item in venue.journal_since(0) if kind == "fill"]
    assert [f.reason for f in again] == ["", "hard_stop"]


def test_a_perp_fill_booked_by_a_later_run_carries_the_leverage_bybit_holds(emu, venue):
    """TREND-1's 2x entry sent by one run and booked by the next (a run killed after its order, or
    a retry: a new process, a new adapter): its margin is the venue's (notional / 2), not the whole
    notional (the 500-run chaos halted TREND-1: ledger cash 12,651.79, Bybit 13,825.25)."""
    venue.set_leverage(T1, "BTC/USDT:USDT", 2.0)
    cid = client_order_id("daily-close", NOW, T1, "entry:BTC")
    venue.place_order(cid, buy(T1, "BTC/USDT:USDT", 0.1, leverage=2.0), NOW)
    later = BybitExchange(venue.clients)                   # the next run's adapter: it set no leverage
    [(_, _, fill)] = later.journal_since(0)
    assert fill.leverage == 2.0
    from eternal.driver import book_differences
    from eternal.ledger import apply_fill
    from eternal.models import SleeveBook

    ours = SleeveBook(T1, 10_000.0)
    apply_fill(ours, fill)
    assert ours.perps["BTC/USDT:USDT"].margin == pytest.approx(0.1 * 44230.2 / 2)
    assert book_differences(ours, later.books[T1]) == []


def test_a_stop_set_while_flat_goes_out_with_the_entry_as_its_stop_loss(emu, venue):
    """Bybit answers 10001 "can not set tp/sl/ts for zero position" to a trading stop while flat.
    That is not a failure (a stored plan whose position a stop closed since must not fail every
    later run): the level waits for the entry, which carries it as `stopLoss`. TREND-1's long
    0.5 ETH at 2,352.04 then holds the stop 2,200 from its fill, and a fall to 2,190 closes it at
    the venue (a "CreateByStopLoss" order) before any trading stop was set."""
    venue.set_stop(T1, "ETH/USDT:USDT", StopLevel(2_200.0, "hard_stop"))
    assert venue.stops[(T1, "ETH/USDT:USDT")] == StopLevel(2_200.0, "hard_stop")
    venue.set_leverage(T1, "ETH/USDT:USDT", 2.0)
    cid = client_order_id("daily-close", NOW, T1, "entry:ETH")
    venue.place_order(cid, buy(T1, "ETH/USDT:USDT", 0.5, leverage=2.0), NOW)
    account = emu.account(venue.clients[T1].apiKey)
    assert account.positions["ETHUSDT"].size == 0.5 and account.positions["ETHUSDT"].stop_loss == 2_200.0
    emu.set_price("ETHUSDT", 2_190.0, category="linear")
    assert account.positions["ETHUSDT"].size == 0.0
    [stop] = [o for o in orders_at(emu, venue, T1) if o.create_type == "CreateByStopLoss"]
    assert stop.side == "Sell" and stop.qty == 0.5 and stop.status == "Filled"


def test_an_entry_whose_stop_loss_is_on_the_wrong_side_is_refused(emu, venue):
    """Bybit refuses a long whose stopLoss is above the price (10001): the order is not sent twice
    and no position opens."""
    venue.set_stop(T1, "ETH/USDT:USDT", StopLevel(2_500.0, "hard_stop"))
    venue.set_leverage(T1, "ETH/USDT:USDT", 2.0)
    with pytest.raises(OrderRefused, match="StopLoss"):
        venue.place_order("t1-wrong-side", buy(T1, "ETH/USDT:USDT", 0.5, leverage=2.0), NOW)
    assert emu.account(venue.clients[T1].apiKey).positions.get("ETHUSDT") is None or \
        emu.account(venue.clients[T1].apiKey).positions["ETHUSDT"].size == 0.0


def test_withdrawals_suspended_are_read_from_fetch_currencies(emu, venue):
    assert venue.withdrawals_suspended() == []
    emu.suspend_withdrawals("USDT")
    try:
        assert venue.withdrawals_suspended() == ["USDT"]
    finally:
        emu.suspend_withdrawals("USDT", False)


def test_the_predicted_funding_rate_is_the_tickers(emu, venue):
    emu.set_funding_rate("BTCUSDT", 0.000137)
    assert venue.predicted_funding_rate("BTC/USDT:USDT") == pytest.approx(0.000137)


def test_the_journal_pages_past_bybits_limits_and_walks_its_seven_day_windows(emu, venue):
    """Bybit answers at most 100 executions and 50 transaction-log rows a request, newest first,
    over at most 7 days. 120 CORE buys (one a second) and 60 settlements of TREND-1's perp (one a
    minute) on 2024-01-02 come back complete, oldest first; after nine quiet days one more buy is
    found from the last cursor (a single 7-day window from it would hold nothing)."""
    from datetime import timedelta

    start = datetime(2024, 1, 2, 1, tzinfo=UTC)
    try:
        for n in range(120):
            emu.now = start + timedelta(seconds=n)
            venue.place_order(f"co-page-{n:03d}", buy(CORE, "BTC/USDT", 0.001, key=f"p{n}"), NOW)
        emu.now = start + timedelta(minutes=3)
        venue.set_leverage(T1, "BTC/USDT:USDT", 1.0)
        venue.place_order("t1-page-entry", buy(T1, "BTC/USDT:USDT", 0.01), NOW)
        for n in range(60):
            emu.now = start + timedelta(minutes=4 + n)
            emu.settle_funding("BTCUSDT", 0.0001)
        emu.now = start + timedelta(hours=2)
        journal = venue.journal_since(0)
        fills = [x.client_order_id for _, k, x in journal if k == "fill" and x.sleeve == CORE]
        assert fills == [f"co-page-{n:03d}" for n in range(120)]
        assert sum(1 for _, k, x in journal if k == "funding" and x.sleeve == T1) == 60
        numbers = [n for n, _, _ in journal]
        assert numbers == sorted(set(numbers))
        emu.now = start + timedelta(days=9)
        venue.place_order("co-page-late", buy(CORE, "BTC/USDT", 0.001, key="late"), NOW)
        emu.now = start + timedelta(days=9, hours=1)
        later = venue.journal_since(numbers[-1])
        assert [x.client_order_id for _, k, x in later if k == "fill"] == ["co-page-late"]
    finally:
        emu.now = None
