"""USDT-margined linear perpetuals (spec, issue 3): the pure ledger, the paper exchange and the
database, on real Binance perp prices and funding settlements from ../shared/data.

Perps trade around the clock, so a daily perp candle opens where the previous one closed, give or
take a tick: the largest gaps in the whole BTC perp file are -21.66 USDT (2021-01-11) and +8.63 USDT
(2021-01-13). The gap tests put a stop inside those real gaps.
"""
from __future__ import annotations

import json
import math
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eternal import ledger
from eternal.config import FeeParams
from eternal.errors import ExchangeError, InsufficientFunds
from eternal.exchange.base import OrderRefused
from eternal.exchange.paper import FillPolicy, PaperExchange
from eternal.instruments import default as trading_rules
from eternal.models import (
    QUOTE,
    ExitReason,
    Fill,
    Market,
    OrderIntent,
    OrderStatus,
    OrderType,
    PerpPosition,
    Quote,
    Side,
    Sleeve,
    SleeveBook,
    StopLevel,
    utc,
)

BTCP, ETHP, SOLP = "BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT"
T1 = Sleeve.TREND_1
TAKER, MAKER = 0.00055, 0.0002
RULES = trading_rules()     # Bybit's perp steps (0.001 BTC, 0.01 ETH) and 5 USDT minimum notional


# helpers -----------------------------------------------------------------------------------------
def px(dataset, symbol: str, day: str, field: str = "close") -> float:
    return float(dataset.daily(symbol).loc[day, field])


def bar(dataset, symbol: str, day: str) -> tuple[float, float, float]:
    row = dataset.daily(symbol).loc[day]
    return float(row["open"]), float(row["high"]), float(row["low"])


def rate(dataset, symbol: str, ts: str) -> float:
    return float(dataset.funding[symbol].loc[ts, "funding_rate"])


def perp(side: Side, qty: float, symbol: str = BTCP, *, sleeve: Sleeve = T1, limit: float | None = None,
         reduce_only: bool = False, scale_to_cash: bool = False, key: str = "k") -> OrderIntent:
    return OrderIntent(sleeve, symbol, Market.PERP, side, qty, OrderType.LIMIT if limit else OrderType.MARKET,
                       "test", key, limit_price=limit, post_only=limit is not None, reduce_only=reduce_only,
                       scale_to_cash=scale_to_cash)


def exchange(policy: FillPolicy = FillPolicy.IMMEDIATE, cash: float = 15_000.0, **more: SleeveBook) -> PaperExchange:
    books = {T1: SleeveBook(T1, cash)} | {Sleeve(k.replace("_", "-")): b for k, b in more.items()}
    return PaperExchange(FeeParams(), policy, books)


def at(ex: PaperExchange, symbol: str, price: float) -> None:
    ex.set_quotes({symbol: Quote(price, price, price)})


def fill(side: Side, qty: float, price: float, *, symbol: str = BTCP, fee_rate: float = TAKER,
         leverage: float = 1.0, ts: str = "2024-01-11", n: int = 1) -> Fill:
    return Fill(f"o{n}", utc(ts), T1, symbol, Market.PERP, side, qty, price, qty * price * fee_rate, QUOTE,
                "taker", f"t{n}", "test", leverage)


def parts(book: SleeveBook, marks: dict[str, float]) -> tuple[float, float, float]:
    return (book.cash, sum(p.margin for p in book.perps.values()),
            sum(p.unrealised(marks[s]) for s, p in book.perps.items()))


# margin, leverage, fees --------------------------------------------------------------------------
def test_default_perp_fees_are_0055_taker_and_002_maker():
    assert (FeeParams().perp_taker, FeeParams().perp_maker) == (TAKER, MAKER)


def test_opening_moves_notional_over_leverage_from_cash_into_margin(dataset):
    btc = px(dataset, BTCP, "2024-01-11")                                   # 46337.8
    ex = exchange()
    ex.set_leverage(T1, BTCP, 2.0)
    at(ex, BTCP, btc)
    (f,) = ex.place_order("long", perp(Side.BUY, 0.5), utc("2024-01-12T00:05Z")).fills
    book = ex.books[T1]
    pos = book.perps[BTCP]
    assert (f.leverage, f.liquidity, f.fee) == (2.0, "taker", 0.5 * btc * TAKER)
    assert (pos.qty, pos.entry_price, pos.leverage) == (0.5, btc, 2.0)
    assert pos.margin == 0.5 * btc / 2                                      # 11,584.45 USDT
    assert book.cash == 15_000 - 0.5 * btc / 2 - 0.5 * btc * TAKER
    assert book.equity({}, {BTCP: btc}) == pytest.approx(15_000 - f.fee, abs=1e-9)   # only the fee is gone


def test_default_leverage_is_1x_so_the_margin_is_the_whole_notional(dataset):
    eth = px(dataset, ETHP, "2024-01-11")
    ex = exchange()
    at(ex, ETHP, eth)
    (f,) = ex.place_order("long", perp(Side.BUY, 2.0, ETHP), utc("2024-01-12T00:05Z")).fills
    assert f.leverage == 1.0 and ex.books[T1].perps[ETHP].margin == 2.0 * eth


@pytest.mark.parametrize("leverage", [2.5, 3.0, 0.0, -1.0, math.nan])
def test_leverage_above_2x_or_not_positive_is_refused(leverage):
    ex = exchange()
    with pytest.raises(ExchangeError, match="at most 2x"):
        ex.set_leverage(T1, BTCP, leverage)
    assert ex.leverage_of(T1, BTCP) == 1.0


def test_leverage_change_is_refused_while_a_position_is_open(dataset):
    ex = exchange()
    ex.set_leverage(T1, BTCP, 2.0)
    at(ex, BTCP, px(dataset, BTCP, "2024-01-11"))
    ex.place_order("long", perp(Side.BUY, 0.1), utc("2024-01-12T00:05Z"))
    ex.set_leverage(T1, BTCP, 2.0)                                          # the same: fine
    with pytest.raises(ExchangeError, match="close it before setting 1x"):
        ex.set_leverage(T1, BTCP, 1.0)
    ex.set_leverage(T1, ETHP, 1.5)                                          # another symbol: fine


def test_limit_perp_order_pays_the_maker_fee_and_market_the_taker_fee(dataset):
    btc = px(dataset, BTCP, "2024-01-11")
    ex = exchange(cash=100_000.0)
    ex.set_quotes({BTCP: Quote(btc, btc + 0.1, btc)})
    (m,) = ex.place_order("mkt", perp(Side.BUY, 0.4), utc("2024-01-12T00:05Z")).fills
    (lim,) = ex.place_order("lmt", perp(Side.BUY, 0.6, limit=btc), utc("2024-01-12T00:05Z")).fills
    assert (m.price, m.liquidity, m.fee) == (btc + 0.1, "taker", 0.4 * (btc + 0.1) * TAKER)
    assert (lim.price, lim.liquidity, lim.fee) == (btc, "maker", 0.6 * btc * MAKER)
    pos = ex.books[T1].perps[BTCP]
    assert pos.qty == pytest.approx(1.0) and pos.entry_price == pytest.approx(0.4 * (btc + 0.1) + 0.6 * btc)


def test_opening_order_whose_margin_and_fee_exceed_the_cash_raises_insufficient_funds(dataset):
    btc = px(dataset, BTCP, "2024-01-11")
    ex = exchange(cash=10_000.0)
    ex.set_leverage(T1, BTCP, 2.0)
    at(ex, BTCP, btc)
    # 0.5 BTC at 2x needs 11,584.45 margin + 12.74 fee
    with pytest.raises(InsufficientFunds, match=r"needs 11597\.19 USDT margin with fees, has 10000\.00"):
        ex.place_order("big", perp(Side.SELL, 0.5), utc("2024-01-12T00:05Z"))
    assert ex.books[T1] == SleeveBook(T1, 10_000.0) and ex.fetch_order("big") is None


def test_next_open_perp_order_the_cash_cannot_cover_is_rejected_at_the_bar(dataset):
    ex = exchange(FillPolicy.NEXT_OPEN, cash=10_000.0)
    order = ex.place_order("big", perp(Side.BUY, 0.5), utc("2024-01-11T00:05Z"))
    assert ex.on_bar(utc("2024-01-12"), {BTCP: px(dataset, BTCP, "2024-01-12", "open")}) == [order]
    assert order.status == OrderStatus.REJECTED and "margin with fees" in order.error
    assert ex.books[T1] == SleeveBook(T1, 10_000.0)


def test_scale_to_cash_perp_entry_spends_the_whole_steps_of_margin_plus_fee_the_cash_covers(dataset):
    ex = exchange(FillPolicy.NEXT_OPEN)
    ex.set_leverage(T1, ETHP, 2.0)
    ex.place_order("all-in", perp(Side.BUY, 100.0, ETHP, scale_to_cash=True), utc("2021-05-17T00:05Z"))
    (order,) = ex.on_bar(utc("2021-05-18"), {ETHP: px(dataset, ETHP, "2021-05-18", "open")})
    (f,) = order.fills
    # 15,000 / (3,283.23 x (1/2 + taker)) = 9.1273 ETH, down to the 0.01 ETH step
    assert f.qty == RULES[ETHP].floor_qty(15_000 / (3283.23 * (0.5 + TAKER)))
    assert f.fee == pytest.approx(f.qty * 3283.23 * TAKER, rel=1e-12)
    left = ex.books[T1].cash
    assert left + ex.books[T1].perps[ETHP].margin + f.fee == pytest.approx(15_000, rel=1e-15)
    assert 0.0 <= left < RULES[ETHP].qty_step * 3283.23 * (0.5 + TAKER)     # less than one more step


# realised P&L -------------------------------------------------------------------------------------
def test_closing_a_long_realises_price_change_times_qty(dataset):
    # long 0.5 BTC at the 2024-01-11 close, closed at the 2024-01-12 close (-3,548.90 per BTC)
    entry, exit_ = px(dataset, BTCP, "2024-01-11"), px(dataset, BTCP, "2024-01-12")
    assert (entry, exit_) == (46337.8, 42788.9)
    book = SleeveBook(T1, 15_000.0)
    assert ledger.apply_fill(book, fill(Side.BUY, 0.5, entry, leverage=2.0)) == 0.0
    realised = ledger.apply_fill(book, fill(Side.SELL, 0.5, exit_, leverage=2.0, ts="2024-01-12", n=2))
    assert realised == (exit_ - entry) * 0.5                               # -1,774.45
    assert book.perps == {}
    assert book.cash == pytest.approx(15_000 + realised - 0.5 * (entry + exit_) * TAKER, abs=1e-9)


def test_closing_a_short_realises_entry_minus_exit_times_qty(dataset):
    entry, exit_ = px(dataset, BTCP, "2024-01-11"), px(dataset, BTCP, "2024-01-12")
    book = SleeveBook(T1, 15_000.0)
    ledger.apply_fill(book, fill(Side.SELL, 0.5, entry, leverage=2.0))
    assert book.perps[BTCP].qty == -0.5 and book.perps[BTCP].unrealised(exit_) == (exit_ - entry) * -0.5
    realised = ledger.apply_fill(book, fill(Side.BUY, 0.5, exit_, leverage=2.0, ts="2024-01-12", n=2))
    assert realised == (entry - exit_) * 0.5                               # +1,774.45
    assert book.cash == pytest.approx(15_000 + realised - 0.5 * (entry + exit_) * TAKER, abs=1e-9)


def test_partial_reduce_releases_margin_pro_rata_and_keeps_the_entry(dataset):
    entry, exit_ = px(dataset, ETHP, "2024-01-11"), px(dataset, ETHP, "2024-01-12")
    book = SleeveBook(T1, 15_000.0)
    ledger.apply_fill(book, fill(Side.BUY, 4.0, entry, symbol=ETHP, leverage=2.0))
    margin = book.perps[ETHP].margin
    cash = book.cash
    realised = ledger.apply_fill(book, fill(Side.SELL, 1.0, exit_, symbol=ETHP, leverage=2.0, n=2))
    pos = book.perps[ETHP]
    assert (pos.qty, pos.entry_price) == (3.0, entry)
    assert pos.margin == margin - margin * 0.25
    assert realised == exit_ - entry
    assert book.cash == cash + (margin * 0.25 + realised) - exit_ * TAKER


def test_increasing_averages_the_entry_and_adds_margin(dataset):
    p1, p2 = px(dataset, BTCP, "2022-11-08", "open"), px(dataset, BTCP, "2022-11-09", "open")
    book = SleeveBook(T1, 20_000.0)
    ledger.apply_fill(book, fill(Side.BUY, 0.3, p1, leverage=2.0))
    ledger.apply_fill(book, fill(Side.BUY, 0.2, p2, leverage=2.0, n=2))
    pos = book.perps[BTCP]
    assert pos.qty == 0.5 and pos.entry_price == pytest.approx((0.3 * p1 + 0.2 * p2) / 0.5, rel=1e-15)
    assert pos.margin == 0.3 * p1 / 2 + 0.2 * p2 / 2 and pos.opened_at == utc("2024-01-11")


def test_fill_crossing_zero_closes_the_position_and_opens_the_rest_the_other_way(dataset):
    p1, p2 = px(dataset, BTCP, "2022-11-07", "open"), px(dataset, BTCP, "2022-11-09", "open")
    book = SleeveBook(T1, 20_000.0)
    ledger.apply_fill(book, fill(Side.BUY, 0.3, p1, leverage=2.0))
    realised = ledger.apply_fill(book, fill(Side.SELL, 0.5, p2, leverage=2.0, ts="2022-11-09", n=2))
    assert realised == (p2 - p1) * 0.3                                    # the long's loss, all of it
    pos = book.perps[BTCP]
    assert (pos.qty, pos.entry_price, pos.margin, pos.opened_at) == (-0.2, p2, 0.2 * p2 / 2, utc("2022-11-09"))
    assert book.cash == pytest.approx(20_000 - 0.3 * p1 * TAKER + realised - 0.5 * p2 * TAKER - 0.2 * p2 / 2,
                                      abs=1e-9)


# reduce-only ---------------------------------------------------------------------------------------
def test_reduce_only_is_refused_when_it_would_open_or_increase(dataset):
    btc = px(dataset, BTCP, "2024-01-11")
    ex = exchange()
    at(ex, BTCP, btc)
    opening = ex.place_order("ro-open", perp(Side.SELL, 0.1, reduce_only=True), utc("2024-01-12T00:05Z"))
    assert opening.status == OrderStatus.REJECTED and "would open or increase" in opening.error
    assert ex.books[T1] == SleeveBook(T1, 15_000.0)
    ex.place_order("long", perp(Side.BUY, 0.1), utc("2024-01-12T00:05Z"))
    before = ex.books[T1].copy()
    adding = ex.place_order("ro-add", perp(Side.BUY, 0.1, reduce_only=True), utc("2024-01-12T00:05Z"))
    assert adding.status == OrderStatus.REJECTED and "holds +0.1" in adding.error
    assert ex.books[T1] == before and not adding.fills


def test_reduce_only_is_capped_at_the_position_size(dataset):
    ex = exchange()
    at(ex, ETHP, px(dataset, ETHP, "2024-01-11"))
    ex.place_order("short", perp(Side.SELL, 2.0, ETHP), utc("2024-01-12T00:05Z"))
    order = ex.place_order("cover", perp(Side.BUY, 5.0, ETHP, reduce_only=True), utc("2024-01-12T00:05Z"))
    assert order.status == OrderStatus.FILLED and order.filled_qty == 2.0
    assert ex.books[T1].perps == {}


def test_next_open_closes_fill_before_opens_so_the_freed_margin_pays_for_the_entry(dataset):
    ex = exchange(FillPolicy.NEXT_OPEN, cash=10_000.0)
    ex.place_order("eth", perp(Side.BUY, 3.0, ETHP), utc("2024-01-10T00:05Z"))
    ex.on_bar(utc("2024-01-11"), {ETHP: px(dataset, ETHP, "2024-01-11", "open")})
    # the entry is placed first, but only the ETH exit's released margin can pay for it
    entry = ex.place_order("btc", perp(Side.BUY, 0.15), utc("2024-01-11T00:05Z"))
    exit_ = ex.place_order("eth-exit", perp(Side.SELL, 3.0, ETHP, reduce_only=True), utc("2024-01-11T00:05Z"))
    opens = {BTCP: px(dataset, BTCP, "2024-01-12", "open"), ETHP: px(dataset, ETHP, "2024-01-12", "open")}
    assert ex.on_bar(utc("2024-01-12"), opens) == [exit_, entry]
    assert entry.status == exit_.status == OrderStatus.FILLED
    assert set(ex.books[T1].perps) == {BTCP}


# funding -------------------------------------------------------------------------------------------
def test_funding_long_pays_rate_times_qty_times_price(dataset):
    # BTC 2021-01-08 00:00: +0.213517 % (a euphoric market), at that moment's price, the day's open
    r, price = rate(dataset, BTCP, "2021-01-08 00:00"), px(dataset, BTCP, "2021-01-08", "open")
    assert (r, price) == (0.00213517, 39498.32)
    book = SleeveBook(T1, 15_000.0)
    ledger.apply_fill(book, fill(Side.BUY, 0.5, px(dataset, BTCP, "2021-01-07", "open"), leverage=2.0))
    cash = book.cash
    pay = ledger.settle_funding(book, BTCP, r, price, utc("2021-01-08 00:00"))
    assert pay.amount == pay.expected == -0.00213517 * 0.5 * 39498.32   # -42.17 USDT paid
    assert (pay.qty, pay.price, pay.rate, pay.sleeve) == (0.5, price, r, T1)
    assert book.cash == cash + pay.amount


def test_funding_short_receives_it(dataset):
    r, price = rate(dataset, BTCP, "2021-01-08 00:00"), px(dataset, BTCP, "2021-01-08", "open")
    book = SleeveBook(T1, 15_000.0)
    ledger.apply_fill(book, fill(Side.SELL, 0.5, px(dataset, BTCP, "2021-01-07", "open"), leverage=2.0))
    cash = book.cash
    pay = ledger.settle_funding(book, BTCP, r, price, utc("2021-01-08 00:00"))
    assert pay.amount == 0.00213517 * 0.5 * 39498.32 > 0                # +42.17 USDT received
    assert book.cash == cash + pay.amount


def test_negative_funding_rate_reverses_who_pays(dataset):
    # BTC 2022-11-10 00:00, two days after FTX halted withdrawals: -0.119172 % per settlement
    r, price = rate(dataset, BTCP, "2022-11-10 00:00"), px(dataset, BTCP, "2022-11-10", "open")
    assert (r, price) == (-0.00119172, 15905.0)
    long_, short = SleeveBook(T1, 15_000.0), SleeveBook(Sleeve.FUNDING, 15_000.0)
    ledger.apply_fill(long_, fill(Side.BUY, 0.5, px(dataset, BTCP, "2022-11-09", "open")))
    short.perps[BTCP] = PerpPosition(BTCP, -0.5, 18533.9, 0.5 * 18533.9, 1.0, utc("2022-11-09"))
    assert ledger.settle_funding(long_, BTCP, r, price, utc("2022-11-10")).amount == 0.00119172 * 0.5 * 15905.0
    assert ledger.settle_funding(short, BTCP, r, price, utc("2022-11-10")).amount == -0.00119172 * 0.5 * 15905.0
    assert ledger.settle_funding(SleeveBook(T1, 1.0), BTCP, r, price, utc("2022-11-10")) is None


def test_settlement_booked_at_the_exchanges_amount_keeps_the_expected_one_apart(dataset):
    book = SleeveBook(T1, 1_000.0)
    book.perps[BTCP] = PerpPosition(BTCP, 0.5, 39498.32, 19749.16, 1.0, utc("2021-01-07"))
    pay = ledger.settle_funding(book, BTCP, 0.002135, 39498.32, utc("2021-01-08"), amount=-42.18)
    assert (pay.amount, pay.expected) == (-42.18, -0.002135 * 0.5 * 39498.32)
    assert book.cash == 1_000.0 - 42.18


def test_exchange_settles_funding_for_every_sleeve_holding_the_symbol_once(dataset):
    r, price = rate(dataset, BTCP, "2021-01-08 00:00"), px(dataset, BTCP, "2021-01-08", "open")
    ex = exchange(funding=SleeveBook(Sleeve.FUNDING, 15_000.0, {"BTC": 0.3}), core=SleeveBook(Sleeve.CORE, 1.0))
    at(ex, BTCP, px(dataset, BTCP, "2021-01-07"))
    ex.place_order("t1", perp(Side.BUY, 0.2), utc("2021-01-07T00:05Z"))
    ex.place_order("fu", perp(Side.SELL, 0.3, sleeve=Sleeve.FUNDING), utc("2021-01-07T00:05Z"))
    cash = {s: b.cash for s, b in ex.books.items()}
    pays = ex.settle_funding(utc("2021-01-08"), BTCP, r, price)
    assert [(p.sleeve, p.amount) for p in pays] == [(Sleeve.FUNDING, r * 0.3 * price), (T1, -r * 0.2 * price)]
    assert ex.settle_funding(utc("2021-01-08"), BTCP, r, price) == pays          # a retry pays nothing again
    assert {s: b.cash for s, b in ex.books.items()} == {
        Sleeve.FUNDING: cash[Sleeve.FUNDING] + r * 0.3 * price, T1: cash[T1] - r * 0.2 * price,
        Sleeve.CORE: 1.0}
    with pytest.raises(ExchangeError, match="settle in time order"):
        ex.settle_funding(utc("2021-01-07 16:00"), BTCP, rate(dataset, BTCP, "2021-01-07 16:00"), price)


# the books balance over real days -------------------------------------------------------------------
# (decided on the close of the day before, filled at the day's open) -> intent
SCRIPT = {
    "2022-11-02": [perp(Side.BUY, 0.3, key="btc-1")],
    "2022-11-03": [perp(Side.BUY, 0.2, key="btc-2"), perp(Side.SELL, 5.0, ETHP, key="eth-1")],
    "2022-11-06": [perp(Side.SELL, 0.25, reduce_only=True, key="btc-3")],
    "2022-11-08": [perp(Side.SELL, 0.6, key="btc-flip")],                 # long 0.25 -> short 0.35
    "2022-11-10": [perp(Side.BUY, 2.0, ETHP, reduce_only=True, key="eth-2"),
                   perp(Side.SELL, 0.2, limit=15_905.0, key="btc-4")],     # a limit (at the 11-09 close) fills at the open, maker
    "2022-11-13": [perp(Side.BUY, 0.55, reduce_only=True, key="btc-5")],   # closes the BTC short
    "2022-11-15": [perp(Side.BUY, 10.0, ETHP, key="eth-flip")],             # short 3 -> long 7
    "2022-11-18": [perp(Side.SELL, 7.0, ETHP, reduce_only=True, key="eth-3")],
}


def test_ledger_balances_to_the_cent_at_every_close_through_the_ftx_crash(dataset):
    """2x BTC and ETH perps from 2022-11-01 to 2022-11-20 (BTC 20,482 -> 15,905 -> 16,693): at each
    close cash + margin + unrealised is the equity, the equity moved by realised + unrealised change
    - fees + funding, and our own books (fed the exchange's fills) equal the exchange's."""
    ex = exchange(FillPolicy.NEXT_OPEN)
    for sym in (BTCP, ETHP):
        ex.set_leverage(T1, sym, 2.0)
    mine = {T1: SleeveBook(T1, 15_000.0)}
    start = utc("2022-11-01")
    equity, unrealised, n = 15_000.0, 0.0, 0
    totals = {"realised": 0.0, "fees": 0.0, "funding": 0.0}
    for day in (start + timedelta(days=i) for i in range(20)):
        d = f"{day:%Y-%m-%d}"
        realised = fees = funding = 0.0
        for order in ex.on_bar(day, {s: px(dataset, s, d, "open") for s in (BTCP, ETHP)}):
            assert order.status == OrderStatus.FILLED, order.error
            for f in order.fills:
                realised += ledger.apply_fill(mine[T1], f)
                fees += f.fee
        for hour in (0, 8, 16):         # every settlement, at the day's open (no intraday perp prices)
            ts = day + timedelta(hours=hour)
            for sym in (BTCP, ETHP):
                for pay in ex.settle_funding(ts, sym, rate(dataset, sym, f"{ts:%Y-%m-%d %H:%M}"),
                                             px(dataset, sym, d, "open")):
                    ledger.apply_funding(mine[T1], pay)
                    funding += pay.amount
        assert mine == ex.books                                            # to the ulp
        marks = {s: px(dataset, s, d) for s in (BTCP, ETHP)}
        cash, margin, upnl = parts(mine[T1], marks)
        now = mine[T1].equity({}, marks)
        assert cash + margin + upnl == pytest.approx(now, abs=0.005)
        assert now - equity == pytest.approx(realised + (upnl - unrealised) - fees + funding, abs=0.005)
        assert all(p.margin > 0 for p in mine[T1].perps.values())
        equity, unrealised = now, upnl
        for k, v in (("realised", realised), ("fees", fees), ("funding", funding)):
            totals[k] += v
        if d == "2022-11-08":                                              # the flip: long 0.25 -> short 0.35
            assert (mine[T1].perps[BTCP].qty, mine[T1].perps[BTCP].entry_price) == (-0.35, 20578.5)
        for intent in SCRIPT.get(f"{day + timedelta(days=1):%Y-%m-%d}", []):
            ex.place_order(f"{intent.key}", intent, day + timedelta(days=1, minutes=5))
            n += 1
    assert n == 10 and mine[T1].perps == {} and len(ex.orders) == 10
    assert mine[T1].cash == pytest.approx(equity, abs=1e-9)                 # all closed: equity is cash
    assert mine[T1].cash == pytest.approx(15_000 + totals["realised"] - totals["fees"] + totals["funding"],
                                          abs=0.005)
    # by hand: BTC +237.615 +59.79 +1,139.68 (the short through the crash), ETH +831.46 +823.08 -302.40
    assert totals["realised"] == pytest.approx(2_789.225, abs=1e-6) and totals["funding"] != 0.0


# stops -------------------------------------------------------------------------------------------------
def long_with_stop(dataset, stop: float, day_before: str, symbol: str = BTCP, qty: float = 0.2):
    ex = exchange()
    at(ex, symbol, px(dataset, symbol, day_before))
    ex.place_order("entry", perp(Side.BUY if qty > 0 else Side.SELL, abs(qty), symbol), utc(day_before))
    ex.set_stop(T1, symbol, StopLevel(stop, ExitReason.HARD_STOP))
    return ex


def test_long_stop_gapped_through_at_the_open_fills_at_the_open(dataset):
    # BTC perp closed 2021-01-10 at 38,221.67 and opened 2021-01-11 at 38,200.01, the largest gap down
    # in the file: a stop at 38,210 in between fills at the open, not at the stop
    assert (px(dataset, BTCP, "2021-01-10"), px(dataset, BTCP, "2021-01-11", "open")) == (38221.67, 38200.01)
    ex = long_with_stop(dataset, 38_210.0, "2021-01-10")
    (f,) = ex.check_stops(utc("2021-01-11"), {BTCP: bar(dataset, BTCP, "2021-01-11")})
    assert (f.side, f.qty, f.price, f.reason, f.liquidity) == (Side.SELL, 0.2, 38200.01, "hard_stop", "taker")
    assert f.fee == 0.2 * 38200.01 * TAKER and f.market == Market.PERP
    assert ex.books[T1].perps == {} and ex.stops == {} and ex.events_fills == [f]


def test_long_stop_inside_the_bar_fills_at_the_stop(dataset):
    # ETH perp 2021-05-19: open 3,377.03, low 1,400.73 (the May 2021 crash)
    ex = long_with_stop(dataset, 3_000.0, "2021-05-18", ETHP, 2.0)
    ex.set_stop(T1, ETHP, StopLevel(3_100.0, ExitReason.TRAILING_STOP))     # replaced, not added
    assert ex.check_stops(utc("2021-05-18"), {ETHP: bar(dataset, ETHP, "2021-05-18")}) == []  # low 3,240.06
    (f,) = ex.check_stops(utc("2021-05-19"), {ETHP: bar(dataset, ETHP, "2021-05-19")})
    assert (f.price, f.reason, f.qty) == (3_100.0, "trailing_stop", 2.0)


def test_short_stop_gapped_through_at_the_open_fills_at_the_open(dataset):
    # BTC perp closed 2021-01-12 at 34,056.90 and opened 2021-01-13 at 34,065.53 (a gap up)
    assert (px(dataset, BTCP, "2021-01-12"), px(dataset, BTCP, "2021-01-13", "open")) == (34056.90, 34065.53)
    ex = long_with_stop(dataset, 34_060.0, "2021-01-12", qty=-0.2)
    (f,) = ex.check_stops(utc("2021-01-13"), {BTCP: bar(dataset, BTCP, "2021-01-13")})
    assert (f.side, f.qty, f.price) == (Side.BUY, 0.2, 34065.53)
    assert ex.books[T1].perps == {}


def test_short_stop_inside_the_bar_fills_at_the_stop(dataset):
    # BTC perp 2021-01-13: open 34,065.53, high 37,880
    ex = long_with_stop(dataset, 36_000.0, "2021-01-12", qty=-0.2)
    (f,) = ex.check_stops(utc("2021-01-13"), {BTCP: bar(dataset, BTCP, "2021-01-13")})
    assert (f.side, f.price, f.reason) == (Side.BUY, 36_000.0, "hard_stop")


def test_stop_is_cleared_when_its_position_closes_and_a_cleared_stop_never_fires(dataset):
    ex = long_with_stop(dataset, 3_000.0, "2021-05-18", ETHP, 2.0)
    ex.set_stop(T1, ETHP, None)
    assert ex.check_stops(utc("2021-05-19"), {ETHP: bar(dataset, ETHP, "2021-05-19")}) == []
    ex.set_stop(T1, ETHP, StopLevel(3_000.0, ExitReason.HARD_STOP))
    ex.place_order("exit", perp(Side.SELL, 2.0, ETHP, reduce_only=True), utc("2021-05-18T12:00Z"))
    assert ex.stops == {}


def test_stop_set_before_a_next_open_entry_guards_the_position_from_its_fill(dataset):
    ex = exchange(FillPolicy.NEXT_OPEN)
    ex.place_order("entry", perp(Side.BUY, 2.0, ETHP), utc("2021-05-18T00:05Z"))
    ex.set_stop(T1, ETHP, StopLevel(3_000.0, ExitReason.HARD_STOP))
    ex.on_bar(utc("2021-05-19"), {ETHP: px(dataset, ETHP, "2021-05-19", "open")})
    (f,) = ex.check_stops(utc("2021-05-19"), {ETHP: bar(dataset, ETHP, "2021-05-19")})
    assert f.price == 3_000.0 and ex.books[T1].perps == {}


# liquidation -------------------------------------------------------------------------------------------
def test_liquidation_price_of_a_long_is_entry_less_cover_over_qty_times_one_minus_maintenance(dataset):
    # 2x long 4 ETH from the 2021-05-18 open, beside a 2x short 0.1 BTC from the 2021-05-17 open
    eth, btc = px(dataset, ETHP, "2021-05-18", "open"), px(dataset, BTCP, "2021-05-17", "open")
    book = SleeveBook(T1, 1_000.0)
    book.perps[ETHP] = PerpPosition(ETHP, 4.0, eth, 4 * eth / 2, 2.0, utc("2021-05-18"))
    book.perps[BTCP] = PerpPosition(BTCP, -0.1, btc, 0.1 * btc / 2, 2.0, utc("2021-05-17"))
    marks = {BTCP: px(dataset, BTCP, "2021-05-18")}                       # 42,882.53: the short is up
    other = book.cash + 4 * eth / 2 + 0.1 * btc / 2 + (marks[BTCP] - btc) * -0.1
    expected = (4 * eth - other) / (4 * (1 - 0.005))
    assert ledger.liquidation_price(book, ETHP, marks) == pytest.approx(expected, rel=1e-14)
    assert expected == pytest.approx(726.21, abs=0.005)             # cross margin: the sleeve's cash and BTC gain help
    at_liq = book.equity({}, {**marks, ETHP: expected})
    assert at_liq == pytest.approx(0.005 * 4 * expected, rel=1e-9)


def test_liquidation_price_of_a_short_is_cover_plus_entry_over_qty_times_one_plus_maintenance():
    book = SleeveBook(T1, 500.0)
    book.perps[BTCP] = PerpPosition(BTCP, -0.5, 36_825.77, 0.5 * 36_825.77 / 2, 2.0, utc("2021-01-07"))
    other = 500.0 + 0.5 * 36_825.77 / 2
    p = ledger.liquidation_price(book, BTCP, {})
    assert p == pytest.approx((other + 0.5 * 36_825.77) / (0.5 * 1.005), rel=1e-14)
    assert p == pytest.approx(55_958.86, abs=0.005)                  # 2x short from the 2021-01-07 open
    assert book.equity({}, {BTCP: p}) == pytest.approx(0.005 * 0.5 * p, rel=1e-9)


def test_a_1x_long_cannot_be_liquidated_but_a_1x_short_can():
    long_ = SleeveBook(T1, 0.0, perps={BTCP: PerpPosition(BTCP, 0.5, 36_825.77, 0.5 * 36_825.77, 1.0, utc("2021-01-07"))})
    short = SleeveBook(T1, 0.0, perps={BTCP: PerpPosition(BTCP, -0.5, 36_825.77, 0.5 * 36_825.77, 1.0, utc("2021-01-07"))})
    assert ledger.liquidation_price(long_, BTCP, {}) is None
    # a short loses without bound: at 1x it goes at about twice its entry, 2 e / (1 + mm)
    assert ledger.liquidation_price(short, BTCP, {}) == pytest.approx(2 * 36_825.77 / 1.005, rel=1e-14)


def test_a_short_hedged_by_as_much_spot_cannot_be_liquidated(dataset):
    # the FUNDING sleeve: 1 BTC spot against 0.99 BTC short at 1x from the 2021-01-08 open
    e = px(dataset, BTCP, "2021-01-08", "open")
    book = SleeveBook(Sleeve.FUNDING, 100.0, {"BTC": 1.0},
                      perps={BTCP: PerpPosition(BTCP, -0.99, e, 0.99 * e, 1.0, utc("2021-01-08"))})
    assert ledger.liquidation_price(book, BTCP, {}) is None
    book.holdings["BTC"] = 0.5                     # half hedged: a rise can take it
    p = ledger.liquidation_price(book, BTCP, {})
    assert p == pytest.approx((100 + 0.99 * e + 0.99 * e) / (0.99 * 1.005 - 0.5), rel=1e-14)
    assert book.equity({"BTC": p}, {BTCP: p}) == pytest.approx(0.005 * 0.99 * p, rel=1e-9)


def test_2x_long_eth_from_the_2021_05_18_open_is_liquidated_in_the_2021_05_19_crash(dataset):
    ex = exchange(FillPolicy.NEXT_OPEN)
    ex.set_leverage(T1, ETHP, 2.0)
    ex.place_order("all-in", perp(Side.BUY, 100.0, ETHP, scale_to_cash=True), utc("2021-05-17T00:05Z"))
    ex.on_bar(utc("2021-05-18"), {ETHP: px(dataset, ETHP, "2021-05-18", "open")})
    book = ex.books[T1]
    pos = book.perps[ETHP]
    q, e = pos.qty, pos.entry_price                                         # 9.12 ETH (whole steps) at 3,283.23
    assert q == RULES[ETHP].floor_qty(15_000 / (e * (0.5 + TAKER)))
    liq = (q * e - (book.cash + pos.margin)) / (q * (1 - 0.005))
    # all the sleeve's cash (15,000 less the entry fee) backs the position: 1,648.54
    assert liq == pytest.approx((q * e - (15_000 - q * e * TAKER)) / (q * (1 - 0.005)), rel=1e-12)
    assert ledger.liquidation_price(book, ETHP, {}) == liq
    assert ex.check_liquidations(utc("2021-05-18"), {ETHP: bar(dataset, ETHP, "2021-05-18")}) == []  # low 3,240.06
    (f,) = ex.check_liquidations(utc("2021-05-19"), {ETHP: bar(dataset, ETHP, "2021-05-19")})        # low 1,400.73
    assert (f.side, f.qty, f.price, f.reason, f.leverage) == (Side.SELL, q, liq, "liquidation", 2.0)
    # what is left is the maintenance margin less the closing fee: 75.29 - 8.28 USDT
    assert book.perps == {} and book.cash == pytest.approx(0.005 * q * liq - q * liq * TAKER, rel=1e-9)
    assert ex.events_fills == [f] and f.client_order_id == "liq-trend-1-ETH-2105190000"


def test_the_same_long_at_1x_survives_the_crash(dataset):
    ex = exchange(FillPolicy.NEXT_OPEN)
    ex.place_order("all-in", perp(Side.BUY, 100.0, ETHP, scale_to_cash=True), utc("2021-05-17T00:05Z"))
    ex.on_bar(utc("2021-05-18"), {ETHP: px(dataset, ETHP, "2021-05-18", "open")})
    assert ledger.liquidation_price(ex.books[T1], ETHP, {}) is None
    assert ex.check_liquidations(utc("2021-05-19"), {ETHP: bar(dataset, ETHP, "2021-05-19")}) == []


def test_a_stop_beyond_the_liquidation_price_is_left_to_the_liquidation(dataset):
    ex = exchange(FillPolicy.NEXT_OPEN)
    ex.set_leverage(T1, ETHP, 2.0)
    ex.place_order("all-in", perp(Side.BUY, 100.0, ETHP, scale_to_cash=True), utc("2021-05-17T00:05Z"))
    ex.set_stop(T1, ETHP, StopLevel(1_500.0, ExitReason.HARD_STOP))       # below the 1,649.86 liquidation
    ex.on_bar(utc("2021-05-18"), {ETHP: px(dataset, ETHP, "2021-05-18", "open")})
    crash = {ETHP: bar(dataset, ETHP, "2021-05-19")}
    assert ex.check_stops(utc("2021-05-19"), crash) == []
    (f,) = ex.check_liquidations(utc("2021-05-19"), crash)
    assert f.reason == "liquidation" and ex.stops == {}


# close_all, state ----------------------------------------------------------------------------------
def test_close_all_closes_every_perp_at_the_given_prices_with_reason_end(dataset):
    ex = exchange(funding=SleeveBook(Sleeve.FUNDING, 15_000.0))
    ex.set_quotes({s: Quote(c, c, c) for s in (BTCP, ETHP) for c in [px(dataset, s, "2024-01-10")]})
    ex.place_order("a", perp(Side.BUY, 0.1), utc("2024-01-11T00:05Z"))
    ex.place_order("b", perp(Side.SELL, 2.0, ETHP, sleeve=Sleeve.FUNDING), utc("2024-01-11T00:05Z"))
    with pytest.raises(ExchangeError, match=r"missing \['ETH/USDT:USDT'\]"):
        ex.close_all(utc("2024-01-12"), {BTCP: 1.0})
    assert len(ex.books[T1].perps) == 1                                     # refused: nothing closed
    closes = {s: px(dataset, s, "2024-01-12") for s in (BTCP, ETHP)}
    fills = ex.close_all(utc("2024-01-12"), closes)
    assert [(f.sleeve, f.side, f.price, f.reason) for f in fills] == [
        (Sleeve.FUNDING, Side.BUY, closes[ETHP], "end"), (T1, Side.SELL, closes[BTCP], "end")]
    assert all(not b.perps for b in ex.books.values())
    trade_ids = [f.trade_id for o in ex.orders.values() for f in o.fills] + [f.trade_id for f in ex.events_fills]
    assert len(set(trade_ids)) == len(trade_ids) == 4


def test_exchange_state_round_trips_perps_leverage_stops_and_event_fills_exactly(dataset):
    ex = exchange(FillPolicy.NEXT_OPEN, funding=SleeveBook(Sleeve.FUNDING, 15_000.0, {"BTC": 0.5}))
    ex.set_leverage(T1, ETHP, 2.0)
    ex.set_leverage(T1, SOLP, 1.5)
    ex.place_order("eth", perp(Side.BUY, 3.1, ETHP), utc("2021-05-17T00:05Z"))
    ex.place_order("btc", perp(Side.SELL, 0.5, sleeve=Sleeve.FUNDING), utc("2021-05-17T00:05Z"))
    ex.on_bar(utc("2021-05-18"), {ETHP: px(dataset, ETHP, "2021-05-18", "open"),
                                  BTCP: px(dataset, BTCP, "2021-05-18", "open")})
    ex.set_stop(T1, ETHP, StopLevel(3_000.0 + 1 / 3, ExitReason.TRAILING_STOP))
    ex.set_stop(Sleeve.FUNDING, BTCP, StopLevel(60_000.0, ExitReason.HARD_STOP))
    ex.settle_funding(utc("2021-05-18 08:00"), BTCP, rate(dataset, BTCP, "2021-05-18 08:00"),
                      px(dataset, BTCP, "2021-05-18", "open"))
    ex.place_order("resting", perp(Side.SELL, 1.0, ETHP, reduce_only=True, limit=3_500.0), utc("2021-05-18T00:05Z"))
    (stopped,) = ex.check_stops(utc("2021-05-19"), {ETHP: bar(dataset, ETHP, "2021-05-19")})  # the crash
    assert stopped.price == 3_000.0 + 1 / 3
    state = json.loads(json.dumps(ex.to_state()))
    back = PaperExchange.from_state(state, FeeParams(), FillPolicy.NEXT_OPEN)
    assert back.books == ex.books and back.leverage == ex.leverage and back.stops == ex.stops
    assert back.events_fills == ex.events_fills and back.funding_last == ex.funding_last
    assert {c: (o.status, o.fills) for c, o in back.orders.items()} == {
        c: (o.status, o.fills) for c, o in ex.orders.items()}
    assert back.to_state() == state
    # and it carries on where it left off: the next fill gets a fresh trade id
    (order,) = back.on_bar(utc("2021-05-20"), {ETHP: px(dataset, ETHP, "2021-05-20", "open")})
    assert order.status == OrderStatus.REJECTED      # ETH was stopped out: nothing left to reduce
    assert back._seq == ex._seq and back.leverage_of(T1, SOLP) == 1.5


# properties ---------------------------------------------------------------------------------------------
op = st.tuples(st.sampled_from([Side.BUY, Side.SELL]), st.floats(1e-4, 5.0), st.floats(0.01, 1e5),
               st.sampled_from([0.5, 1.0, 1.5, 2.0]), st.sampled_from([BTCP, ETHP]))


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(cash=st.floats(0.0, 1e7), fee_rate=st.floats(0.0, 0.01), ops=st.lists(op, max_size=30))
def test_any_opens_and_reduces_keep_cash_plus_margin_plus_unrealised_the_equity(cash, fee_rate, ops):
    book = SleeveBook(T1, cash)
    marks = {BTCP: 1.0, ETHP: 1.0}
    for n, (side, qty, price, lev, sym) in enumerate(ops):
        before = book.equity({}, {**marks, sym: price})
        f = Fill(f"o{n}", utc("2024-01-11"), T1, sym, Market.PERP, side, qty, price, qty * price * fee_rate,
                 QUOTE, "taker", f"t{n}", "p", lev)
        ledger.apply_fill(book, f)
        marks[sym] = price
        after = book.equity({}, marks)
        scale = cash + sum(q * p for _, q, p, _, _ in ops[: n + 1]) + 1.0
        assert after - before == pytest.approx(-f.fee, abs=1e-9 * scale)     # a fill costs its fee, nothing else
        c, m, u = parts(book, marks)
        assert c + m + u == pytest.approx(after, abs=1e-9 * scale)
        for p in book.perps.values():
            assert p.margin >= 0 and p.qty != 0 and p.entry_price > 0



order_op = st.tuples(st.sampled_from([Side.BUY, Side.SELL]), st.floats(0.01, 1.5), st.booleans(), st.booleans(),
                     st.floats(0.5, 2.0), st.sampled_from([BTCP, ETHP]))


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(cash=st.floats(100.0, 1e6), ops=st.lists(order_op, max_size=20))
def test_paper_perp_orders_keep_our_mirrored_books_equal_and_margin_never_negative(cash, ops):
    """Random opens, adds, reduce-only exits and flips on the paper exchange: our books, fed only
    the fills, equal the exchange's to the ulp; a refused order changes nothing; an all-in entry
    leaves less cash than one more step would cost."""
    ex = exchange(cash=cash)
    ex.set_leverage(T1, BTCP, 2.0)
    mine = SleeveBook(T1, cash)
    base = {BTCP: 40_000.0, ETHP: 2_000.0}
    for n, (side, size, reduce_only, all_in, move, sym) in enumerate(ops):
        price = base[sym] * move
        at(ex, sym, price)
        before = ex.books[T1].copy()
        qty = RULES[sym].floor_qty(size * cash / base[sym] * (100.0 if all_in else 1.0))   # on the step
        if qty <= 0:
            continue                                                      # under one step: never sent
        if RULES[sym].violation(qty, price) is not None:                  # under a minimum: refused
            with pytest.raises(OrderRefused):
                ex.place_order(f"o{n}", perp(side, qty, sym, reduce_only=reduce_only, scale_to_cash=all_in),
                               utc("2024-01-11"))
            assert ex.books[T1] == before
            continue
        try:
            order = ex.place_order(f"o{n}", perp(side, qty, sym, reduce_only=reduce_only, scale_to_cash=all_in),
                                   utc("2024-01-11"))
        except InsufficientFunds:
            assert ex.books[T1] == before
            continue
        for f in order.fills:
            ledger.apply_fill(mine, f)
        assert mine == ex.books[T1]
        if order.status == OrderStatus.REJECTED:
            assert reduce_only and ex.books[T1] == before
        pos = before.perps.get(sym)
        if all_in and not reduce_only and order.filled_qty < qty and (pos is None or (pos.qty > 0) == (side == Side.BUY)):
            lev = ex.leverage_of(T1, sym)                                    # scaled: whole steps of margin + fee
            assert 0.0 <= ex.books[T1].cash < RULES[sym].qty_step * price * (1 / lev + TAKER) * (1 + 1e-9)
        assert all(p.margin >= 0 and p.qty != 0 for p in mine.perps.values())


# persistence ----------------------------------------------------------------------------------------------
@pytest.fixture
def store(db_url):
    from eternal.store.db import connect
    from eternal.store.ledger import LedgerStore

    engine = connect(db_url)
    yield LedgerStore(engine)
    engine.dispose()


@pytest.mark.db
def test_perp_books_stops_and_funding_round_trip_exactly_on_both_databases(store, dataset):
    from sqlalchemy import func, insert, select
    from sqlalchemy.exc import IntegrityError

    from eternal.execution import execute
    from eternal.store.ledger import funding_row
    from eternal.store.models import FillRow, FundingPaymentRow, PerpPositionRow

    now = utc("2022-11-08T16:05Z")          # positions held before the 2022-11-09 00:00 settlement
    books = store.initialise(100_000.0, {Sleeve.CORE: 0.6, T1: 0.25, Sleeve.FUNDING: 0.15}, now)
    books[Sleeve.FUNDING].holdings["BTC"] = 0.4
    store.save_books(books.values(), now)
    ex = PaperExchange(FeeParams(), FillPolicy.IMMEDIATE, books)
    ex.set_leverage(T1, ETHP, 2.0)
    ex.set_quotes({s: Quote(c, c, c) for s in (BTCP, ETHP) for c in [px(dataset, s, "2022-11-08")]})
    intents = [perp(Side.SELL, 3.3, ETHP, key="eth"), perp(Side.BUY, 0.1, key="btc"),
               perp(Side.SELL, 0.4, sleeve=Sleeve.FUNDING, key="hedge")]
    result = execute(intents, ex, flow="daily-cycle", scheduled=now, now=now, known={})
    stops = {T1: {ETHP: StopLevel(1_600.0 + 1 / 3, ExitReason.HARD_STOP)}}
    store.save_execution(result.orders, result.fills, [], ex.books.values(), now)
    store.save_books(ex.books.values(), now, stops=stops)

    assert store.load_books() == ex.books                                   # floats exactly, perps included
    assert store.load_stops() == stops
    with store.engine.connect() as conn:
        assert set(conn.execute(select(FillRow.trade_id, FillRow.leverage)).all()) == {
            ("paper-1-1", 2.0), ("paper-2-1", 1.0), ("paper-3-1", 1.0)}

    # funding of the 2022-11-09 00:00 settlement; saving it again (a retried task) adds nothing
    ts = utc("2022-11-09")
    pays = [p for sym in (BTCP, ETHP) for p in ex.settle_funding(ts, sym, rate(dataset, sym, "2022-11-09 00:00"),
                                                                 px(dataset, sym, "2022-11-09", "open"))]
    assert len(pays) == 3
    store.save_funding(pays)
    store.save_funding(pays)
    assert store.load_funding() == sorted(pays, key=lambda p: (p.ts, p.sleeve.value, p.symbol))
    assert store.load_funding(T1, ETHP) == [p for p in pays if (p.sleeve, p.symbol) == (T1, ETHP)]
    with pytest.raises(IntegrityError):                                       # unique (sleeve, symbol, ts)
        with store.engine.begin() as conn:
            conn.execute(insert(FundingPaymentRow), [funding_row(pays[0])])

    # a stop survives a save without stops; a closed position loses its row
    ex.set_quotes({BTCP: Quote(*[px(dataset, BTCP, "2022-11-09")] * 3)})
    ex.place_order("btc-exit", perp(Side.SELL, 0.1, reduce_only=True), utc("2022-11-10T00:05Z"))
    store.save_books(ex.books.values(), utc("2022-11-10T00:05Z"))
    assert store.load_books() == ex.books and BTCP not in ex.books[T1].perps
    assert store.load_stops() == stops
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(PerpPositionRow)).scalar_one() == 2


@pytest.mark.db
def test_a_stored_stop_does_not_carry_over_to_a_reopened_position(store):
    now = utc("2021-05-18T00:05Z")
    book = SleeveBook(T1, 10_000.0)
    ledger.apply_fill(book, fill(Side.BUY, 1.0, 3283.23, symbol=ETHP, ts="2021-05-18"))
    store.save_books([book], now, stops={T1: {ETHP: StopLevel(3_000.0, ExitReason.HARD_STOP)}})
    ledger.apply_fill(book, fill(Side.SELL, 2.0, 3377.03, symbol=ETHP, ts="2021-05-19", n=2))   # flipped short
    store.save_books([book], utc("2021-05-19T00:05Z"))
    assert store.load_books()[T1] == book and store.load_stops() == {}
