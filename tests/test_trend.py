"""TREND rules (spec chapter 3) on real days of the BTC and ETH perpetuals in ../shared/data."""
from __future__ import annotations

from datetime import timedelta

import pytest

from eternal.config import TrendParams, load_settings
from eternal.engines import trend
from eternal.indicators import perp_market, return_correlation
from eternal.instruments import default as trading_rules
from eternal.models import (
    ExitReason,
    Market,
    PerpPosition,
    Side,
    Sleeve,
    SleeveBook,
    Snapshot,
    StopLevel,
    utc,
)

P = TrendParams()
S = Sleeve.TREND_1
BTC_PERP = trading_rules()["BTC/USDT:USDT"]     # orders go in whole steps of 0.001 BTC (Bybit)


@pytest.fixture(scope="module")
def markets(dataset):
    return {a: perp_market(a, f"{a}/USDT:USDT", dataset.daily(f"{a}/USDT:USDT"),
                           dataset.funding[f"{a}/USDT:USDT"]) for a in ("BTC", "ETH")}


@pytest.fixture(scope="module")
def corr(markets):
    return return_correlation(markets["BTC"], markets["ETH"])


def snap(markets, corr, day: str, book: SleeveBook, assets=("BTC", "ETH")) -> Snapshot:
    d = utc(day)
    idx = {a: markets[a].index_of(d) for a in assets}
    marks = {markets[a].symbol: float(markets[a].close[i]) for a, i in idx.items()}
    c = corr.get(d)
    return Snapshot(d + timedelta(days=1), d, {}, {}, {}, {S: book}, {}, {}, {a: markets[a] for a in assets},
                    idx, marks, None if c is None else float(c))


def row(markets, asset: str, day: str) -> dict:
    m = markets[asset]
    i = m.index_of(utc(day))
    return {"close": m.close[i], "sma50": m.sma[50][i], "sma200": m.sma[200][i], "adx": m.adx[i], "atr": m.atr[i]}


def in_position(state_assets: dict) -> dict:
    return {"assets": state_assets}


def test_long_entry_when_close_and_sma50_above_sma200_and_adx_above_25(markets, corr):
    r = row(markets, "BTC", "2020-05-21")          # the first long signal of 2020
    assert r["close"] > r["sma200"] and r["sma50"] > r["sma200"] and r["adx"] > 25
    d = trend.decide(None, snap(markets, corr, "2020-05-21", SleeveBook(S, 100_000.0), ("BTC",)), P, S)
    (entry,) = d.intents
    assert (entry.symbol, entry.market, entry.side, entry.reason) == ("BTC/USDT:USDT", Market.PERP, Side.BUY, "entry")
    assert entry.leverage == 2.0 and not entry.reduce_only
    assert d.state["assets"]["BTC"]["phase"] == "ENTERING"
    phases = [e.data["to"] for e in d.events if e.kind == "trend_state"]
    assert phases == ["SIGNAL_DETECTED", "ENTERING"]


def test_size_is_one_percent_of_equity_over_two_atr(markets, corr):
    r = row(markets, "BTC", "2020-05-21")
    assert corr.get(utc("2020-05-21")) <= 0.9          # no halving that day
    d = trend.decide(None, snap(markets, corr, "2020-05-21", SleeveBook(S, 100_000.0), ("BTC",)), P, S)
    assert d.intents[0].qty == pytest.approx(BTC_PERP.floor_qty(0.01 * 100_000 / (2 * r["atr"])))


def test_short_entry_when_close_and_sma50_below_sma200_and_adx_above_25(markets, corr):
    r = row(markets, "BTC", "2020-03-25")
    assert r["close"] < r["sma200"] and r["sma50"] < r["sma200"] and r["adx"] > 25
    d = trend.decide(None, snap(markets, corr, "2020-03-25", SleeveBook(S, 100_000.0), ("BTC",)), P, S)
    assert [(i.side, i.reason) for i in d.intents] == [(Side.SELL, "entry")]


def test_qty_is_halved_when_btc_eth_30_day_correlation_exceeds_0_9(markets, corr):
    c = float(corr.get(utc("2020-03-25")))
    assert c > 0.9                                      # the March 2020 crash moved both together
    r = row(markets, "BTC", "2020-03-25")
    d = trend.decide(None, snap(markets, corr, "2020-03-25", SleeveBook(S, 100_000.0), ("BTC",)), P, S)
    assert d.intents[0].qty == pytest.approx(BTC_PERP.floor_qty(0.01 * 100_000 / (2 * r["atr"]) / 2))
    assert "halved" in d.events[-1].data["sizing"]


def test_asset_notional_is_capped_at_half_the_equity(markets, corr):
    params = TrendParams(risk_per_trade=0.5)           # uncapped: 25 ATRs of equity, far above 50 %
    r = row(markets, "BTC", "2020-05-21")
    d = trend.decide(None, snap(markets, corr, "2020-05-21", SleeveBook(S, 100_000.0), ("BTC",)), params, S)
    assert d.intents[0].qty == pytest.approx(BTC_PERP.floor_qty(50_000.0 / r["close"]))


def test_total_notional_is_capped_at_twice_the_equity(markets, corr):
    params = TrendParams(risk_per_trade=0.5, max_asset_notional=2.0)
    eth = markets["ETH"]
    i = eth.index_of(utc("2020-05-21"))
    # an ETH short worth 1.5x equity is already open; BTC may add only 0.5x
    held = PerpPosition("ETH/USDT:USDT", -150_000.0 / eth.close[i], eth.close[i], 75_000.0, 2.0, utc("2020-05-01"))
    book = SleeveBook(S, 25_000.0, perps={"ETH/USDT:USDT": held})
    st = {"assets": {"ETH": {"phase": "IN_POSITION", "side": "short", "entry_atr": 10.0,
                             "opened_at": "2020-05-01T00:00:00Z"}}}
    d = trend.decide(st, snap(markets, corr, "2020-05-21", book), params, S)
    btc = next(x for x in d.intents if x.symbol == "BTC/USDT:USDT")
    equity = book.equity({}, {"ETH/USDT:USDT": float(eth.close[i]), "BTC/USDT:USDT": 0.0})
    close = row(markets, "BTC", "2020-05-21")["close"]
    assert btc.qty == pytest.approx(BTC_PERP.floor_qty((2 * equity - 150_000.0) / close))


def test_no_entry_when_an_indicator_is_missing(markets, corr):
    # 2019-10-15: SMA200 of the BTC perp (listed 2019-09-08) does not exist yet
    d = trend.decide(None, snap(markets, corr, "2019-10-15", SleeveBook(S, 100_000.0), ("BTC",)), P, S)
    assert d.intents == []


def long_btc(markets, entry_day: str, opened: str, qty: float = 1.0, entry_atr: float | None = None):
    m = markets["BTC"]
    price = float(m.open[m.index_of(utc(opened))])
    atr = entry_atr if entry_atr is not None else float(m.atr[m.index_of(utc(entry_day))])
    pos = PerpPosition("BTC/USDT:USDT", qty, price, qty * price / 2, 2.0, utc(opened))
    state = {"assets": {"BTC": {"phase": "IN_POSITION", "side": "long", "entry_atr": atr,
                                "decided_day": utc(entry_day).isoformat(), "opened_at": utc(opened).isoformat()}}}
    return SleeveBook(S, 100_000.0, perps={pos.symbol: pos}), state, price, atr


def test_hard_stop_is_entry_fill_minus_2_atr_of_the_decision_day(markets, corr):
    book, state, price, atr = long_btc(markets, "2020-05-21", "2020-05-22")
    d = trend.decide(state, snap(markets, corr, "2020-05-22", book, ("BTC",)), P, S)
    # 2020-05-22 closed below the 9,066.36 fill: no profit yet, so no trailing stop
    assert d.stops["BTC/USDT:USDT"] == StopLevel(price - 2 * atr, ExitReason.HARD_STOP)


def test_trailing_stop_follows_the_highest_close_once_in_profit(markets, corr):
    # filled at the 2020-07-28 open, 11,047.58; 07-28 closed below it (10,919.94), 07-29 above
    book, state, price, atr = long_btc(markets, "2020-07-27", "2020-07-28")
    m = markets["BTC"]
    days = ("2020-07-28", "2020-07-29", "2020-07-30", "2020-07-31", "2020-08-01", "2020-08-02")
    trail, high, active, s = None, None, False, state
    for day in days:
        d = trend.decide(s, snap(markets, corr, day, book, ("BTC",)), P, S)
        s = d.state
        i = m.index_of(utc(day))
        high = m.close[i] if high is None else max(high, m.close[i])
        active = active or m.close[i] > price
        if active:
            trail = high - 3 * m.atr[i] if trail is None else max(trail, high - 3 * m.atr[i])
        if day == "2020-07-28":
            assert d.stops["BTC/USDT:USDT"] == StopLevel(price - 2 * atr, ExitReason.HARD_STOP)
    # on 08-02 the close fell to 11,079.72 but the trail keeps 11,811.42 - 3 x ATR(08-01)
    assert trail == pytest.approx(11_811.42 - 3 * m.atr[m.index_of(utc("2020-08-01"))])
    assert trail > price - 2 * atr                                   # tighter than the hard stop
    assert d.stops["BTC/USDT:USDT"] == StopLevel(pytest.approx(trail), ExitReason.TRAILING_STOP)


def test_long_exits_when_close_crosses_below_sma200(markets, corr):
    # long since 2021-05-01; on 2021-05-19 BTC closed below its SMA200
    book, state, *_ = long_btc(markets, "2021-04-30", "2021-05-01")
    r = row(markets, "BTC", "2021-05-19")
    assert r["close"] < r["sma200"] and row(markets, "BTC", "2021-05-18")["close"] >= row(markets, "BTC", "2021-05-18")["sma200"]
    d = trend.decide(state, snap(markets, corr, "2021-05-19", book, ("BTC",)), P, S)
    (exit_,) = d.intents
    assert exit_.reason == ExitReason.SMA_EXIT and exit_.reduce_only and exit_.side == Side.SELL
    assert exit_.qty == 1.0 and d.state["assets"]["BTC"]["phase"] == "EXITING"


def test_long_exits_when_latest_settled_funding_exceeds_0_1_percent(markets, corr):
    # the latest settlement at or before the close of 2020-08-17 is above 0.001 per 8 h
    m = markets["BTC"]
    rate = m.latest_funding(utc("2020-08-18"))
    assert rate > 0.001
    book, state, *_ = long_btc(markets, "2020-08-09", "2020-08-10")
    r = row(markets, "BTC", "2020-08-17")
    assert r["close"] > r["sma200"]                     # not an SMA exit
    d = trend.decide(state, snap(markets, corr, "2020-08-17", book, ("BTC",)), P, S)
    assert [i.reason for i in d.intents] == [ExitReason.FUNDING_EXIT]
    assert f"{rate:.6f}" in d.events[-1].message


def test_shorts_do_not_take_the_funding_exit(markets, corr):
    m = markets["BTC"]
    i = m.index_of(utc("2020-08-17"))
    pos = PerpPosition("BTC/USDT:USDT", -1.0, 12_000.0, 6_000.0, 2.0, utc("2020-08-10"))
    state = {"assets": {"BTC": {"phase": "IN_POSITION", "side": "short", "entry_atr": 300.0,
                                "opened_at": "2020-08-10T00:00:00Z"}}}
    d = trend.decide(state, snap(markets, corr, "2020-08-17", SleeveBook(S, 100_000.0, perps={pos.symbol: pos}),
                                 ("BTC",)), P, S)
    assert m.close[i] > m.sma[200][i]                    # above SMA200: a short's SMA exit
    assert [x.reason for x in d.intents] == [ExitReason.SMA_EXIT]


def test_time_stop_exits_at_the_open_30_days_after_the_fill(markets, corr):
    book, state, *_ = long_btc(markets, "2020-07-27", "2020-07-28")
    for day, exits in (("2020-08-25", []), ("2020-08-26", [ExitReason.TIME_STOP])):
        r = row(markets, "BTC", day)
        assert r["close"] > r["sma200"]
        d = trend.decide(state, snap(markets, corr, day, book, ("BTC",)), P, S)
        assert [i.reason for i in d.intents] == exits       # fill 07-28 + 30 days = open of 08-27


def test_a_stop_that_fired_moves_the_asset_back_to_scanning(markets, corr):
    state = {"assets": {"BTC": {"phase": "IN_POSITION", "side": "long", "entry_atr": 300.0,
                                "opened_at": "2020-07-28T00:00:00Z", "stop": 11_000.0,
                                "stop_reason": "trailing_stop"}}}
    d = trend.decide(state, snap(markets, corr, "2022-06-01", SleeveBook(S, 100_000.0), ("BTC",)), P, S)
    moves = [e.data["to"] for e in d.events if e.kind == "trend_state"]
    assert moves[:2] == ["TRAILING_STOP", "SCANNING"]


def test_no_trend_breaker_pauses_after_14_days_of_adx_below_20_and_resumes_after_3_above_25(markets, corr):
    m = markets["BTC"]
    i = m.index_of(utc("2020-01-06"))
    assert all(m.adx[i - 13:i + 1] < 20)                # 2019-12-24 .. 2020-01-06
    s = None
    paused_on, resumed_on = None, None
    day = utc("2020-01-05")
    while day <= utc("2020-01-20"):
        d = trend.decide(s, snap(markets, corr, day.isoformat(), SleeveBook(S, 100_000.0), ("BTC",)), P, S)
        s = d.state
        kinds = {e.kind for e in d.events}
        if "trend_paused" in kinds:
            paused_on = day
        if "trend_resumed" in kinds:
            resumed_on = day
        if paused_on and not resumed_on:
            assert d.intents == []
        day += timedelta(days=1)
    assert paused_on == utc("2020-01-06") and resumed_on == utc("2020-01-13")
    assert all(m.adx[m.index_of(utc("2020-01-11")):m.index_of(utc("2020-01-13")) + 1] > 25)


def test_trend_2_enters_on_sma_20_100_where_trend_1_on_50_200_does_not(markets, corr):
    # 2020-01-19: BTC above SMA100 with SMA20 > SMA100 and ADX > 25, but SMA50 < SMA200
    m, i = markets["BTC"], markets["BTC"].index_of(utc("2020-01-19"))
    assert m.close[i] > m.sma[100][i] and m.sma[20][i] > m.sma[100][i] and m.adx[i] > 25
    assert not m.sma[50][i] > m.sma[200][i]
    s = load_settings()
    book = SleeveBook(Sleeve.TREND_2, 100_000.0)
    snap2 = snap(markets, corr, "2020-01-19", book, ("BTC",))
    snap2 = Snapshot(snap2.asof, snap2.day, {}, {}, {}, {Sleeve.TREND_2: book, S: SleeveBook(S, 100_000.0)}, {},
                     {}, snap2.perps, snap2.perp_index, snap2.marks, snap2.btc_eth_correlation)
    assert (s.trend_2.fast_sma, s.trend_2.slow_sma) == (20, 100)
    assert [x.side for x in trend.decide(None, snap2, s.trend_2, Sleeve.TREND_2).intents] == [Side.BUY]
    assert trend.decide(None, snap2, s.trend_1, S).intents == []


def test_time_stop_counts_from_the_fill_day_for_a_paper_fill_at_0005(markets, corr):
    # paper fills at the 00:05 cycle: the position still belongs to the day of that open
    book, state, *_ = long_btc(markets, "2020-07-27", "2020-07-28")
    state["assets"]["BTC"]["opened_at"] = "2020-07-28T00:05:00+00:00"
    d = trend.decide(state, snap(markets, corr, "2020-08-26", book, ("BTC",)), P, S)
    assert [i.reason for i in d.intents] == [ExitReason.TIME_STOP]
