"""Only orders Bybit would accept (issue 11): quantities on the step, nothing under a minimum.

The rules are Bybit's instruments-info as ccxt exposes it (ccxt's static Bybit markets); the
driver rounds every intent down to the step and drops one under a minimum with an event, and the
paper exchange refuses whatever would still slip through.
"""
from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from eternal.config import Settings
from eternal.exchange.base import OrderRefused
from eternal.exchange.paper import FillPolicy, PaperExchange
from eternal.execution import execute
from eternal.instruments import apply_rules, default, instruments_from_ccxt_markets, tradable_qty
from eternal.models import (
    Market,
    OrderIntent,
    OrderStatus,
    OrderType,
    Quote,
    Side,
    Sleeve,
    SleeveBook,
    utc,
)

FIXTURE = Path(__file__).parent / "fixtures" / "ccxt_bybit_markets.json"
T0 = utc("2024-01-01")
F, C = Sleeve.FUNDING, Sleeve.CORE


def intent(symbol: str, qty: float, side=Side.BUY, sleeve=F, **kw) -> OrderIntent:
    market = Market.PERP if symbol.endswith(":USDT") else Market.SPOT
    return OrderIntent(sleeve, symbol, market, side, qty, OrderType.MARKET, "test", f"k:{symbol}:{qty}", **kw)


# --- the table: Bybit's values, as ccxt gives them -------------------------------------------------

def test_the_packaged_table_holds_bybits_values_quoted_in_the_issue():
    t = default()
    rows = {s: (i.qty_step, i.min_qty, i.min_notional, i.price_tick) for s, i in t.items()}
    assert rows["BTC/USDT"] == (0.000001, 0.000011, 5.0, 0.1)
    assert rows["ETH/USDT"] == (0.00001, 0.00029, 5.0, 0.01)
    assert rows["BTC/USDT:USDT"] == (0.001, 0.001, 5.0, 0.1)
    assert rows["ETH/USDT:USDT"] == (0.01, 0.01, 5.0, 0.01)
    assert {"SOL/USDT", "SOL/USDT:USDT"} <= set(t)
    assert t["BTC/USDT:USDT"].max_leverage == 100.0 and t["BTC/USDT"].max_leverage is None


def test_the_table_is_what_ccxt_load_markets_gives_for_bybit():
    markets = json.loads(FIXTURE.read_text())       # an excerpt of ccxt's static Bybit markets
    built = instruments_from_ccxt_markets(markets, ["BTC/USDT", "ETH/USDT", "BTC/USDT:USDT", "ETH/USDT:USDT"])
    assert built == {s: default()[s] for s in built}
    # a perp's minimum notional is Bybit's minNotionalValue (ccxt leaves limits.cost.min empty)
    assert markets["BTC/USDT:USDT"]["limits"]["cost"]["min"] is None and built["BTC/USDT:USDT"].min_notional == 5
    with pytest.raises(KeyError, match="SOL/USDT"):
        instruments_from_ccxt_markets(markets, ["SOL/USDT"])


# --- the rules ------------------------------------------------------------------------------------

@pytest.mark.parametrize("symbol, qty, price, expected", [
    ("BTC/USDT", 0.0001829, 90_000.0, 0.000182),          # down to 0.000001 BTC
    ("BTC/USDT", 0.0000109, 90_000.0, 0.0),               # under 0.000011 BTC
    ("BTC/USDT", 0.00005, 90_000.0, 0.0),                 # 4.50 USDT < 5 USDT
    ("BTC/USDT", 0.000056, 90_000.0, 0.000056),           # 5.04 USDT
    ("ETH/USDT", 0.000289999, 3_000.0, 0.0),              # 0.00028 < 0.00029 ETH
    ("ETH/USDT", 0.0016789, 3_000.0, 0.00167),            # 5.01 USDT
    ("BTC/USDT:USDT", 0.000182, 90_000.0, 0.0),           # FUNDING's old compounding add: under 0.001
    ("BTC/USDT:USDT", 0.0439, 90_000.0, 0.043),
    ("ETH/USDT:USDT", 1.2345, 3_000.0, 1.23),
    ("ETH/USDT:USDT", 0.3 - 0.1, 3_000.0, 0.2),           # 0.19999999999999998: float noise is on the step
    ("SOL/USDT:USDT", 0.4, 10.0, 0.0),                    # 4 USDT < 5 USDT
])
def test_quantities_round_down_to_the_step_and_under_a_minimum_are_not_tradable(symbol, qty, price, expected):
    assert tradable_qty(symbol, qty, price) == expected


def test_the_driver_rules_round_keep_and_drop_with_an_event_naming_rule_and_numbers():
    intents = [intent("BTC/USDT", 0.0001829), intent("BTC/USDT:USDT", 0.000182, Side.SELL),
               intent("ETH/USDT", 0.001, Side.SELL)]
    kept, events = apply_rules(intents, {"BTC/USDT": 90_000.0, "BTC/USDT:USDT": 90_000.0, "ETH/USDT": 3_000.0}, T0)
    assert [(i.symbol, i.qty) for i in kept] == [("BTC/USDT", 0.000182)]
    assert kept[0].key == intents[0].key                       # same client order id as before rounding
    msgs = {e.data["symbol"]: e.message for e in events}
    assert all(e.kind == "order_below_minimum" for e in events)
    assert "rounds down to 0 at the step 0.001" in msgs["BTC/USDT:USDT"]
    assert "notional 3.0000 USDT (0.001 x 3000) is under the minimum 5 USDT" in msgs["ETH/USDT"]


def test_a_limit_order_is_judged_at_its_limit_price():
    limit = OrderIntent(C, "ETH/USDT", Market.SPOT, Side.BUY, 0.0017, OrderType.LIMIT, "t", "k", limit_price=2_900.0,
                        post_only=True)
    kept, events = apply_rules([limit], {"ETH/USDT": 3_100.0}, T0)     # 4.93 USDT at the limit
    assert not kept and "4.9300 USDT" in events[0].message


# --- the paper exchange refuses what Bybit refuses -------------------------------------------------

def paper(policy=FillPolicy.IMMEDIATE) -> PaperExchange:
    ex = PaperExchange(Settings().fees, policy, {F: SleeveBook(F, 10_000.0, {"BTC": 0.5})})
    ex.set_quotes({s: Quote(89_999.0, 90_001.0, 90_000.0) for s in ("BTC/USDT", "BTC/USDT:USDT")})
    return ex


@pytest.mark.parametrize("symbol, qty, why", [
    ("BTC/USDT:USDT", 0.0015, "not a multiple of the step 0.001"),
    ("BTC/USDT", 0.000001, "under the minimum quantity 1.1e-05"),
    ("BTC/USDT", 0.00005, "under the minimum 5 USDT"),
])
def test_the_paper_exchange_refuses_an_order_off_the_step_or_under_a_minimum(symbol, qty, why):
    ex = paper()
    with pytest.raises(OrderRefused, match=why):
        ex.place_order("cid-1", intent(symbol, qty, Side.SELL), T0)
    assert not ex.orders and ex.books[F].holdings["BTC"] == 0.5


def test_the_executor_records_a_refused_order_as_rejected_and_goes_on():
    ex = paper()
    res = execute([intent("BTC/USDT:USDT", 0.0015, Side.SELL), intent("BTC/USDT", 0.001, Side.SELL)], ex,
                  flow="t", scheduled=T0, now=T0, known={})
    assert [r.status for r in res.orders] == [OrderStatus.REJECTED, OrderStatus.FILLED]
    assert "step 0.001" in res.orders[0].error and res.events[0].kind == "order_rejected"


def test_a_buy_scaled_to_the_cash_is_rounded_down_to_the_step():
    ex = PaperExchange(Settings().fees, FillPolicy.IMMEDIATE, {F: SleeveBook(F, 1_000.0)})
    ex.set_quotes({"BTC/USDT": Quote(89_999.0, 90_001.0, 90_000.0)})
    order = ex.place_order("cid", intent("BTC/USDT", 0.02, scale_to_cash=True), T0)
    # 1,000 / 90,001 = 0.01111098... BTC (the fee is paid in BTC), down to 0.01111
    assert order.filled_qty == 0.01111 and ex.books[F].cash == pytest.approx(1_000 - 0.01111 * 90_001)


# --- the full four-engine backfill --------------------------------------------------------------

# `full_backfill`: tests/conftest.py (shared with the governance tests)


def test_the_full_backfill_sends_only_orders_bybit_would_accept(full_backfill):
    """Before the rules (2020-09-14..2026-01-01, 100,000 USDT, 1,000 USDT monthly): 1,466 fills, the
    smallest 1.9e-9 USDT (a 1.0e-12 ETH sell), 25 under 5 USDT, none on the step; final equity
    594,128.62. After: no fill under its minimum notional, every quantity on its step."""
    rules = default()
    trades = full_backfill.trades
    assert len(trades) > 1_000
    notional = trades.qty * trades.price
    under = trades[[n < rules[s].min_notional for s, n in zip(trades.symbol, notional)]]
    assert under.empty, under.head().to_string()
    off = [(s, q) for s, q in zip(trades.symbol, trades.qty)
           if abs(q / rules[s].qty_step - round(q / rules[s].qty_step)) > 1e-9]
    assert off == []
    assert all(q >= rules[s].min_qty for s, q in zip(trades.symbol, trades.qty))
    assert notional.min() > 5.0
    assert not [e for e in full_backfill.events if e.kind == "order_rejected"]
