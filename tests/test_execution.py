"""Idempotent execution: deterministic client order ids, each intent sent at most once."""
from __future__ import annotations

from datetime import timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eternal.config import FeeParams
from eternal.errors import DuplicateOrder
from eternal.exchange.paper import FillPolicy, PaperExchange
from eternal.execution import MAX_ID_LENGTH, client_order_id, execute
from eternal.models import (
    Market,
    OrderIntent,
    OrderRecord,
    OrderStatus,
    OrderType,
    Quote,
    Side,
    Sleeve,
    SleeveBook,
    utc,
)

# Hypothesis fixes its storage directory to the cwd at import time (the checkout), before the
# conftest chdirs into a tmp dir: keep its caches out of the repo.

FLOW = "daily-cycle"
SCHEDULED = utc("2024-01-12T00:05:00Z")     # decides on the 2024-01-11 close
NOW = SCHEDULED + timedelta(seconds=42)
BTC, ETH = "BTC/USDT", "ETH/USDT"


def buy(symbol: str, qty: float, key: str, sleeve: Sleeve = Sleeve.CORE) -> OrderIntent:
    return OrderIntent(sleeve, symbol, Market.SPOT, Side.BUY, qty, OrderType.MARKET, "test", key)


class CountingExchange:
    """The paper exchange, counting what is sent; optionally blind to its orders on the first look
    (a lagging order query) or losing the response of the first place_order."""

    def __init__(self, inner: PaperExchange, *, lagging_fetch: bool = False, lose_response: bool = False):
        self.inner, self.name = inner, inner.name
        self.placed: list[str] = []
        self.lagging_fetch, self.lose_response = lagging_fetch, lose_response

    def place_order(self, cid, intent, now):
        self.placed.append(cid)
        order = self.inner.place_order(cid, intent, now)
        if self.lose_response:
            self.lose_response = False
            raise TimeoutError(f"response to {cid} lost")
        return order

    def fetch_order(self, cid, sleeve=None):
        if self.lagging_fetch:
            return None
        return self.inner.fetch_order(cid, sleeve)

    def quote(self, symbol):
        return self.inner.quote(symbol)

    def stake(self, sleeve, asset, qty):
        return self.inner.stake(sleeve, asset, qty)


@pytest.fixture
def prices(dataset):
    """Closes of 2024-01-11: BTC 46,339.16, ETH 2,618.01 (bid = ask = close)."""
    btc = float(dataset.daily(BTC).loc["2024-01-11", "close"])
    eth = float(dataset.daily(ETH).loc["2024-01-11", "close"])
    assert (btc, eth) == (46339.16, 2618.01)
    return {BTC: Quote(btc, btc, btc), ETH: Quote(eth, eth, eth)}


def paper(prices, policy=FillPolicy.IMMEDIATE, core_cash=60_000.0) -> PaperExchange:
    ex = PaperExchange(FeeParams(), policy, {Sleeve.CORE: SleeveBook(Sleeve.CORE, core_cash),
                                             Sleeve.TREND_1: SleeveBook(Sleeve.TREND_1, 15_000.0)})
    ex.set_quotes(prices)
    return ex


PLAN = [buy(BTC, 0.5, "tranche-1-BTC"), buy(ETH, 5.0, "tranche-1-ETH"),
        buy(BTC, 0.1, "entry-BTC", Sleeve.TREND_1)]


# client order ids ------------------------------------------------------------------------------
def test_client_order_id_is_deterministic_36_characters_with_readable_sleeve_and_time():
    cid = client_order_id(FLOW, SCHEDULED, Sleeve.CORE, "tranche-1-BTC")
    assert cid == client_order_id(FLOW, SCHEDULED, Sleeve.CORE, "tranche-1-BTC")
    assert len(cid) == MAX_ID_LENGTH == 36
    assert cid.startswith("co2401120005-")
    # the same instant written in another zone is the same schedule, so the same id
    cet = SCHEDULED.astimezone(timezone(timedelta(hours=1)))
    assert client_order_id(FLOW, cet, Sleeve.CORE, "tranche-1-BTC") == cid


@pytest.mark.parametrize("changed", [
    {"flow": "quarterly-rebalance"},
    {"scheduled": SCHEDULED + timedelta(seconds=1)},     # same minute: differs in the hash, not the prefix
    {"scheduled": SCHEDULED + timedelta(days=1)},
    {"sleeve": Sleeve.TREND_1},
    {"intent_key": "tranche-1-ETH"},
])
def test_client_order_id_differs_when_flow_time_sleeve_or_intent_key_differ(changed):
    base = {"flow": FLOW, "scheduled": SCHEDULED, "sleeve": Sleeve.CORE, "intent_key": "tranche-1-BTC"}
    assert client_order_id(**{**base, **changed}) != client_order_id(**base)


def test_client_order_id_refuses_a_naive_scheduled_time():
    with pytest.raises(ValueError, match="naive"):
        client_order_id(FLOW, SCHEDULED.replace(tzinfo=None), Sleeve.CORE, "k")


aware_times = st.datetimes(timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=-7)),
                                                      timezone(timedelta(hours=5, minutes=30))]))


@settings(max_examples=300, deadline=None, database=None)
@given(flow=st.text(max_size=80), scheduled=aware_times, sleeve=st.sampled_from(list(Sleeve)),
       key=st.text(max_size=300), other_key=st.text(max_size=300))
def test_client_order_id_is_always_at_most_36_characters_and_deterministic(flow, scheduled, sleeve, key,
                                                                           other_key):
    cid = client_order_id(flow, scheduled, sleeve, key)
    assert len(cid) <= MAX_ID_LENGTH
    assert cid.isascii()                                   # Bybit's orderLinkId charset
    assert cid == client_order_id(flow, scheduled, sleeve, key)
    if other_key != key:
        assert client_order_id(flow, scheduled, sleeve, other_key) != cid


# sending ---------------------------------------------------------------------------------------
def test_execute_sends_each_intent_once(prices):
    ex = CountingExchange(paper(prices))
    result = execute(PLAN, ex, flow=FLOW, scheduled=SCHEDULED, now=NOW, known={})
    ids = [client_order_id(FLOW, SCHEDULED, i.sleeve, i.key) for i in PLAN]
    assert ex.placed == ids and result.sent == 3 and len(set(ids)) == 3
    assert [r.client_order_id for r in result.orders] == ids
    assert {r.status for r in result.orders} == {OrderStatus.FILLED}
    assert [(f.client_order_id, f.qty, f.price) for f in result.fills] == [
        (ids[0], 0.5, 46339.16), (ids[1], 5.0, 2618.01), (ids[2], 0.1, 46339.16)]
    assert result.events == []
    btc = result.orders[0]
    assert btc.avg_price == 46339.16 and btc.fee == pytest.approx(0.5 * 0.001, rel=1e-12)   # in BTC, as Bybit
    assert btc.exchange_order_id == "paper-1" and btc.created_at == NOW


def test_second_execute_with_the_returned_records_as_known_sends_nothing(prices):
    ex = CountingExchange(paper(prices))
    first = execute(PLAN, ex, flow=FLOW, scheduled=SCHEDULED, now=NOW, known={})
    books = {s: b.copy() for s, b in ex.inner.books.items()}
    known = {r.client_order_id: r for r in first.orders}
    again = execute(PLAN, ex, flow=FLOW, scheduled=SCHEDULED, now=NOW + timedelta(minutes=5), known=known)
    assert again.sent == 0 and len(ex.placed) == 3
    assert again.fills == [] and again.events == []
    assert again.orders == first.orders
    assert ex.inner.books == books


def test_second_execute_of_resting_orders_only_syncs_them(prices):
    ex = CountingExchange(paper(prices, FillPolicy.NEXT_OPEN))
    first = execute(PLAN, ex, flow=FLOW, scheduled=SCHEDULED, now=NOW, known={})
    assert {r.status for r in first.orders} == {OrderStatus.OPEN} and first.fills == []
    known = {r.client_order_id: r for r in first.orders}
    again = execute(PLAN, ex, flow=FLOW, scheduled=SCHEDULED, now=NOW, known=known)
    assert again.sent == 0 and len(ex.placed) == 3 and again.events == []


def test_a_new_schedule_sends_the_same_intents_again_under_new_ids(prices):
    ex = CountingExchange(paper(prices, core_cash=100_000.0))
    execute(PLAN[:1], ex, flow=FLOW, scheduled=SCHEDULED, now=NOW, known={})
    nxt = execute(PLAN[:1], ex, flow=FLOW, scheduled=SCHEDULED + timedelta(days=1), now=NOW, known={})
    assert nxt.sent == 1 and len(set(ex.placed)) == 2
    assert ex.inner.books[Sleeve.CORE].holdings["BTC"] == pytest.approx(2 * 0.5 * 0.999)   # 0.1 % fee in BTC


# recovery --------------------------------------------------------------------------------------
def test_order_accepted_by_the_exchange_but_unknown_to_our_ledger_is_adopted_not_resent(prices):
    ex = CountingExchange(paper(prices))
    cid = client_order_id(FLOW, SCHEDULED, Sleeve.CORE, "tranche-1-BTC")
    ex.inner.place_order(cid, PLAN[0], NOW)            # accepted; then we crashed before saving it
    result = execute(PLAN[:1], ex, flow=FLOW, scheduled=SCHEDULED, now=NOW, known={})
    assert ex.placed == [] and result.sent == 0
    (event,) = result.events
    assert (event.kind, event.level, event.data) == ("order_recovered", "warning", {"client_order_id": cid})
    (rec,) = result.orders
    assert (rec.status, rec.exchange_order_id, rec.filled_qty) == (OrderStatus.FILLED, "paper-1", 0.5)
    assert [f.client_order_id for f in result.fills] == [cid]     # its fill is booked once, now
    assert ex.inner.books[Sleeve.CORE].holdings == {"BTC": 0.5 * 0.999}


def test_order_submitted_before_a_crash_is_adopted_when_the_exchange_has_it(prices):
    ex = CountingExchange(paper(prices))
    cid = client_order_id(FLOW, SCHEDULED, Sleeve.CORE, "tranche-1-BTC")
    ex.inner.place_order(cid, PLAN[0], NOW)
    submitted = OrderRecord(cid, FLOW, SCHEDULED, PLAN[0], OrderStatus.SUBMITTED, created_at=NOW)
    result = execute(PLAN[:1], ex, flow=FLOW, scheduled=SCHEDULED, now=NOW, known={cid: submitted})
    assert ex.placed == [] and result.sent == 0
    assert result.orders == [submitted] and submitted.status == OrderStatus.FILLED


def test_duplicate_order_on_send_adopts_the_exchange_order(prices):
    # the order query lags: it misses an order the exchange already holds, so we send;
    # the exchange answers DuplicateOrder (Bybit 110072) and we adopt its order instead
    inner = paper(prices)
    cid = client_order_id(FLOW, SCHEDULED, Sleeve.CORE, "tranche-1-BTC")
    inner.place_order(cid, PLAN[0], NOW)
    ex = CountingExchange(inner, lagging_fetch=True)
    with pytest.raises(DuplicateOrder):                 # still invisible: nothing to adopt, so it propagates
        execute(PLAN[:1], ex, flow=FLOW, scheduled=SCHEDULED, now=NOW, known={})
    ex.lagging_fetch = False
    original_fetch = ex.fetch_order
    calls = []

    def fetch_once_blind(c, s=None):
        calls.append(c)
        return None if len(calls) == 1 else original_fetch(c, s)

    ex.fetch_order = fetch_once_blind
    result = execute(PLAN[:1], ex, flow=FLOW, scheduled=SCHEDULED, now=NOW, known={})
    assert result.sent == 0 and result.orders[0].status == OrderStatus.FILLED
    assert inner.books[Sleeve.CORE].holdings == {"BTC": 0.5 * 0.999}          # bought once, not twice


def test_lost_response_then_retry_places_the_order_once(prices):
    ex = CountingExchange(paper(prices), lose_response=True)
    with pytest.raises(TimeoutError):
        execute(PLAN[:1], ex, flow=FLOW, scheduled=SCHEDULED, now=NOW, known={})
    retry = execute(PLAN[:1], ex, flow=FLOW, scheduled=SCHEDULED, now=NOW, known={})
    assert len(ex.placed) == 1 and retry.sent == 0
    assert [e.kind for e in retry.events] == ["order_recovered"]
    assert ex.inner.books[Sleeve.CORE].holdings == {"BTC": 0.5 * 0.999}


def test_fills_are_never_double_counted_on_resync(prices, dataset):
    ex = CountingExchange(paper(prices, FillPolicy.NEXT_OPEN))
    first = execute(PLAN[:2], ex, flow=FLOW, scheduled=SCHEDULED, now=NOW, known={})
    known = {r.client_order_id: r for r in first.orders}
    opens = {s: float(dataset.daily(s).loc["2024-01-12", "open"]) for s in (BTC, ETH)}
    ex.inner.on_bar(utc("2024-01-12"), opens)          # both fill at the 2024-01-12 open

    trades: set[str] = set()
    synced = execute(PLAN[:2], ex, flow=FLOW, scheduled=SCHEDULED, now=NOW, known=known, known_trades=trades)
    assert [(f.qty, f.price) for f in synced.fills] == [(0.5, 46339.16), (5.0, 2618.01)]
    assert trades == {"paper-1-1", "paper-2-1"}
    # a later re-sync that still sees the orders as open (their status write was lost) but knows
    # the trade ids reports no fill again
    stale = {cid: OrderRecord(r.client_order_id, r.flow, r.scheduled, r.intent, OrderStatus.OPEN)
             for cid, r in known.items()}
    resynced = execute(PLAN[:2], ex, flow=FLOW, scheduled=SCHEDULED, now=NOW, known=stale,
                       known_trades=set(trades))
    assert resynced.fills == [] and resynced.sent == 0
    assert {r.status for r in resynced.orders} == {OrderStatus.FILLED}


# insufficient funds ----------------------------------------------------------------------------
def test_insufficient_funds_rejects_that_order_with_an_alert_and_the_plan_goes_on(prices):
    """A refusal for funds is final for its order; stopping the plan there left a stored plan that
    every later run failed on again (found by the Bybit chaos run: CORE's next tranche refused while
    its earlier tranches held the cash at the venue)."""
    ex = CountingExchange(paper(prices, core_cash=10_000.0))
    plan = [buy(BTC, 0.1, "a-small"), buy(BTC, 1.0, "b-too-big"), buy(ETH, 0.5, "c-after-it")]
    ids = [client_order_id(FLOW, SCHEDULED, Sleeve.CORE, i.key) for i in plan]
    result = execute(plan, ex, flow=FLOW, scheduled=SCHEDULED, now=NOW, known={})
    assert [r.client_order_id for r in result.orders] == ids
    placed, rejected, after = result.orders
    assert placed.status == after.status == OrderStatus.FILLED
    assert [f.client_order_id for f in result.fills] == [ids[0], ids[2]]
    assert rejected.status == OrderStatus.REJECTED and "needs 46339.16 USDT" in rejected.error
    assert rejected.updated_at == NOW and rejected.exchange_order_id is None
    (alert,) = result.events
    assert (alert.kind, alert.level, alert.sleeve) == ("insufficient_funds", "alert", Sleeve.CORE)
    assert alert.data == {"client_order_id": ids[1], "intent": "b-too-big"}
    assert result.sent == 2 and ex.placed == ids
    eth = [f for f in result.fills if f.client_order_id == ids[2]][0]
    # the buys' fees are in the coins bought: the cash pays the notionals alone
    assert ex.inner.books[Sleeve.CORE].cash == pytest.approx(10_000 - 0.1 * 46339.16 - 0.5 * eth.price, rel=1e-12)
