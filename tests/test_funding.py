"""FUNDING rules (spec chapter 4) on real settlements of ../shared/data."""
from __future__ import annotations


import pandas as pd
import pytest

from eternal.config import FundingParams, load_settings
from eternal.engines import funding
from eternal.indicators import perp_market
from eternal.instruments import default as trading_rules
from eternal.models import (
    PERP_SYMBOLS,
    FundingTick,
    Market,
    PerpPosition,
    Side,
    Sleeve,
    SleeveBook,
    utc,
)
from eternal.replay import parse_sleeves, run_backfill

P = FundingParams()
F, T = Sleeve.FUNDING, Sleeve.TACTICAL
RULES = trading_rules()


def legs_qty(asset: str, notional: float, spot_price: float) -> float:
    """Both legs' qty for `notional` USDT: down to the perp's step (Bybit's, a multiple of the spot step)."""
    return RULES[PERP_SYMBOLS[asset]].floor_qty(notional / spot_price)


@pytest.fixture(scope="module")
def markets(dataset):
    return {a: perp_market(a, PERP_SYMBOLS[a], dataset.daily(PERP_SYMBOLS[a]), dataset.funding[PERP_SYMBOLS[a]])
            for a in ("BTC", "ETH", "SOL")}


def tick(dataset, markets, ts: str, book: SleeveBook, state=None, received=None, perp_premium=None,
         assets=("BTC", "ETH", "SOL"), deferred: bool = True) -> FundingTick:
    """What the replay knows at settlement `ts`: the day's opens, the latest settled rates."""
    t = utc(ts)
    day = t.strftime("%Y-%m-%d")
    spot = {a: float(dataset.daily(f"{a}/USDT").loc[day, "open"]) for a in assets}
    perp = {a: float(dataset.daily(PERP_SYMBOLS[a]).loc[day, "open"]) for a in assets}
    if perp_premium:
        perp |= {a: spot[a] * (1 + p) for a, p in perp_premium.items()}
    return FundingTick(t, spot, perp, {a: markets[a].latest_funding(t) for a in assets},
                       {a: tuple(r for _, r in markets[a].recent_settlements(t, 3)) for a in assets},
                       {F: book, T: SleeveBook(T)}, state, received or {}, fills_deferred=deferred)


def hedged(dataset, asset: str, day: str, notional: float, cash: float = 90_000.0) -> SleeveBook:
    price = float(dataset.daily(f"{asset}/USDT").loc[day, "open"])
    qty = notional / price
    pos = PerpPosition(PERP_SYMBOLS[asset], -qty, price, notional, 1.0, utc(day))
    return SleeveBook(F, cash, {asset: qty}, perps={pos.symbol: pos})


def collecting(asset: str, opened: str, **extra) -> dict:
    return {"assets": {asset: {"phase": "FUNDING_COLLECTING", "opened_at": utc(opened).isoformat(), **extra}}}


def test_opportunity_opens_spot_long_and_perp_short_for_5_percent_each_btc_eth_before_sol(dataset, markets):
    # 2021-01-08 16:00: all three predicted above 0.0001 with two positive settlements; basis < 2 %
    t = tick(dataset, markets, "2021-01-08T16:00:00Z", SleeveBook(F, 100_000.0))
    for a in ("BTC", "ETH", "SOL"):
        assert t.predicted[a] > 0.0001 and all(r > 0 for r in t.settled[a][-2:])
        assert funding.basis(t, a) < 0.02
    d = funding.decide(t, P)
    by = {(i.symbol, i.market): i for i in d.intents}
    for a in ("BTC", "ETH", "SOL"):
        spot, perp = by[(f"{a}/USDT", Market.SPOT)], by[(PERP_SYMBOLS[a], Market.PERP)]
        assert spot.side == Side.BUY and perp.side == Side.SELL and spot.qty == perp.qty
        assert spot.qty == pytest.approx(legs_qty(a, 0.05 * 100_000, t.spot[a]))   # 5 % of the sleeve's equity
        assert perp.leverage == 1.0
    assert [i.symbol for i in d.intents][1::2] == ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
    assert [i.market for i in d.intents][:2] == [Market.PERP, Market.SPOT]   # the margin leg first
    assert {a: s["phase"] for a, s in d.state["assets"].items()} == dict.fromkeys(("BTC", "ETH", "SOL"), "ENTERING")


def test_when_cash_is_short_btc_and_eth_are_served_before_sol(dataset, markets):
    # a 25 % cap per asset: BTC and ETH each need 25,000 spot + 25,000 margin, nothing is left for SOL
    t = tick(dataset, markets, "2021-01-08T16:00:00Z", SleeveBook(F, 100_000.0))
    d = funding.decide(t, FundingParams(max_asset_share=0.25))
    spot_buys = [i for i in d.intents if i.market == Market.SPOT]
    assert [i.symbol for i in spot_buys] == ["BTC/USDT", "ETH/USDT"]
    btc = spot_buys[0].qty
    assert btc == pytest.approx(legs_qty("BTC", 25_000.0, t.spot["BTC"]))
    left = 100_000.0 - 2 * btc * t.spot["BTC"]                                        # spot + 1x margin
    assert spot_buys[1].qty == pytest.approx(legs_qty("ETH", left / 2 * 0.98, t.spot["ETH"]))  # the cash left, less 2 %
    assert d.state["assets"]["SOL"]["phase"] == "MONITORING"


def test_no_entry_unless_the_last_two_settlements_are_positive(dataset, markets):
    # SOL 2021-01-01 08:00 closed its third negative settlement in a row
    t = tick(dataset, markets, "2021-01-01T08:00:00Z", SleeveBook(F, 100_000.0), assets=("SOL",))
    assert not all(r > 0 for r in t.settled["SOL"][-2:])
    assert funding.decide(t, P).intents == []


def test_no_entry_when_basis_is_2_percent_or_more(dataset, markets):
    # no real day has a 2 % perp premium (max 1.1 %, ETH): a quote 2.5 % above spot proves the rule
    t = tick(dataset, markets, "2021-01-05T00:00:00Z", SleeveBook(F, 100_000.0), perp_premium={"BTC": 0.025},
             assets=("BTC",))
    assert funding.decide(t, P).intents == []


def test_exit_both_legs_when_the_latest_settlement_is_negative(dataset, markets):
    # BTC 2022-11-10 00:00 settled at -0.00119172
    book = hedged(dataset, "BTC", "2022-11-05", 5_000.0)
    t = tick(dataset, markets, "2022-11-10T00:00:00Z", book, collecting("BTC", "2022-11-05"), assets=("BTC",))
    assert t.settled["BTC"][-1] == pytest.approx(-0.00119172)
    d = funding.decide(t, P)
    assert {(i.market, i.side, i.reduce_only) for i in d.intents} == {(Market.SPOT, Side.SELL, False),
                                                                       (Market.PERP, Side.BUY, True)}
    assert all(i.reason == "FUNDING_NEGATIVE" and i.qty == book.holdings["BTC"] for i in d.intents)


def test_exit_when_basis_exceeds_2_percent(dataset, markets):
    book = hedged(dataset, "BTC", "2021-01-02", 5_000.0)
    t = tick(dataset, markets, "2021-01-05T00:00:00Z", book, collecting("BTC", "2021-01-02"),
             perp_premium={"BTC": 0.021}, assets=("BTC",))
    assert [i.reason for i in funding.decide(t, P).intents] == ["BASIS_WIDE", "BASIS_WIDE"]


def test_exit_after_14_days_held(dataset, markets):
    book = hedged(dataset, "BTC", "2021-01-01", 5_000.0)
    for ts, reasons in (("2021-01-14T16:00:00Z", []), ("2021-01-15T00:00:00Z", ["HOLDING_MAX_DAYS"] * 2)):
        t = tick(dataset, markets, ts, book, collecting("BTC", "2021-01-01"), assets=("BTC",))
        assert t.settled["BTC"][-1] > 0
        assert [i.reason for i in funding.decide(t, P).intents] == reasons


def test_three_negative_settlements_of_one_asset_close_every_funding_position(dataset, markets):
    # ETH settled negative three times up to 2021-09-25 08:00 while BTC's latest was positive:
    # the breaker closes BTC's hedge too
    btc = hedged(dataset, "BTC", "2021-09-20", 5_000.0)
    eth = hedged(dataset, "ETH", "2021-09-20", 5_000.0)
    book = SleeveBook(F, 90_000.0, {**btc.holdings, **eth.holdings}, perps={**btc.perps, **eth.perps})
    state = {"assets": {a: {"phase": "FUNDING_COLLECTING", "opened_at": "2021-09-20T00:00:00Z"}
                        for a in ("BTC", "ETH")}}
    t = tick(dataset, markets, "2021-09-25T08:00:00Z", book, state, assets=("BTC", "ETH"))
    assert all(r < 0 for r in t.settled["ETH"]) and t.settled["BTC"][-1] == pytest.approx(5.629e-05)
    d = funding.decide(t, P)
    assert {i.symbol for i in d.intents} == {"BTC/USDT", "BTC/USDT:USDT", "ETH/USDT", "ETH/USDT:USDT"}
    assert any(e.kind == "funding_breaker" and e.level == "alert" for e in d.events)
    # and no new entry while it holds
    flat = tick(dataset, markets, "2021-09-25T08:00:00Z", SleeveBook(F, 100_000.0), d.state, assets=("BTC", "ETH"))
    assert funding.decide(flat, P).intents == []


def test_received_funding_half_compounds_half_goes_to_tactical(dataset, markets):
    received = 100_000.0 * 0.00236496                    # 236.50 USDT on a 100,000 USDT hedge
    book = hedged(dataset, "BTC", "2021-01-02", 100_000.0)
    t = tick(dataset, markets, "2021-01-04T08:00:00Z", book, collecting("BTC", "2021-01-02"),
             received={"BTC": received}, assets=("BTC",))
    d = funding.decide(t, P)
    (tr,) = d.transfers
    assert (tr.from_sleeve, tr.to_sleeve, tr.asset) == (F, T, "USDT")
    assert tr.qty == pytest.approx(received / 2)
    # 118.25 USDT to compound: above 2 x 10 USDT, so both legs grow by up to 59.12 USDT each, in
    # whole perp steps (0.001 BTC); what a step does not use waits for the next funding
    qty = legs_qty("BTC", received / 2 / 2, t.spot["BTC"])
    assert qty > 0
    adds = [i for i in d.intents if i.reason == "compound"]
    assert [i.market for i in adds] == [Market.PERP, Market.SPOT]
    assert [i.qty for i in adds] == pytest.approx([qty, qty])
    assert d.state["assets"]["BTC"]["compound_pending_usdt"] == pytest.approx(received / 2 - qty * t.spot["BTC"] * 2)


def test_small_funding_waits_to_compound_and_paid_funding_is_absorbed(dataset, markets):
    book = hedged(dataset, "BTC", "2021-01-02", 5_000.0)
    d = funding.decide(tick(dataset, markets, "2021-01-05T08:00:00Z", book, collecting("BTC", "2021-01-02"),
                            received={"BTC": 2.36}, assets=("BTC",)), P)
    assert d.intents == [] and d.state["assets"]["BTC"]["compound_pending_usdt"] == pytest.approx(1.18)
    # 59.12 USDT (a 50,000 USDT hedge's funding) is above 2 x 10 USDT but 29.56 USDT a leg is under one
    # perp step of BTC (0.001): it all waits until it buys a whole step
    t = tick(dataset, markets, "2021-01-04T08:00:00Z", hedged(dataset, "BTC", "2021-01-02", 50_000.0),
             collecting("BTC", "2021-01-02"), received={"BTC": 50_000.0 * 0.00236496}, assets=("BTC",))
    assert legs_qty("BTC", 50_000.0 * 0.00236496 / 2 / 2, t.spot["BTC"]) == 0.0
    d = funding.decide(t, P)
    assert d.intents == [] and d.state["assets"]["BTC"]["compound_pending_usdt"] == pytest.approx(50_000.0 * 0.00236496 / 2)
    d = funding.decide(tick(dataset, markets, "2022-11-10T00:00:00Z", hedged(dataset, "BTC", "2022-11-05", 5_000.0),
                            collecting("BTC", "2022-11-05"), received={"BTC": -5.96}, assets=("BTC",)), P)
    assert d.transfers == [] and any(e.kind == "funding_paid" for e in d.events)


def test_a_hedge_off_by_more_than_1_percent_is_rehedged_on_the_perp(dataset, markets):
    book = hedged(dataset, "BTC", "2021-01-02", 5_000.0)
    book.holdings["BTC"] *= 1.02                          # the spot leg filled 2 % more
    t = tick(dataset, markets, "2021-01-04T08:00:00Z", book, collecting("BTC", "2021-01-02"), assets=("BTC",))
    d = funding.decide(t, P)
    (fix,) = [i for i in d.intents if i.reason == "rehedge"]
    assert fix.market == Market.PERP and fix.side == Side.SELL
    gap = book.holdings["BTC"] - (-book.perps["BTC/USDT:USDT"].qty)
    assert fix.qty == pytest.approx(RULES["BTC/USDT:USDT"].floor_qty(gap))    # the perp moves in whole steps
    assert any(e.kind == "hedge_mismatch" for e in d.events)
    within = hedged(dataset, "BTC", "2021-01-02", 5_000.0)
    within.holdings["BTC"] *= 1.009
    assert funding.decide(tick(dataset, markets, "2021-01-04T08:00:00Z", within, collecting("BTC", "2021-01-02"),
                               assets=("BTC",)), P).intents == []


def test_orders_resting_until_the_next_open_are_not_sent_again(dataset, markets):
    t1 = tick(dataset, markets, "2021-01-05T08:00:00Z", SleeveBook(F, 100_000.0), assets=("BTC",))
    d1 = funding.decide(t1, P)
    assert len(d1.intents) == 2
    # 16:00 the same day: the entry rests until the 2021-01-06 open; nothing new is sent
    t2 = tick(dataset, markets, "2021-01-05T16:00:00Z", SleeveBook(F, 100_000.0), d1.state, assets=("BTC",))
    d2 = funding.decide(t2, P)
    assert d2.intents == [] and d2.state["assets"]["BTC"]["phase"] == "ENTERING"
    # 2021-01-06 08:00, after that open, still no position: the entry did not fill
    t3 = tick(dataset, markets, "2021-01-06T08:00:00Z", SleeveBook(F, 100_000.0), d2.state, assets=("BTC",))
    moves = [e.data["to"] for e in funding.decide(t3, P).events if e.kind == "funding_state"]
    assert moves[0] == "MONITORING"


def test_live_fills_are_immediate_so_nothing_is_reserved_or_awaited(dataset, markets):
    """Paper/live: an 08:00 entry has filled by 16:00; its cash is gone from the book already and
    must not be held back a second time, and a failed entry is known at the next tick."""
    t1 = tick(dataset, markets, "2021-01-05T08:00:00Z", SleeveBook(F, 100_000.0), assets=("BTC",), deferred=False)
    d1 = funding.decide(t1, P)
    assert d1.state["committed"] == []
    t2 = tick(dataset, markets, "2021-01-05T16:00:00Z", SleeveBook(F, 100_000.0), d1.state, assets=("BTC",),
              deferred=False)
    moves = [e.data["to"] for e in funding.decide(t2, P).events if e.kind == "funding_state"]
    assert moves[0] == "MONITORING"            # not filled by 16:00: the entry failed, no waiting


@pytest.fixture(scope="module")
def funding_backfill(dataset):
    checks = {"days": 0, "worst": 0.0}

    def compare(day, books, exchange_books, closes, marks, *_):
        for s in (F, T):
            ours, theirs = books[s], exchange_books[s]
            parts = ours.cash + sum(q * closes[a] for a, q in ours.holdings.items() if q) + sum(
                p.margin + p.unrealised(marks[sym]) for sym, p in ours.perps.items())
            assert abs(parts - ours.equity(closes, marks)) < 0.005
            checks["worst"] = max(checks["worst"], abs(ours.equity(closes, marks) - theirs.equity(closes, marks)))
        checks["days"] += 1

    r = run_backfill(dataset, load_settings(), start=utc("2021-01-01"), end=utc("2026-01-01"),
                     sleeves=parse_sleeves("funding"), capital=100_000.0, progress=False, on_day=compare)
    return r, checks


def test_funding_backfill_2021_2025_reconciles_every_close(funding_backfill):
    r, checks = funding_backfill
    assert checks["days"] == 1826 and checks["worst"] < 0.005
    fs = r.summary["funding_sleeve"]
    assert fs["entries"] > 0 and fs["days_invested"] > 0
    assert fs["to_tactical"] == pytest.approx(r.summary["final_equity_by_sleeve"]["tactical"])
    # half, each transfer in the 8 decimals a venue moves (down): at most 1e-8 USDT short per transfer
    sent = sum(1 for t in r.transfers if t.from_sleeve == Sleeve.FUNDING and t.to_sleeve == Sleeve.TACTICAL)
    assert fs["funding_received"] / 2 - 1e-8 * sent <= fs["to_tactical"] <= fs["funding_received"] / 2 + 1e-9
    # and the risk step's trims of a hedge that a move took above 5 % of the sleeve (issue 12)
    assert set(r.summary["exit_reasons"]) <= {"HOLDING_MAX_DAYS", "FUNDING_NEGATIVE", "BASIS_WIDE", "end",
                                              "risk_funding_max_asset_share"}
    # nothing rejected: entries are never sent twice while they rest until the next open
    assert not [e for e in r.events if e.kind == "order_rejected"]
    # held 14 days, fill to fill: decided at the 00:00 tick 14 days on, filled at that open (a
    # compound order resting at that same open can leave a remainder, closed the next day)
    t = r.trades[r.trades.market == "perp"]
    held = []
    for sym, g in t.groupby("symbol"):
        opened = None
        for _, x in g.iterrows():
            if x.reason == "entry":
                opened = pd.Timestamp(x.timestamp)
            elif x.reason == "HOLDING_MAX_DAYS" and opened is not None:
                held.append(pd.Timestamp(x.timestamp) - opened)
                opened = None
    assert held and set(held) == {pd.Timedelta(days=14)}


def test_sol_settlements_every_2_hours_in_the_ftx_crash_are_handled_as_they_come(dataset, markets):
    """2022-11-09 20:00 .. 2022-11-18 06:00 SOL settled every 2 (sometimes 4) hours: a hedge held
    through it is charged at each settlement, and the engine decides at each one, not resampled."""
    from eternal import ledger
    from eternal.config import FeeParams
    from eternal.exchange.paper import FillPolicy, PaperExchange

    window = markets["SOL"].settlements(utc("2022-11-09T17:00:00Z"), utc("2022-11-18T07:00:00Z"))
    assert len(window) == 100 and window[0] == (utc("2022-11-09T20:00:00Z"), -0.02)
    assert sum(1 for ts, _ in window if ts.hour not in (0, 8, 16)) == 75
    book = hedged(dataset, "SOL", "2022-11-09", 5_000.0)
    ex = PaperExchange(FeeParams(), FillPolicy.NEXT_OPEN, {F: book, T: SleeveBook(T)})
    paid, decided = 0.0, 0
    state = collecting("SOL", "2022-11-09")
    for ts, rate in window:
        price = float(dataset.daily(PERP_SYMBOLS["SOL"]).loc[ts.strftime("%Y-%m-%d"), "open"])
        (p,) = ex.settle_funding(ts, PERP_SYMBOLS["SOL"], rate, price)
        assert p.amount == pytest.approx(rate * book.holdings["SOL"] * price)   # a short pays negative rates
        ledger.apply_funding(book, p)
        paid += p.amount
        t = tick(dataset, markets, ts.isoformat(), book, state, {"SOL": p.amount}, assets=("SOL",))
        d = funding.decide(t, P)
        decided += 1
        if decided == 1:   # the first of them already says: get out (fills at the next open)
            assert [i.reason for i in d.intents] == ["FUNDING_NEGATIVE", "FUNDING_NEGATIVE"]
    assert decided == 100 and book.cash == pytest.approx(90_000.0 + paid) and paid < -100


def test_a_position_opened_after_a_settlement_does_not_take_part_in_it(dataset):
    """The daily cycle opens positions at 00:05: the 00:00 settlement is not theirs."""
    from eternal.config import FeeParams
    from eternal.exchange.paper import FillPolicy, PaperExchange

    price = float(dataset.daily("BTC/USDT:USDT").loc["2024-08-10", "open"])
    held = PerpPosition("BTC/USDT:USDT", -0.1, price, 0.1 * price, 1.0, utc("2024-08-09T16:05:00Z"))
    late = PerpPosition("BTC/USDT:USDT", -0.1, price, 0.1 * price, 1.0, utc("2024-08-10T00:05:00Z"))
    ex = PaperExchange(FeeParams(), FillPolicy.IMMEDIATE, {
        Sleeve.TREND_1: SleeveBook(Sleeve.TREND_1, 1_000.0, perps={held.symbol: held}),
        Sleeve.TREND_2: SleeveBook(Sleeve.TREND_2, 1_000.0, perps={late.symbol: late})})
    rate = float(dataset.funding["BTC/USDT:USDT"].loc["2024-08-10 00:00", "funding_rate"])
    pays = ex.settle_funding(utc("2024-08-10T00:00:00Z"), "BTC/USDT:USDT", rate, price)
    assert [(p.sleeve, p.amount) for p in pays] == [(Sleeve.TREND_1, pytest.approx(rate * 0.1 * price))]
