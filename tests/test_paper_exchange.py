"""The paper exchange's fill rules, on real Binance prices from ../shared/data."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from eternal import ledger
from eternal.config import FeeParams
from eternal.errors import DuplicateOrder, ExchangeError, InsufficientFunds
from eternal.exchange.paper import FillPolicy, PaperExchange
from eternal.instruments import default as trading_rules
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

# Hypothesis fixes its storage directory to the cwd at import time (the checkout), before the
# conftest chdirs into a tmp dir: keep its caches out of the repo.

BTC, ETH = "BTC/USDT", "ETH/USDT"
RULES = trading_rules()     # Bybit's quantity steps and minimums: the paper exchange refuses the rest
NOW = utc("2021-11-11T00:05:00Z")
# maker and taker apart, so a test can tell which one was charged
SPLIT_FEES = FeeParams(spot_maker=0.0002, spot_taker=0.00055)


def intent(side: Side, qty: float, symbol: str = BTC, *, sleeve: Sleeve = Sleeve.CORE,
           limit: float | None = None, key: str = "k", scale_to_cash: bool = False) -> OrderIntent:
    return OrderIntent(sleeve, symbol, Market.SPOT, side, qty,
                       OrderType.LIMIT if limit else OrderType.MARKET, "test", key,
                       limit_price=limit, post_only=limit is not None, scale_to_cash=scale_to_cash)


def close(dataset, symbol: str, day: str) -> float:
    return float(dataset.daily(symbol).loc[day, "close"])


def open_(dataset, symbol: str, day: str) -> float:
    return float(dataset.daily(symbol).loc[day, "open"])


def exchange(fees: FeeParams = FeeParams(), policy: FillPolicy = FillPolicy.IMMEDIATE,
             **books: SleeveBook) -> PaperExchange:
    return PaperExchange(fees, policy, {Sleeve(k.replace("_", "-")): b for k, b in books.items()})


@pytest.fixture
def ath_quotes(dataset):
    """BTC and ETH on 2021-11-10 (the BTC all-time-high day), a one-cent spread above the close."""
    btc, eth = close(dataset, BTC, "2021-11-10"), close(dataset, ETH, "2021-11-10")
    assert (btc, eth) == (64882.43, 4628.78)
    return {BTC: Quote(bid=btc, ask=btc + 0.01, last=btc), ETH: Quote(bid=eth, ask=eth + 0.01, last=eth)}


# fees --------------------------------------------------------------------------------------------
def test_default_spot_fee_is_ten_basis_points_maker_and_taker():
    fees = FeeParams()
    assert (fees.spot_maker, fees.spot_taker) == (0.001, 0.001)


def test_spot_fees_are_configurable_and_the_taker_rate_is_charged_on_a_market_buy(ath_quotes):
    ex = exchange(FeeParams(spot_maker=0.0, spot_taker=0.0006), core=SleeveBook(Sleeve.CORE, 100_000.0))
    ex.set_quotes(ath_quotes)
    order = ex.place_order("fee-1", intent(Side.BUY, 1.0), NOW)
    assert order.fee == pytest.approx(1.0 * 0.0006, rel=1e-12)           # 0.0006 BTC: a buy's fee is in the coin
    assert order.fills[0].fee_asset == "BTC"


# IMMEDIATE -------------------------------------------------------------------------------------
def test_immediate_market_buy_fills_at_the_ask_with_the_taker_fee(ath_quotes):
    ex = exchange(SPLIT_FEES, core=SleeveBook(Sleeve.CORE, 100_000.0))
    ex.set_quotes(ath_quotes)
    order = ex.place_order("mkt-buy", intent(Side.BUY, 0.5), NOW)
    (fill,) = order.fills
    assert order.status == OrderStatus.FILLED and order.filled_qty == 0.5
    assert (fill.price, fill.liquidity) == (64882.44, "taker")              # the ask, not the close
    assert (fill.fee, fill.fee_asset) == (pytest.approx(0.5 * 0.00055, rel=1e-12), "BTC")   # in the coin bought
    book = ex.books[Sleeve.CORE]
    assert book.cash == pytest.approx(100_000 - 0.5 * 64882.44, rel=1e-12)
    assert book.holdings == {"BTC": pytest.approx(0.5 * (1 - 0.00055), rel=1e-15)}


def test_immediate_market_sell_fills_at_the_bid_with_the_taker_fee(ath_quotes):
    ex = exchange(SPLIT_FEES, core=SleeveBook(Sleeve.CORE, 0.0, {"BTC": 2.0}))
    ex.set_quotes(ath_quotes)
    (fill,) = ex.place_order("mkt-sell", intent(Side.SELL, 2.0), NOW).fills
    assert (fill.price, fill.liquidity) == (64882.43, "taker")
    assert ex.books[Sleeve.CORE].cash == pytest.approx(2 * 64882.43 * (1 - 0.00055), rel=1e-12)
    assert ex.books[Sleeve.CORE].holdings == {"BTC": 0.0}


def test_immediate_post_only_limit_fills_at_its_limit_price_with_the_maker_fee(ath_quotes):
    ex = exchange(SPLIT_FEES, core=SleeveBook(Sleeve.CORE, 100_000.0))
    ex.set_quotes(ath_quotes)
    # ETH at the 2021-11-10 bid 4628.78, the way CORE-HODL places its tranches
    (fill,) = ex.place_order("lmt-buy", intent(Side.BUY, 3.0, ETH, limit=4628.78), NOW).fills
    assert (fill.price, fill.liquidity) == (4628.78, "maker")
    assert (fill.fee, fill.fee_asset) == (pytest.approx(3 * 0.0002, rel=1e-12), "ETH")   # 0.0006 ETH
    assert ex.books[Sleeve.CORE].cash == pytest.approx(100_000 - 3 * 4628.78, rel=1e-12)
    assert ex.books[Sleeve.CORE].holdings == {"ETH": pytest.approx(3 * (1 - 0.0002), rel=1e-15)}


def test_immediate_order_without_a_price_is_refused_and_not_recorded():
    ex = exchange(core=SleeveBook(Sleeve.CORE, 100_000.0))
    with pytest.raises(ExchangeError, match="no price for BTC/USDT"):
        ex.place_order("no-quote", intent(Side.BUY, 0.1), NOW)
    assert ex.fetch_order("no-quote") is None and ex.books[Sleeve.CORE].cash == 100_000.0


# NEXT_OPEN -------------------------------------------------------------------------------------
def test_next_open_orders_rest_open_until_on_bar_then_fill_at_that_open(dataset):
    # decided on the 2024-01-11 close (BTC 46339.16), filled at the 2024-01-12 open
    btc_open = open_(dataset, BTC, "2024-01-12")
    eth_open = open_(dataset, ETH, "2024-01-12")
    assert (btc_open, eth_open) == (46339.16, 2618.01)
    ex = exchange(SPLIT_FEES, FillPolicy.NEXT_OPEN, core=SleeveBook(Sleeve.CORE, 100_000.0))
    limit = ex.place_order("lmt", intent(Side.BUY, 0.5, limit=close(dataset, BTC, "2024-01-11")), NOW)
    market = ex.place_order("mkt", intent(Side.BUY, 4.0, ETH), NOW)
    assert {o.status for o in (limit, market)} == {OrderStatus.OPEN}
    assert ex.books[Sleeve.CORE].cash == 100_000.0 and not limit.fills and not market.fills
    assert ex.open_orders() == [limit, market]

    changed = ex.on_bar(utc("2024-01-12"), {BTC: btc_open, ETH: eth_open})

    assert changed == [limit, market] and ex.open_orders() == []
    (lf,), (mf,) = limit.fills, market.fills
    assert (lf.price, lf.liquidity, lf.ts) == (46339.16, "maker", utc("2024-01-12"))   # the open, not the limit
    assert (mf.price, mf.liquidity) == (2618.01, "taker")
    assert lf.fee == pytest.approx(0.5 * 0.0002, rel=1e-12)                  # BTC
    assert mf.fee == pytest.approx(4.0 * 0.00055, rel=1e-12)                 # ETH
    assert ex.books[Sleeve.CORE].cash == pytest.approx(100_000 - 0.5 * 46339.16 - 4.0 * 2618.01, rel=1e-12)
    assert ex.books[Sleeve.CORE].holdings == {"BTC": pytest.approx(0.5 * 0.9998), "ETH": pytest.approx(4 * 0.99945)}


def test_next_open_order_keeps_resting_while_its_symbol_has_no_open(dataset):
    ex = exchange(policy=FillPolicy.NEXT_OPEN, core=SleeveBook(Sleeve.CORE, 100_000.0))
    order = ex.place_order("eth", intent(Side.BUY, 1.0, ETH), NOW)
    assert ex.on_bar(utc("2024-01-12"), {BTC: open_(dataset, BTC, "2024-01-12")}) == []
    assert order.status == OrderStatus.OPEN and ex.books[Sleeve.CORE].cash == 100_000.0


def test_next_open_sells_fill_before_buys_so_a_sale_funds_a_purchase(dataset):
    btc_open, eth_open = open_(dataset, BTC, "2024-01-12"), open_(dataset, ETH, "2024-01-12")
    ex = exchange(policy=FillPolicy.NEXT_OPEN, core=SleeveBook(Sleeve.CORE, 0.0, {"BTC": 1.0}))
    # the buy is placed first, and only the sale's proceeds (46,292.82 USDT) can pay for it
    buy = ex.place_order("buy-eth", intent(Side.BUY, 17.0, ETH), NOW)          # 44,506.17 USDT
    sell = ex.place_order("sell-btc", intent(Side.SELL, 1.0), NOW)
    changed = ex.on_bar(utc("2024-01-12"), {BTC: btc_open, ETH: eth_open})
    assert changed == [sell, buy]
    assert buy.status == sell.status == OrderStatus.FILLED
    book = ex.books[Sleeve.CORE]
    assert book.holdings == {"BTC": 0.0, "ETH": pytest.approx(17.0 * 0.999, rel=1e-15)}   # the fee in ETH
    assert book.cash == pytest.approx(46339.16 * 0.999 - 17 * 2618.01, rel=1e-12)   # 1,786.30


# funds -----------------------------------------------------------------------------------------
def test_buy_the_cash_cannot_cover_raises_insufficient_funds_and_changes_nothing(ath_quotes):
    ex = exchange(core=SleeveBook(Sleeve.CORE, 60_000.0))
    ex.set_quotes(ath_quotes)
    with pytest.raises(InsufficientFunds, match="needs 64882.44 USDT, has 60000.00"):
        ex.place_order("too-big", intent(Side.BUY, 1.0), NOW)
    assert ex.books[Sleeve.CORE] == SleeveBook(Sleeve.CORE, 60_000.0)
    assert ex.fetch_order("too-big") is None            # nothing recorded: the id may be used again


def test_next_open_buy_the_cash_cannot_cover_is_rejected_at_the_bar(dataset):
    ex = exchange(policy=FillPolicy.NEXT_OPEN, core=SleeveBook(Sleeve.CORE, 40_000.0))
    order = ex.place_order("too-big", intent(Side.BUY, 1.0), NOW)
    assert ex.on_bar(utc("2024-01-12"), {BTC: open_(dataset, BTC, "2024-01-12")}) == [order]
    assert order.status == OrderStatus.REJECTED and "cannot buy" in order.error
    assert ex.books[Sleeve.CORE] == SleeveBook(Sleeve.CORE, 40_000.0)


def test_scale_to_cash_buys_the_whole_steps_whose_notional_the_cash_covers(ath_quotes):
    ex = exchange(core=SleeveBook(Sleeve.CORE, 60_000.0))
    ex.set_quotes(ath_quotes)
    order = ex.place_order("scaled", intent(Side.BUY, 1.0, scale_to_cash=True), NOW)
    (fill,) = order.fills
    # 60,000 / 64,882.44 = 0.9247494... BTC, down to the 0.000001 BTC step: the fee is paid in BTC
    assert fill.qty == RULES[BTC].floor_qty(60_000 / 64882.44) == 0.924749
    assert (fill.fee, fill.fee_asset) == (pytest.approx(0.924749 * 0.001, rel=1e-12), "BTC")
    left = ex.books[Sleeve.CORE].cash
    assert left == pytest.approx(60_000.0 - fill.qty * fill.price, abs=1e-9)
    assert 0.0 <= left < RULES[BTC].qty_step * 64882.44             # less than one more step would cost
    assert ex.books[Sleeve.CORE].holdings == {"BTC": pytest.approx(0.924749 * 0.999, rel=1e-15)}


@settings(max_examples=300, deadline=None, database=None)
@given(cash=st.floats(1.0, 1e8), price=st.floats(0.01, 1e6), rate=st.floats(0.0, 0.01),
       over=st.floats(1.001, 100.0))
def test_scale_to_cash_never_leaves_the_cash_negative(cash, price, rate, over):
    rules = RULES[BTC]
    ex = exchange(FeeParams(spot_maker=rate, spot_taker=rate), core=SleeveBook(Sleeve.CORE, cash))
    ex.set_quotes({BTC: Quote(price, price, price)})
    # at most the 21 million BTC there will ever be (beyond, a step is under a float's resolution)
    assume(cash / price <= 21e6)
    wanted = rules.floor_qty(over * cash / price)       # as the driver sends it: on the step
    assume(wanted > 0 and rules.violation(wanted, price) is None)
    affordable = rules.floor_qty(cash / price)          # the fee is paid in the coin: the notional alone
    if affordable <= 0 or rules.violation(affordable, price) is not None:
        # the cash covers no valid order: refused like Bybit, nothing changes
        with pytest.raises(InsufficientFunds):
            ex.place_order("scaled", intent(Side.BUY, wanted, scale_to_cash=True), NOW)
        assert ex.books[Sleeve.CORE] == SleeveBook(Sleeve.CORE, cash)
        return
    (fill,) = ex.place_order("scaled", intent(Side.BUY, wanted, scale_to_cash=True), NOW).fills
    # the whole steps whose notional the cash covers (an exact fit may lose one step to float rounding)
    assert rules.on_step(fill.qty) and affordable - rules.qty_step * 1.000001 <= fill.qty <= affordable
    assert fill.qty * fill.price <= cash
    assert ex.books[Sleeve.CORE].cash >= 0.0
    assert ex.books[Sleeve.CORE].cash < rules.qty_step * price + 1e-9 * cash   # under one more step
    assert fill.fee == pytest.approx(fill.qty * rate, rel=1e-12) and fill.fee_asset == "BTC"


def test_selling_more_than_held_is_refused(ath_quotes):
    ex = exchange(core=SleeveBook(Sleeve.CORE, 0.0, {"BTC": 0.25}, {"BTC": 1.0}))
    ex.set_quotes(ath_quotes)
    # 1.25 BTC in all, but 1 BTC is staked: only the free 0.25 can be sold
    with pytest.raises(InsufficientFunds, match="cannot sell 0.3 BTC/USDT: holds 0.25 free"):
        ex.place_order("oversell", intent(Side.SELL, 0.3), NOW)
    assert ex.books[Sleeve.CORE] == SleeveBook(Sleeve.CORE, 0.0, {"BTC": 0.25}, {"BTC": 1.0})


def test_reused_client_order_id_raises_duplicate_order_like_bybit_110072(ath_quotes):
    ex = exchange(core=SleeveBook(Sleeve.CORE, 100_000.0), trend_1=SleeveBook(Sleeve.TREND_1, 15_000.0))
    ex.set_quotes(ath_quotes)
    first = ex.place_order("co2111110005-abc", intent(Side.BUY, 0.1), NOW)
    cash = ex.books[Sleeve.CORE].cash
    for again in (intent(Side.BUY, 0.1), intent(Side.BUY, 0.01, sleeve=Sleeve.TREND_1)):
        with pytest.raises(DuplicateOrder, match="110072"):
            ex.place_order("co2111110005-abc", again, NOW)
    assert ex.fetch_order("co2111110005-abc") is first and first.filled_qty == 0.1
    assert ex.books[Sleeve.CORE].cash == cash and ex.books[Sleeve.TREND_1].cash == 15_000.0


def test_each_sleeve_has_its_own_balances(ath_quotes):
    ex = exchange(core=SleeveBook(Sleeve.CORE, 60_000.0, {"ETH": 2.0}),
                  trend_1=SleeveBook(Sleeve.TREND_1, 15_000.0, {"BTC": 0.2}))
    ex.set_quotes(ath_quotes)
    ex.place_order("core-buy", intent(Side.BUY, 0.5), NOW)
    ex.place_order("core-sell", intent(Side.SELL, 2.0, ETH), NOW)
    assert ex.books[Sleeve.TREND_1] == SleeveBook(Sleeve.TREND_1, 15_000.0, {"BTC": 0.2})
    # TREND-1's 0.2 BTC cannot pay for a CORE sale, nor CORE's cash for a TREND-1 buy
    with pytest.raises(InsufficientFunds):
        ex.place_order("t1-buy", intent(Side.BUY, 0.5, sleeve=Sleeve.TREND_1), NOW)
    with pytest.raises(InsufficientFunds):
        ex.place_order("core-oversell", intent(Side.SELL, 0.6), NOW)
    with pytest.raises(ExchangeError, match="no account for sleeve funding"):
        ex.place_order("fu-buy", intent(Side.BUY, 0.01, sleeve=Sleeve.FUNDING), NOW)
    assert ex.books[Sleeve.CORE].holdings == {"BTC": 0.5 * 0.999, "ETH": 0.0}   # the buy's fee in BTC


def test_books_given_to_the_exchange_are_copied_not_shared(ath_quotes):
    book = SleeveBook(Sleeve.CORE, 100_000.0)
    ex = exchange(core=book)
    ex.set_quotes(ath_quotes)
    ex.place_order("buy", intent(Side.BUY, 0.1), NOW)
    assert book == SleeveBook(Sleeve.CORE, 100_000.0)    # our ledger is not the exchange's


# persistence -----------------------------------------------------------------------------------
def _busy_exchange(dataset) -> PaperExchange:
    """Filled, rejected and resting orders, a staked position and a paid-up staking day."""
    ex = exchange(SPLIT_FEES, FillPolicy.NEXT_OPEN, core=SleeveBook(Sleeve.CORE, 60_000.0),
                  trend_1=SleeveBook(Sleeve.TREND_1, 15_000.0, {"BTC": 0.3}))
    ex.place_order("a-buy-eth", intent(Side.BUY, 5.0, ETH, limit=2618.01, scale_to_cash=True), NOW)
    ex.place_order("b-sell-btc", intent(Side.SELL, 0.3, sleeve=Sleeve.TREND_1, key="s"), NOW)
    ex.place_order("c-too-big", intent(Side.BUY, 9.0), NOW)
    ex.on_bar(utc("2024-01-12"), {BTC: open_(dataset, BTC, "2024-01-12"),
                                   ETH: open_(dataset, ETH, "2024-01-12")})
    ex.place_order("d-resting", intent(Side.BUY, 0.1, limit=close(dataset, BTC, "2024-01-12")), NOW)
    ex.stake(Sleeve.CORE, "ETH", 3.0)
    ledger.accrue_staking(ex.books[Sleeve.CORE], "ETH", 0.03)
    ex.market_clock = "2024-01-12T00:00:00|2"          # it has lived through the open of 2024-01-12
    return ex


def test_state_round_trips_orders_and_books_exactly_through_json(dataset):
    ex = _busy_exchange(dataset)
    statuses = {cid: o.status for cid, o in ex.orders.items()}
    assert statuses == {"a-buy-eth": "filled", "b-sell-btc": "filled", "c-too-big": "rejected",
                        "d-resting": "open"}
    back = PaperExchange.from_state(json.loads(json.dumps(ex.to_state())), SPLIT_FEES, FillPolicy.NEXT_OPEN)
    assert back.books == ex.books
    assert back.orders == ex.orders
    assert back.market_clock == "2024-01-12T00:00:00|2" and back.journal_seq == ex.journal_seq
    # the sequence survives too: the next order does not reuse an exchange order id
    assert back.place_order("e", intent(Side.BUY, 0.01), NOW).exchange_order_id == "paper-5"


def test_to_state_is_a_snapshot_that_later_trades_do_not_change(dataset):
    ex = _busy_exchange(dataset)
    state = ex.to_state()
    saved = json.loads(json.dumps(state))
    ex.on_bar(utc("2024-01-13"), {BTC: open_(dataset, BTC, "2024-01-13")})   # fills d-resting
    ex.stake(Sleeve.CORE, "ETH", -1.0)
    assert state == saved


def test_on_change_sees_every_accepted_order_before_place_order_returns(ath_quotes):
    saved: list[dict] = []
    ex = PaperExchange(FeeParams(), FillPolicy.IMMEDIATE, {Sleeve.CORE: SleeveBook(Sleeve.CORE, 1e5)},
                       on_change=lambda e: saved.append(json.loads(json.dumps(e.to_state()))))
    ex.set_quotes(ath_quotes)
    ex.place_order("x", intent(Side.BUY, 0.1), NOW)
    assert saved[-1]["orders"]["x"]["status"] == "filled"
    assert saved[-1]["books"]["core"]["holdings"] == {"BTC": 0.1 * 0.999}     # the buy's fee in BTC


# staking ---------------------------------------------------------------------------------------
def test_staking_moves_qty_between_holdings_and_staked_and_keeps_the_total():
    ex = exchange(core=SleeveBook(Sleeve.CORE, 0.0, {"ETH": 2.0}))
    assert ex.stake(Sleeve.CORE, "ETH", 1.5) == 1.5
    book = ex.books[Sleeve.CORE]
    assert (book.holdings["ETH"], book.staked["ETH"], book.qty("ETH")) == (0.5, 1.5, 2.0)
    assert ex.stake(Sleeve.CORE, "ETH", 5.0) == 0.5            # no more than is free
    assert ex.stake(Sleeve.CORE, "ETH", -0.75) == -0.75        # unstake
    assert ex.stake(Sleeve.CORE, "ETH", -9.0) == -1.25         # no more than is staked
    assert (book.holdings["ETH"], book.staked["ETH"]) == (2.0, 0.0)


def test_accrue_staking_pays_apy_over_365_compounded_daily():
    book = SleeveBook(Sleeve.CORE, 0.0, {}, {"ETH": 1.0})
    reward = ledger.accrue_staking(book, "ETH", 0.03, days=365)
    assert reward == pytest.approx((1 + 0.03 / 365) ** 365 - 1, rel=1e-12)     # 0.0304530...
    assert reward == pytest.approx(0.030453, abs=1e-6)
    assert book.staked["ETH"] == pytest.approx(1.0304532636, abs=1e-10)
    daily = SleeveBook(Sleeve.CORE, 0.0, {}, {"ETH": 1.0})
    for _ in range(365):
        ledger.accrue_staking(daily, "ETH", 0.03)
    assert daily.staked["ETH"] == pytest.approx(book.staked["ETH"], rel=1e-12)
    assert ledger.accrue_staking(SleeveBook(Sleeve.CORE, 0.0, {"ETH": 1.0}), "ETH", 0.03) == 0.0  # free ETH earns nothing


# value conservation ----------------------------------------------------------------------------
trade = st.tuples(st.sampled_from([Sleeve.CORE, Sleeve.TREND_1]), st.sampled_from([BTC, ETH]),
                  st.sampled_from([Side.BUY, Side.SELL]), st.booleans(), st.floats(1e-3, 0.999))


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(cash=st.floats(1.0, 1e8), btc=st.floats(0.01, 1e6), eth=st.floats(0.01, 1e6),
       maker=st.floats(0.0, 0.01), taker=st.floats(0.0, 0.01), trades=st.lists(trade, max_size=25))
def test_trades_at_a_constant_price_change_value_by_exactly_minus_the_fees(cash, btc, eth, maker, taker,
                                                                           trades):
    prices = {BTC: btc, ETH: eth}
    ex = exchange(FeeParams(spot_maker=maker, spot_taker=taker),
                  core=SleeveBook(Sleeve.CORE, cash), trend_1=SleeveBook(Sleeve.TREND_1, cash / 3))
    ex.set_quotes({s: Quote(p, p, p) for s, p in prices.items()})
    marks = {"BTC": btc, "ETH": eth}

    def value(s: Sleeve) -> float:
        return ex.books[s].equity(marks)

    start = {s: value(s) for s in ex.books}
    fees = {s: 0.0 for s in ex.books}
    for n, (sleeve, symbol, side, limit, fraction) in enumerate(trades):
        book, asset = ex.books[sleeve], symbol[:3]
        rate = maker if limit else taker
        if side == Side.BUY:
            qty = fraction * book.cash / (prices[symbol] * (1 + rate))
        else:
            qty = fraction * book.holdings.get(asset, 0.0)
        qty = RULES[symbol].floor_qty(qty)                 # only orders the exchange accepts
        if not qty > 0 or RULES[symbol].violation(qty, prices[symbol]) is not None:
            continue
        other = {s: b.copy() for s, b in ex.books.items() if s != sleeve}
        order = ex.place_order(f"o{n}", intent(side, qty, symbol, sleeve=sleeve,
                                               limit=prices[symbol] if limit else None), NOW)
        assert order.status == OrderStatus.FILLED and order.filled_qty == qty
        fees[sleeve] += order.fee * (prices[symbol] if side == Side.BUY else 1.0)   # a buy's fee is in the coin
        assert {s: b for s, b in ex.books.items() if s != sleeve} == other
        for b in ex.books.values():
            assert b.cash >= 0 and all(q >= 0 for q in b.holdings.values())
    for s in ex.books:
        assert value(s) == pytest.approx(start[s] - fees[s], rel=1e-9, abs=1e-9 * cash)
