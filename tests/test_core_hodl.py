"""CORE-HODL rules (spec chapter 2) on real days of ../shared/data."""
from __future__ import annotations

from datetime import timedelta

import pytest

from eternal.config import CoreParams
from eternal.engines import core_hodl
from eternal.engines.core_hodl import Phase, quarter_end_on_or_before
from eternal.models import Quote, Side, Sleeve, SleeveBook, Snapshot, utc

P = CoreParams()


def snap(dataset, day: str, book: SleeveBook, inflow: float = 0.0) -> Snapshot:
    d = utc(day)
    closes, ath = {}, {}
    for a in ("BTC", "ETH"):
        f = dataset.daily(f"{a}/USDT")
        closes[a] = float(f.loc[d, "close"])
        ath[a] = float(f.loc[:d, "close"].max())
    return Snapshot(d + timedelta(days=1), d, closes, ath, {a: Quote(c, c, c) for a, c in closes.items()},
                    {Sleeve.CORE: book}, {}, {Sleeve.CORE: inflow} if inflow else {})


def steady_state(day: str, **extra) -> dict:
    return {"phase": "ACCUMULATING", "start_day": "2017-08-17T00:00:00+00:00", "tranches_done": 4,
            "tranche_usdt": 1.0, "quarter_handled": f"{quarter_end_on_or_before(utc(day)).isoformat()}",
            **extra}


def book_at_weights(s: Snapshot, btc_w: float, eth_w: float, equity: float = 100_000.0) -> SleeveBook:
    return SleeveBook(Sleeve.CORE, equity * (1 - btc_w - eth_w),
                      {"BTC": equity * btc_w / s.closes["BTC"], "ETH": equity * eth_w / s.closes["ETH"]})


def test_targets_are_btc_two_thirds_eth_one_third_of_the_invested_95_percent():
    assert P.targets["BTC"] == pytest.approx(0.6333, abs=5e-5)
    assert P.targets["ETH"] == pytest.approx(0.3167, abs=5e-5)
    # portfolio level, CORE being 60 %: about 38 % / 19 %
    assert 0.60 * P.targets["BTC"] == pytest.approx(0.38, abs=0.001)
    assert 0.60 * P.targets["ETH"] == pytest.approx(0.19, abs=0.001)


def test_first_decision_deploys_a_quarter_of_95_percent_split_2_to_1(dataset):
    # 2017-08-17 is the first day of the data: BTC closed 4285.08, ETH 302.00
    s = snap(dataset, "2017-08-17", SleeveBook(Sleeve.CORE, 60_000.0))
    assert (s.closes["BTC"], s.closes["ETH"]) == (4285.08, 302.0)
    d = core_hodl.decide(None, s, P)
    tranche = 60_000 * 0.95 / 4                                   # 14,250 USDT
    by_asset = {i.symbol: i for i in d.intents}
    assert by_asset["BTC/USDT"].qty == pytest.approx(tranche * 2 / 3 / 4285.08)
    assert by_asset["ETH/USDT"].qty == pytest.approx(tranche / 3 / 302.0)
    for i in d.intents:   # post-only limit at the best bid
        assert i.side == Side.BUY and i.post_only and i.limit_price == s.quotes[i.symbol[:3]].bid
    assert d.state["phase"] == Phase.INITIALIZING and d.state["tranches_done"] == 1


def test_tranches_fire_on_days_0_7_14_21_and_then_accumulate(dataset):
    state, fired = None, []
    book = SleeveBook(Sleeve.CORE, 60_000.0)
    for n in range(30):
        day = utc("2017-08-17") + timedelta(days=n)
        d = core_hodl.decide(state, snap(dataset, day.isoformat(), book), P)
        state = d.state
        if d.intents:
            fired.append(n)
        for i in d.intents:                    # filled at the limit price, no fee
            book.cash -= i.qty * i.limit_price
            book.holdings[i.symbol[:3]] = book.holdings.get(i.symbol[:3], 0.0) + i.qty
        # drift or the 2017-09-30 quarter end must not trigger anything while initialising
        if n < 21:
            assert all(i.reason.startswith("tranche") for i in d.intents)
    assert fired == [0, 7, 14, 21]
    assert state["phase"] == Phase.ACCUMULATING


def test_tranche_count_and_spacing_are_configurable(dataset):
    params = CoreParams(tranches=2, tranche_interval_days=3)
    state, fired = None, []
    for n in range(8):
        day = (utc("2020-01-01") + timedelta(days=n)).isoformat()
        d = core_hodl.decide(state, snap(dataset, day, SleeveBook(Sleeve.CORE, 10_000.0)), params)
        state = d.state
        if d.intents:
            fired.append(n)
            assert sum(i.qty * i.limit_price for i in d.intents) == pytest.approx(10_000 * 0.95 / 2)
    assert fired == [0, 3]


def test_drift_above_10_points_rebalances_sells_first_then_buys(dataset):
    # 2021-05-12: ETH closed 3,825.75 after a run-up; a book at BTC 0.50 / ETH 0.45 has drifted
    s0 = snap(dataset, "2021-05-12", SleeveBook(Sleeve.CORE))
    book = book_at_weights(s0, 0.50, 0.45)
    s = snap(dataset, "2021-05-12", book)
    d = core_hodl.decide(steady_state("2021-05-12"), s, P)
    assert [i.side for i in d.intents] == [Side.SELL, Side.BUY]
    sell, buy = d.intents
    assert sell.symbol == "ETH/USDT" and buy.symbol == "BTC/USDT"
    assert sell.qty * s.closes["ETH"] == pytest.approx((0.45 - P.targets["ETH"]) * 100_000)
    assert buy.qty * s.closes["BTC"] == pytest.approx((P.targets["BTC"] - 0.50) * 100_000)
    assert d.state["phase"] == Phase.REBALANCING and "drift" in sell.reason


def test_drift_of_exactly_10_points_or_less_does_not_rebalance(dataset):
    s0 = snap(dataset, "2021-05-12", SleeveBook(Sleeve.CORE))
    book = book_at_weights(s0, P.targets["BTC"] - 0.099, P.targets["ETH"] + 0.099)
    d = core_hodl.decide(steady_state("2021-05-12"), snap(dataset, "2021-05-12", book), P)
    assert d.intents == []


def test_quarter_end_close_triggers_rebalance_once(dataset):
    # decided on the close of 2024-03-31; the book drifted by only 3 points
    s0 = snap(dataset, "2024-03-31", SleeveBook(Sleeve.CORE))
    book = book_at_weights(s0, P.targets["BTC"] + 0.03, P.targets["ETH"] - 0.03)
    state = steady_state("2024-03-30")                   # last handled: 2023-12-31
    assert state["quarter_handled"].startswith("2023-12-31")
    d = core_hodl.decide(state, snap(dataset, "2024-03-31", book), P)
    assert {i.side for i in d.intents} == {Side.SELL, Side.BUY}
    assert "quarter ended 2024-03-31" in d.intents[0].reason
    # the next day the same quarter end does not trigger again
    d2 = core_hodl.decide(d.state, snap(dataset, "2024-04-01", book), P)
    assert d2.intents == []


def test_missed_quarter_end_cycle_is_caught_up_at_the_first_cycle_after(dataset):
    s0 = snap(dataset, "2024-07-02", SleeveBook(Sleeve.CORE))
    book = book_at_weights(s0, P.targets["BTC"] + 0.03, P.targets["ETH"] - 0.03)
    d = core_hodl.decide(steady_state("2024-06-29"), snap(dataset, "2024-07-02", book), P)
    assert d.intents and "quarter ended 2024-06-30" in d.intents[0].reason


def test_no_rebalance_while_an_asset_is_more_than_70_percent_below_its_ath(dataset):
    # 2018-12-15: ETH closed 83.76, 94 % below its 2018-01-13 ATH close of 1,388.02
    s = snap(dataset, "2018-12-15", SleeveBook(Sleeve.CORE))
    assert s.ath["ETH"] == 1388.02 and s.closes["ETH"] == 83.76
    book = book_at_weights(s, 0.80, 0.15)              # drifted 17 points
    d = core_hodl.decide(steady_state("2018-12-14"), snap(dataset, "2018-12-15", book), P)
    assert d.intents == []
    paused = [e for e in d.events if e.kind == "core_rebalance_paused"]
    assert paused and "ETH" in paused[0].message and paused[0].level == "warning"
    assert d.state["ath"]["ETH"] == 1388.02                 # persisted for the next cycle


def test_ath_is_persisted_and_never_lowered(dataset):
    s = snap(dataset, "2022-06-18", SleeveBook(Sleeve.CORE, 1_000.0))
    d = core_hodl.decide(steady_state("2022-06-17", ath={"BTC": 70_000.0, "ETH": 5_000.0}), s, P)
    assert d.state["ath"] == {"BTC": 70_000.0, "ETH": 5_000.0}


def test_eth_is_staked_when_apy_at_least_2_percent_and_unstaked_before_a_sale(dataset):
    params = CoreParams(staking_apy=0.03)
    s0 = snap(dataset, "2021-05-12", SleeveBook(Sleeve.CORE))
    book = book_at_weights(s0, P.targets["BTC"], P.targets["ETH"])
    d = core_hodl.decide(steady_state("2021-05-12"), snap(dataset, "2021-05-12", book), params)
    assert d.stake == {"ETH": pytest.approx(book.holdings["ETH"])}
    assert d.state["phase"] == Phase.EARN_OPTIMIZING
    # now all ETH is staked and ETH is overweight: unstake what the sale needs first
    staked = SleeveBook(Sleeve.CORE, book.cash, {"BTC": book.holdings["BTC"] * 0.7, "ETH": 0.0},
                        {"ETH": book.holdings["ETH"] * 1.6})
    d2 = core_hodl.decide(steady_state("2021-05-12"), snap(dataset, "2021-05-12", staked), params)
    sell = next(i for i in d2.intents if i.side == Side.SELL)
    assert sell.symbol == "ETH/USDT" and d2.stake["ETH"] == pytest.approx(-sell.qty)


def test_staking_is_off_below_2_percent_apy(dataset):
    s0 = snap(dataset, "2021-05-12", SleeveBook(Sleeve.CORE))
    book = book_at_weights(s0, P.targets["BTC"], P.targets["ETH"])
    d = core_hodl.decide(steady_state("2021-05-12"), snap(dataset, "2021-05-12", book),
                         CoreParams(staking_apy=0.019))
    assert d.stake == {} and d.state["phase"] == Phase.ACCUMULATING


def test_deposit_is_deployed_to_the_underweight_assets_next_cycle(dataset):
    s0 = snap(dataset, "2023-02-01", SleeveBook(Sleeve.CORE))
    book = book_at_weights(s0, P.targets["BTC"], P.targets["ETH"])
    book.cash += 10_000.0                                    # a deposit landed in the sleeve
    d = core_hodl.decide(steady_state("2023-02-01"), snap(dataset, "2023-02-01", book, 10_000.0), P)
    assert {i.side for i in d.intents} == {Side.BUY}
    spent = sum(i.qty * i.limit_price for i in d.intents)
    # equity 110k: targets 69,666.67 / 34,833.33; gaps 6,333.33 / 3,166.67 -> 9,500 spent, 5 % kept
    assert spent == pytest.approx(110_000 * 0.95 - 95_000)
    btc = next(i for i in d.intents if i.symbol == "BTC/USDT")
    assert btc.qty * btc.limit_price == pytest.approx(110_000 * P.targets["BTC"] - 100_000 * P.targets["BTC"])


def test_a_deposit_is_deployed_even_while_a_due_rebalance_is_paused(dataset):
    # 2018-12-31 closes a quarter, but ETH is 94 % below its ATH: no rebalance; the new cash still goes in
    s0 = snap(dataset, "2018-12-31", SleeveBook(Sleeve.CORE))
    book = book_at_weights(s0, P.targets["BTC"], P.targets["ETH"])
    book.cash += 15_000.0
    d = core_hodl.decide(steady_state("2018-12-30"), snap(dataset, "2018-12-31", book, 15_000.0), P)
    assert any(e.kind == "core_rebalance_paused" for e in d.events)
    assert {i.side for i in d.intents} == {Side.BUY}
    assert all(i.reason.startswith("deposit") for i in d.intents)
    assert d.state["pending_inflow_usdt"] == 0.0


def test_usdt_drifting_more_than_10_points_triggers_a_rebalance(dataset):
    # BTC 0.55 and ETH 0.25 are within 10 points of target, but USDT at 0.20 is 15 points over 0.05
    s0 = snap(dataset, "2023-02-01", SleeveBook(Sleeve.CORE))
    book = book_at_weights(s0, 0.55, 0.25)
    d = core_hodl.decide(steady_state("2023-02-01"), snap(dataset, "2023-02-01", book), P)
    assert {i.side for i in d.intents} == {Side.BUY} and "USDT 0.2000 vs target 0.0500" in d.intents[0].reason


def test_a_deposit_during_initialisation_waits_for_the_tranches_to_finish(dataset):
    book = SleeveBook(Sleeve.CORE, 60_000.0)
    d = core_hodl.decide(None, snap(dataset, "2020-01-01", book), P)
    book.cash += 5_000.0                                     # arrives on day 3, mid-initialisation
    d = core_hodl.decide(d.state, snap(dataset, "2020-01-04", book, 5_000.0), P)
    assert d.intents == [] and d.state["pending_inflow_usdt"] == 5_000.0
    state = {**d.state, "phase": "ACCUMULATING", "tranches_done": 4,
             "quarter_handled": "2019-12-31T00:00:00+00:00"}
    s = snap(dataset, "2020-02-01", SleeveBook(Sleeve.CORE))
    steady = book_at_weights(s, P.targets["BTC"], P.targets["ETH"], 60_000.0)
    steady.cash += 5_000.0
    d = core_hodl.decide(state, snap(dataset, "2020-02-01", steady), P)   # no new inflow this cycle
    assert sum(i.qty * i.limit_price for i in d.intents) == pytest.approx(65_000 * 0.95 - 57_000)
    assert d.state["pending_inflow_usdt"] == 0.0
