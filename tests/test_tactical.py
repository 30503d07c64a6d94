"""TACTICAL (spec chapter 5): triggers, discipline, lots and exits, on real dates of ../shared/data."""
from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from eternal.config import Settings, TacticalParams
from eternal.engines import tactical
from eternal.indicators import FundingHistory, realised_volatility
from eternal.instruments import default as trading_rules
from eternal.models import PERP_SYMBOLS, Quote, Side, Sleeve, SleeveBook, Snapshot, utc
from eternal.replay import parse_sleeves, run_backfill

OFF = {"fear_greed_below": 0, "volatility_annualised": 99.0, "negative_funding_rate_8h": -1.0}
DRAWDOWN_ONLY = TacticalParams(**OFF)


def replay(dataset, start: str, end: str, params: TacticalParams = TacticalParams(), capital=100_000.0):
    return run_backfill(dataset, Settings(tactical=params), start=utc(start), end=utc(end),
                        sleeves=parse_sleeves("tactical"), capital=capital, progress=False)


def kinds(result, kind: str) -> list:
    return [e for e in result.events if e.kind == kind]


def snapshot(dataset, day: str, cash: float = 10_000.0, state=None, fear_greed=None, funding=(),
             holdings=None) -> Snapshot:
    """The real closes and ATH of `day`, BTC's real realised volatility, a TACTICAL book."""
    d = utc(day)
    closes, ath = {}, {}
    for a in ("BTC", "ETH"):
        c = dataset.daily(f"{a}/USDT")["close"]
        closes[a], ath[a] = float(c.loc[d]), float(c[:d].max())
    vol = realised_volatility(dataset.daily("BTC/USDT")["close"][:d]).iloc[-1]
    books = {Sleeve.TACTICAL: SleeveBook(Sleeve.TACTICAL, cash, dict(holdings or {}))}
    return Snapshot(d + timedelta(days=1), d, closes, ath, {a: Quote(c, c, c) for a, c in closes.items()},
                    books, {}, fear_greed=fear_greed, volatility={"BTC": float(vol)},
                    recent_funding={"BTC": tuple(funding)})


# --- triggers on real dates ----------------------------------------------------------------------------

def test_2022_bear_fires_level_1_below_half_and_level_2_below_thirty_percent_of_the_2021_high(dataset):
    """BTC's ATH close 67,525.83 (2021-11-08). It first closed 50 % below on 2022-05-09 and 70 %
    below on 2022-06-18: level 1 deploys half the cash, level 2 half of what remains; each level
    fires once, although BTC stayed below both until the end of 2022 (low -76.6 % on 2022-11-21)."""
    btc = dataset.daily("BTC/USDT")["close"]
    assert btc[:"2021-12-31"].max() == 67_525.83 and btc[:"2021-12-31"].idxmax() == utc("2021-11-08")
    assert btc["2022-05-09"] / 67_525.83 - 1 <= -0.50 < btc["2022-05-08"] / 67_525.83 - 1
    assert btc["2022-06-18"] / 67_525.83 - 1 <= -0.70 < btc["2021-11-08":"2022-06-17"].min() / 67_525.83 - 1

    r = replay(dataset, "2021-11-01", "2023-01-01", DRAWDOWN_ONLY)
    deploys = kinds(r, "tactical_deploy")
    assert [(e.data["lot"], e.data["triggers"]) for e in deploys] == [
        ("lot-20220509", ["drawdown_level_1"]), ("lot-20220618", ["drawdown_level_2"])]
    first, second = deploys
    assert first.data["usdt"] == 50_000.0
    cost_1 = kinds(r, "tactical_lot_opened")[0].data["cost_usdt"]
    assert second.data["usdt"] == pytest.approx(0.5 * (100_000.0 - cost_1), rel=1e-12)
    # 80 % BTC / 20 % ETH, market orders at the next open, taker fee 0.10 %
    buys = r.trades[r.trades.timestamp.str.startswith("2022-05-10")]
    spent = {row.symbol: row.qty * row.price for row in buys.itertuples()}
    opens = {s: float(dataset.daily(s).loc["2022-05-10", "open"]) for s in ("BTC/USDT", "ETH/USDT")}
    closes = {s: float(dataset.daily(s).loc["2022-05-09", "close"]) for s in ("BTC/USDT", "ETH/USDT")}
    assert spent["BTC/USDT"] == pytest.approx(40_000 / closes["BTC/USDT"] * opens["BTC/USDT"])
    assert spent["ETH/USDT"] == pytest.approx(10_000 / closes["ETH/USDT"] * opens["ETH/USDT"])
    assert set(buys.side) == {"buy"} and (buys.fee / (buys.qty * buys.price)).round(6).tolist() == [0.001, 0.001]


def test_a_new_ath_rearms_the_drawdown_levels(dataset):
    """2018 bear (ATH 19,102.66 on 2017-12-16): level 1 on 2018-02-01, level 2 on 2018-11-16; the
    2020-11-24 close 19,160.01 is a new ATH and re-arms both, and level 1 fires again on 2021-06-21,
    50 % below the 63,575.00 ATH of 2021-04-13 (BTC stayed below -50 % of 19,102.66 for a year and
    below -70 % for weeks, yet each level fired once in that cycle)."""
    btc = dataset.daily("BTC/USDT")["close"]
    assert btc[:"2020-11-23"].max() == 19_102.66 and btc["2020-11-24"] == 19_160.01
    assert btc["2018-02-01"] / 19_102.66 - 1 <= -0.5 < btc["2018-01-01":"2018-01-31"].min() / 19_102.66 - 1
    assert btc["2018-11-16"] / 19_102.66 - 1 <= -0.7 < btc["2018-01-01":"2018-11-15"].min() / 19_102.66 - 1
    assert btc["2021-06-21"] / 63_575.0 - 1 <= -0.5 < btc["2021-04-13":"2021-06-20"].min() / 63_575.0 - 1
    r = replay(dataset, "2018-01-01", "2021-07-01", DRAWDOWN_ONLY)
    deploys = [(e.data["lot"], e.data["triggers"]) for e in kinds(r, "tactical_deploy")]
    assert deploys == [("lot-20180201", ["drawdown_level_1"]), ("lot-20181116", ["drawdown_level_2"]),
                       ("lot-20210621", ["drawdown_level_1"])]
    resets = kinds(r, "tactical_levels_reset")
    assert [e.ts for e in resets] == [utc("2020-11-25")]     # decided on 11-24's close


def test_fear_greed_below_20_in_june_2022_deploys_a_quarter_of_the_cash(dataset):
    """F&G read 17 on 2022-06-01 and stayed below 20 all month; the next deployment waits 30 days."""
    fg = dataset.fear_greed["value"]
    assert fg["2022-06-01"] == 17 and (fg["2022-06-01":"2022-06-30"] < 20).all()
    params = TacticalParams(volatility_annualised=99.0, negative_funding_rate_8h=-1.0,
                            drawdown_level_1=0.99, drawdown_level_2=0.99)
    r = replay(dataset, "2022-06-01", "2022-07-15", params)
    deploys = kinds(r, "tactical_deploy")
    assert [(e.data["lot"], e.data["usdt"]) for e in deploys] == [
        ("lot-20220601", 25_000.0), ("lot-20220701", pytest.approx(0.25 * (100_000 - deploys_cost(r, 0))))]
    assert "Fear & Greed 17 < 20" in deploys[0].message
    assert fg["2022-07-01"] < 20


def deploys_cost(r, i: int) -> float:
    return kinds(r, "tactical_lot_opened")[i].data["cost_usdt"]


def test_a_missing_fear_greed_reading_is_no_signal(dataset):
    """2018-04-14..16 and 2024-10-26 have no reading; only F&G is enabled here."""
    fg = dataset.fear_greed
    assert utc("2018-04-15") not in fg.index
    params = TacticalParams(volatility_annualised=99.0, negative_funding_rate_8h=-1.0,
                            drawdown_level_1=0.99, drawdown_level_2=0.99, fear_greed_below=100)
    d = tactical.decide(None, snapshot(dataset, "2018-04-15", fear_greed=None), params)
    assert d.intents == [] and d.state["signals"] == []
    d = tactical.decide(None, snapshot(dataset, "2018-04-13", fear_greed=int(fg["value"]["2018-04-13"])), params)
    assert len(d.intents) == 2                   # any reading is < 100: the day before, with a value, fires


def test_realised_volatility_above_80_percent_in_march_2020_deploys_25_percent(dataset):
    """COVID crash: BTC's 30-day volatility of daily log returns (annualised with sqrt 365) was
    1.92 on 2020-03-13, computed here by hand from the closes."""
    c = dataset.daily("BTC/USDT")["close"][:"2020-03-13"].to_numpy()
    by_hand = np.std(np.diff(np.log(c[-31:])), ddof=1) * np.sqrt(365)
    snap = snapshot(dataset, "2020-03-13")
    assert snap.volatility["BTC"] == pytest.approx(by_hand, rel=1e-12) and by_hand > 0.80
    d = tactical.decide(None, snap, TacticalParams(fear_greed_below=0, negative_funding_rate_8h=-1.0,
                                                   drawdown_level_1=0.99, drawdown_level_2=0.99))
    btc, eth = (next(i for i in d.intents if i.symbol.startswith(a)) for a in ("BTC", "ETH"))
    assert btc.qty * snap.closes["BTC"] == pytest.approx(0.25 * 10_000 * 0.8)
    assert eth.qty * snap.closes["ETH"] == pytest.approx(0.25 * 10_000 * 0.2)
    assert btc.side == Side.BUY and d.state["phase"] == "DEPLOYING"
    calm = snapshot(dataset, "2023-12-31")
    assert calm.volatility["BTC"] < 0.80
    assert tactical.decide(None, calm, TacticalParams(fear_greed_below=0)).intents == []


def test_negative_funding_needs_every_settlement_of_the_last_three_days_below_the_rate(dataset):
    """BTC funding in the March 2020 crash: -0.30 % on 03-13 08:00, but -0.0049 % on 03-14 08:00, so
    no 3-day window in the real data has all 9 settlements below -0.05 % (the default never fires
    on this history). Over the 9 settlements up to 2020-03-16 00:00 the highest is -0.0049 %."""
    history = FundingHistory.of(dataset.funding[PERP_SYMBOLS["BTC"]])
    window = history.window(utc("2020-03-16"), 3)
    assert len(window) == 9 and max(window) == -0.00004946 and min(window) == -0.003
    only_funding = dict(fear_greed_below=0, volatility_annualised=99.0, drawdown_level_1=0.99,
                        drawdown_level_2=0.99)
    snap = snapshot(dataset, "2020-03-15", funding=window)
    assert tactical.decide(None, snap, TacticalParams(**only_funding)).intents == []       # -0.05 %
    d = tactical.decide(None, snap, TacticalParams(**only_funding, negative_funding_rate_8h=-0.00004))
    assert len(d.intents) == 2 and "all 9 settlements" in d.events[0].message
    short = snapshot(dataset, "2020-03-15", funding=window[-8:])          # fewer than 3 days known
    assert tactical.decide(None, short, TacticalParams(**only_funding, negative_funding_rate_8h=-0.00004)).intents == []


def test_several_triggers_the_largest_applies_capped_at_half_and_the_reason_names_all(dataset):
    """2020-03-12: BTC closed at 4,800.00, 74.9 % below its 19,102.66 ATH (both levels), F&G read 14,
    30-day volatility 1.82: all four fire, the largest applies, capped at 50 % of the cash."""
    snap = snapshot(dataset, "2020-03-12", fear_greed=int(dataset.fear_greed["value"]["2020-03-12"]))
    assert snap.closes["BTC"] == 4_800.0 and snap.fear_greed == 14
    params = TacticalParams(deploy_level_1=0.9)            # the level asks for 90 %: capped at 50 %
    d = tactical.decide(None, snap, params)
    deploy = next(e for e in d.events if e.kind == "tactical_deploy")
    assert deploy.data["usdt"] == 5_000.0 and deploy.data["share"] == 0.5
    assert deploy.data["triggers"] == ["drawdown_level_1", "drawdown_level_2", "fear_greed", "volatility"]
    for words in ("level 1", "level 2", "Fear & Greed 14 < 20", "realised volatility 1.821"):
        assert words in deploy.message
    assert d.state["levels_fired"] == [1]          # the levels are used in order: level 2 stays armed


def test_at_most_one_deployment_per_30_days(dataset):
    r = replay(dataset, "2022-05-01", "2022-12-31")
    days = [utc(e.data["lot"][4:]) for e in kinds(r, "tactical_deploy")]
    assert len(days) >= 4 and all((b - a).days >= 30 for a, b in zip(days, days[1:]))


# --- lots and exits ------------------------------------------------------------------------------------

def test_profit_target_sells_the_lot_and_returns_the_proceeds_to_core(dataset):
    """The 2018-12-16 lot (F&G 13, vol 0.95) doubled by 2019-05-11: sold at the next open and every
    USDT received went to CORE by a recorded transfer."""
    r = replay(dataset, "2018-12-16", "2019-06-01")
    assert [e.data["lot"] for e in kinds(r, "tactical_deploy")][0] == "lot-20181216"
    target = next(e for e in kinds(r, "tactical_exit") if e.data["kind"] == "target")
    assert target.data["lot"] == "lot-20181216" and target.data["gain"] >= 1.0
    sold = r.trades[(r.trades.side == "sell") & r.trades.timestamp.str.startswith(
        f"{target.ts:%Y-%m-%d}")]
    proceeds = float((sold.qty * sold.price - sold.fee).sum())
    filled = next(e for e in kinds(r, "tactical_exit_filled") if e.data["lot"] == "lot-20181216")
    assert filled.data["proceeds_usdt"] == pytest.approx(proceeds, rel=1e-12)
    phases = [e.data["phase"] for e in kinds(r, "tactical_phase") if e.ts >= target.ts][:3]
    assert phases == ["PROFIT_TARGET_HIT", "RETURNING_TO_CORE", "ACCUMULATING_CASH"]
    core_cash = r.equity["core"].iloc[-1]
    assert core_cash == pytest.approx(sum(e.data["proceeds_usdt"] for e in kinds(r, "tactical_exit_filled")))


def test_half_a_lot_is_sold_at_plus_50_percent_within_90_days(dataset):
    """The 2018-04-01 lot (level 1, F&G 16) was +55 % on 2018-05-03, day 32: half is sold, once."""
    r = replay(dataset, "2018-04-01", "2018-08-01", TacticalParams(volatility_annualised=99.0))
    lot = kinds(r, "tactical_lot_opened")[0]
    assert lot.data["lot"] == "lot-20180401"
    partial = [e for e in kinds(r, "tactical_exit") if e.data["kind"] == "partial"]
    assert [(e.data["lot"], e.ts) for e in partial] == [("lot-20180401", utc("2018-05-04"))]
    sold = r.trades[(r.trades.side == "sell")]
    assert sold.qty.tolist() == pytest.approx([lot.data["qty"]["BTC"] / 2, lot.data["qty"]["ETH"] / 2])


def test_a_lot_held_12_months_goes_to_core_in_kind_and_a_further_fall_holds(dataset):
    """The 2018-01-01 lot (vol 1.55) lost 73.6 % within the year: nothing is sold on the way down;
    on day 365 its BTC and ETH move to CORE unsold."""
    params = TacticalParams(fear_greed_below=0, drawdown_level_1=0.99, drawdown_level_2=0.99)
    r = replay(dataset, "2018-01-01", "2019-01-10", params)
    lot = kinds(r, "tactical_lot_opened")[0]
    assert lot.data["lot"] == "lot-20180101"
    moved = [e for e in kinds(r, "tactical_exit") if e.data["lot"] == "lot-20180101"]
    assert [(e.data["kind"], e.ts) for e in moved] == [("in_kind", utc("2019-01-02"))]
    assert moved[0].data["gain"] == pytest.approx(-0.736, abs=0.001)


def test_tactical_backfill_2018_2025_conserves_money_and_books_every_lot_at_its_fill_cost(dataset):
    r = replay(dataset, "2018-01-01", "2026-01-01")
    summary = r.summary["tactical_sleeve"]
    assert len(summary["deployments"]) >= 20 and len(summary["exits"]) >= 20
    fills = r.trades
    for lot in kinds(r, "tactical_lot_opened"):
        day = (utc(lot.data["lot"][4:]) + timedelta(days=1)).strftime("%Y-%m-%d")
        buys = fills[(fills.side == "buy") & fills.timestamp.str.startswith(day)]
        # the cash that left: the notionals (a spot buy's fee is charged in the coin bought, as on Bybit)
        assert set(buys.fee_asset) <= {"BTC", "ETH"}
        assert lot.data["cost_usdt"] == pytest.approx(float((buys.qty * buys.price).sum()), rel=1e-9)
    # the portfolio only loses fees: TACTICAL + CORE hold every coin bought, nothing vanishes
    btc_bought = fills[(fills.side == "buy") & (fills.symbol == "BTC/USDT")].qty.sum()
    btc_sold = fills[(fills.side == "sell") & (fills.symbol == "BTC/USDT")].qty.sum()
    assert r.summary["final_equity"] == pytest.approx(r.equity["total"].iloc[-1])
    assert summary["returned_to_core_usdt"] > 0
    held = r.equity  # equity of both sleeves at the last close
    assert held["tactical"].iloc[-1] + held["core"].iloc[-1] == pytest.approx(held["total"].iloc[-1])
    assert btc_bought > btc_sold > 0


def test_a_rebalance_taking_from_tactical_sells_lots_oldest_first_and_keeps_the_cash(dataset):
    """The allocation asks TACTICAL to free 3,000 USDT it does not hold: the older lot goes whole,
    the newer one in part; the proceeds stay in the sleeve for the allocation to transfer."""
    snap = snapshot(dataset, "2023-12-31", cash=0.0, holdings={"BTC": 0.1, "ETH": 1.0})
    btc, eth = snap.closes["BTC"], snap.closes["ETH"]
    older = {"id": "lot-20230101", "opened": "2023-01-02T00:00:00Z", "triggers": ["fear_greed"],
             "planned_usdt": 2_500.0, "cost_usdt": 2_500.0, "qty": {"BTC": 0.04, "ETH": 0.4}}   # +4 %: no exit
    newer = {**older, "id": "lot-20230601", "opened": "2023-06-02T00:00:00Z", "cost_usdt": 3_800.0,
             "qty": {"BTC": 0.06, "ETH": 0.6}}
    from dataclasses import replace

    snap = replace(snap, cash_requests={Sleeve.TACTICAL: 3_000.0})
    d = tactical.decide({"ath": 69_000.0, "lots": [newer, older]}, snap, DRAWDOWN_ONLY)
    old_value = 0.04 * btc + 0.4 * eth
    share = (3_000.0 - old_value) / (0.06 * btc + 0.6 * eth)
    sells = {i.symbol: i.qty for i in d.intents}
    rules = trading_rules()                        # the sum of the lots' parts, in whole spot steps
    assert sells == pytest.approx({"BTC/USDT": rules["BTC/USDT"].floor_qty(0.04 + 0.06 * share),
                                   "ETH/USDT": rules["ETH/USDT"].floor_qty(0.4 + 0.6 * share)})
    released = {e.data["lot"]: e.data["value_usdt"] for e in d.events if e.kind == "tactical_exit"}
    assert released == pytest.approx({"lot-20230101": old_value, "lot-20230601": 3_000.0 - old_value})
    assert [e.data["lot"] for e in d.events if e.kind == "tactical_exit"] == ["lot-20230101", "lot-20230601"]
    assert d.transfers == [] and d.state["pending"]["kind"] == "exit"


def test_a_lot_whose_coins_the_risk_step_sold_is_scaled_to_what_the_sleeve_holds_and_exits_once(dataset):
    """The whole portfolio 2023-01-01..2024-01-01, 1,000 USDT monthly. On 2023-10-24 BTC is 49.56 %
    of the portfolio (cap 45 %): the risk step sells TACTICAL's last 0.084993 BTC. Both lots still
    counted it; valued at BTC's price, lot-20230101 showed +649.6 % and planned, every day from
    2023-11-02, a sale no order could make (90 exits counted, 2 filled). Now the next close scales
    the lots to the coins held: each lot exits on its own ETH, once."""
    r = run_backfill(dataset, Settings(), start=utc("2023-01-01"), end=utc("2024-01-01"), monthly_deposit=1_000.0,
                     progress=False, compare_breakers=False)
    t = r.trades
    [capped] = t[(t.sleeve == "tactical") & (t.reason == "risk_max_asset_share")].itertuples()
    assert capped.timestamp.startswith("2023-10-24") and capped.symbol == "BTC/USDT"
    [reduced] = [e for e in r.events if e.kind == "tactical_lots_reduced"]
    assert reduced.ts == utc("2023-10-25") and reduced.data["asset"] == "BTC"
    assert reduced.data["claimed"] == pytest.approx(capped.qty, rel=1e-3) and reduced.data["held"] < 1e-5
    targets = [e for e in r.events if e.kind == "tactical_exit" and e.data["kind"] == "target"]
    assert [(e.ts, e.data["lot"]) for e in targets] == [(utc("2023-11-05"), "lot-20230101"),
                                                        (utc("2023-12-05"), "lot-20230310")]
    assert all(e.data["gain"] == pytest.approx(1.005, abs=1e-3) for e in targets)     # on ETH alone
    sold = t[(t.sleeve == "tactical") & t.reason.str.endswith("target")]
    assert list(sold.symbol) == ["ETH/USDT", "ETH/USDT"]
    assert len(r.summary["tactical_sleeve"]["exits"]) == 4                # two partial, two target
