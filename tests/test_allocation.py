"""Capital orchestration (spec chapter 6): regimes on real dates, targets, rebalancing, deposits."""
from __future__ import annotations

from datetime import timedelta

import pytest

from eternal import allocation as al
from eternal.allocation import MarketRegimeInputs, Regime
from eternal.config import AllocationParams
from eternal.errors import RiskHalt
from eternal.indicators import perp_market, realised_volatility
from eternal.instruments import default as trading_rules
from eternal.models import Side, Sleeve, SleeveBook, utc

P = AllocationParams()
C, T1, T2, F, TA = Sleeve.CORE, Sleeve.TREND_1, Sleeve.TREND_2, Sleeve.FUNDING, Sleeve.TACTICAL


@pytest.fixture(scope="module")
def btc(shared_data):
    from eternal.data.csv_files import read_dir

    f = read_dir(shared_data).daily("BTC/USDT")
    return perp_market("BTC", "BTC/USDT", f, None, (50, 200)), realised_volatility(f["close"])


def inputs(btc, day: str) -> MarketRegimeInputs:
    m, vol = btc
    i = m.index_of(utc(day))
    return MarketRegimeInputs(utc(day), float(m.close[i]), float(m.sma[50][i]), float(m.sma[200][i]),
                              float(m.adx[i]), float(vol.iloc[i]))


# --- regimes on real dates -------------------------------------------------------------------------------

@pytest.mark.parametrize("day, regime, close", [
    ("2022-06-18", Regime.BEAR, 18_970.79),             # < SMA200 39,755.95, SMA50 30,084.21 < SMA200; vol 0.889 too
    ("2022-01-22", Regime.BEAR, 35_071.42),             # < SMA200 48,679.84, SMA50 45,964.36 < SMA200
    ("2020-03-13", Regime.HIGH_VOLATILITY, 5_578.60),   # vol 1.918; SMA50 9,108 > SMA200 8,596: not bear
    ("2024-11-15", Regime.STRONG_BULL, 91_032.07),      # ADX 41.1 > 40, close > SMA200 64,430.78
    ("2024-03-01", Regime.STRONG_BULL, 62_387.90),      # ADX 44.5, and 50 days before the halving
    ("2024-04-10", Regime.PRE_HALVING, 70_631.08),      # 10 days before 2024-04-20, ADX 16.3, vol 0.709
    ("2023-10-23", Regime.PRE_HALVING, 33_069.99),      # exactly 180 days before
    ("2024-04-20", Regime.BASE, 64_940.59),             # the halving day itself is no longer "before"
    ("2023-07-15", Regime.BASE, 30_289.52),
])
def test_regime_on_real_dates(btc, day, regime, close):
    x = inputs(btc, day)
    assert x.close == close
    assert al.detect_regime(x, P)[0] == regime


def test_precedence_bear_then_high_volatility_then_strong_bull_then_pre_halving(btc):
    x = inputs(btc, "2022-06-18")
    regime, why = al.detect_regime(x, P)
    assert regime == Regime.BEAR and len(why) == 2 and "volatility 0.889" in why[1]
    day = utc("2024-04-01")            # 19 days before the 2024 halving
    both = MarketRegimeInputs(day, 100.0, 90.0, 80.0, 45.0, 0.9)      # HV, strong bull, pre-halving
    assert al.detect_regime(both, P)[0] == Regime.HIGH_VOLATILITY
    assert al.detect_regime(MarketRegimeInputs(day, 100.0, 90.0, 80.0, 45.0, 0.5), P)[0] == Regime.STRONG_BULL
    assert al.detect_regime(MarketRegimeInputs(day, 100.0, 90.0, 80.0, 30.0, 0.5), P)[0] == Regime.PRE_HALVING
    nan = float("nan")                 # too little history: no indicator condition holds
    assert al.detect_regime(MarketRegimeInputs(utc("2023-01-01"), 1.0, nan, nan, nan, nan), P)[0] == Regime.BASE


def test_the_2028_halving_estimate_is_a_setting():
    day = utc("2027-12-01")
    x = MarketRegimeInputs(day, 100.0, 90.0, 80.0, 20.0, 0.3)
    assert al.detect_regime(x, P)[0] == Regime.PRE_HALVING                  # estimate 2028-04-17
    corrected = AllocationParams(halvings=(utc("2028-06-30").date(),))
    assert al.detect_regime(x, corrected)[0] == Regime.BASE                  # 212 days before: not yet


@pytest.mark.parametrize("regime, core, trend, funding, tactical", [
    (Regime.BASE, 0.60, 0.20, 0.15, 0.05), (Regime.STRONG_BULL, 0.50, 0.35, 0.10, 0.05),
    (Regime.BEAR, 0.70, 0.05, 0.15, 0.10), (Regime.HIGH_VOLATILITY, 0.55, 0.15, 0.25, 0.05),
    (Regime.PRE_HALVING, 0.50, 0.30, 0.15, 0.05)])
def test_targets_per_regime_with_trend_split_3_to_1(regime, core, trend, funding, tactical):
    t = al.targets(regime, P)
    assert (t[C], t[F], t[TA]) == (core, funding, tactical)
    assert t[T1] == pytest.approx(trend * 0.75) and t[T2] == pytest.approx(trend * 0.25)
    assert sum(t.values()) == pytest.approx(1.0)


# --- rebalancing ------------------------------------------------------------------------------------------

BASE = al.targets(Regime.BASE, P)


def test_trend_10_points_over_gives_its_excess_50_30_20_to_core_funding_tactical():
    # TREND 30 % (22.5 + 7.5) against 20 %: 10 points over, 10,000 of 100,000 to move
    equity = {C: 55_000.0, T1: 22_500.0, T2: 7_500.0, F: 12_000.0, TA: 3_000.0}
    moves = al.band_moves(equity, BASE, P)
    got: dict = {}
    for m in moves:
        got[(m.from_sleeve, m.to_sleeve)] = m.usdt
        assert m.reason.startswith("volatility harvesting")
    assert got == pytest.approx({(T1, C): 3_750.0, (T1, F): 2_250.0, (T1, TA): 1_500.0,
                                 (T2, C): 1_250.0, (T2, F): 750.0, (T2, TA): 500.0})


def test_below_the_band_nothing_moves():
    equity = {C: 69_900.0, T1: 10_000.0, T2: 3_000.0, F: 12_100.0, TA: 5_000.0}     # CORE +9.9 points
    assert al.band_moves(equity, BASE, P) == []


def test_another_sleeves_excess_goes_to_the_underweight_in_proportion_to_their_shortfall():
    # CORE 72 % (+12): TREND short 6 points, FUNDING 4, TACTICAL 2 -> 6,000 / 4,000 / 2,000
    equity = {C: 72_000.0, T1: 10_500.0, T2: 3_500.0, F: 11_000.0, TA: 3_000.0}
    got = {(m.from_sleeve, m.to_sleeve): m.usdt for m in al.band_moves(equity, BASE, P)}
    assert got == pytest.approx({(C, T1): 4_500.0, (C, T2): 1_500.0, (C, F): 4_000.0, (C, TA): 2_000.0})


def test_quarterly_brings_every_sleeve_exactly_to_target():
    equity = {C: 64_000.0, T1: 13_000.0, T2: 6_000.0, F: 12_000.0, TA: 5_000.0}
    after = dict(equity)
    for m in al.band_moves(equity, BASE, P, quarterly=True):
        after[m.from_sleeve] -= m.usdt
        after[m.to_sleeve] += m.usdt
    assert {s: after[s] / 100_000 for s in after} == pytest.approx(BASE)


def test_a_deposit_fills_the_most_underweight_sleeve_first_then_splits_by_target():
    equity = {C: 60_000.0, T1: 15_000.0, T2: 5_000.0, F: 9_000.0, TA: 5_000.0}       # total 94,000
    # after 6,000: total 100,000; FUNDING's target is 15,000, it has 9,000: the 6,000 all go there
    assert al.deposit_split(6_000.0, equity, BASE) == pytest.approx({F: 6_000.0})
    split = al.deposit_split(16_000.0, equity, BASE)     # total 110,000: FUNDING needs 7,500
    rest = 16_000.0 - 7_500.0
    assert split == pytest.approx({C: rest * 0.60, T1: rest * 0.15, T2: rest * 0.05, F: 7_500.0 + rest * 0.15,
                                   TA: rest * 0.05})
    assert sum(split.values()) == pytest.approx(16_000.0)
    with pytest.raises(ValueError, match="positive"):
        al.deposit_split(0.0, equity, BASE)


def test_withdrawals_are_refused_while_a_circuit_breaker_is_active():
    with pytest.raises(RiskHalt, match="circuit breaker"):
        al.withdrawal_allowed(breaker_active=True)
    al.withdrawal_allowed(breaker_active=False)


# --- orchestration over cycles ----------------------------------------------------------------------------

def books_of(equity: dict[Sleeve, float]) -> dict[Sleeve, SleeveBook]:
    return {s: SleeveBook(s, e) for s, e in equity.items()}


def test_a_flapping_regime_records_every_change_and_never_trades():
    equity = {C: 60_000.0, T1: 15_000.0, T2: 5_000.0, F: 15_000.0, TA: 5_000.0}
    bear = lambda d: MarketRegimeInputs(d, 90.0, 95.0, 100.0, 20.0, 0.3)          # noqa: E731
    base = lambda d: MarketRegimeInputs(d, 110.0, 95.0, 100.0, 20.0, 0.3)         # noqa: E731
    state, changes = None, 0
    start = utc("2023-07-03")
    for n in range(40):                                                 # daily flips inside one quarter
        day = start + timedelta(days=n)
        o = al.orchestrate(state, day, day + timedelta(days=1), books_of(equity), equity, {}, (bear if n % 2 else base)(day), P)
        state = o.state
        assert o.transfers == [] and o.intents == []
        changes += sum(e.kind == "regime_change" for e in o.events)
    assert changes == 40 and state["active"] == "base"      # bear's targets (TREND 5 %) never applied


def test_the_first_cycle_after_a_quarter_end_rebalances_to_the_regime_targets():
    equity = {C: 64_000.0, T1: 13_000.0, T2: 6_000.0, F: 12_000.0, TA: 5_000.0}
    calm = lambda d: MarketRegimeInputs(d, 110.0, 95.0, 100.0, 20.0, 0.3)         # noqa: E731
    o = al.orchestrate(None, utc("2023-09-29"), utc("2023-09-30"), books_of(equity), equity, {}, calm(utc("2023-09-29")), P)
    assert o.transfers == []                                  # the first cycle only starts the clock
    o = al.orchestrate(o.state, utc("2023-09-30"), utc("2023-10-01"), books_of(equity), equity, {},
                       calm(utc("2023-09-30")), P)
    moved = {s: 0.0 for s in equity}
    for t in o.transfers:
        moved[t.from_sleeve] -= t.qty
        moved[t.to_sleeve] += t.qty
        assert t.reason.startswith("allocation: quarterly")
    assert {s: (equity[s] + moved[s]) / 100_000 for s in equity} == pytest.approx(BASE)
    assert [e.kind for e in o.events].count("quarterly_rebalance") == 1
    o = al.orchestrate(o.state, utc("2023-10-01"), utc("2023-10-02"), books_of(equity), equity, {},
                       calm(utc("2023-10-01")), P)
    assert o.transfers == []                                  # once per quarter


def test_core_without_the_cash_sells_pro_rata_and_pays_the_rest_next_cycle():
    closes = {"BTC": 50_000.0, "ETH": 2_500.0}
    core = SleeveBook(C, 2_000.0, {"BTC": 1.0, "ETH": 8.0})           # 72,000: 2,000 cash + 70,000 coins
    books = {C: core, T1: SleeveBook(T1, 10_500.0), T2: SleeveBook(T2, 3_500.0), F: SleeveBook(F, 11_000.0),
             TA: SleeveBook(TA, 3_000.0)}
    equity = {s: b.equity(closes) for s, b in books.items()}
    calm = MarketRegimeInputs(utc("2023-08-10"), 110.0, 95.0, 100.0, 20.0, 0.3)
    o = al.orchestrate({"regime": "base", "active": "base", "quarter_handled": "2023-06-30T00:00:00Z"},
                       utc("2023-08-10"), utc("2023-08-11"), books, equity, closes, calm, P)
    assert sum(t.qty for t in o.transfers) == pytest.approx(2_000.0)      # all of CORE's free cash now
    owed = sum(m["usdt"] for m in o.state["owed"])
    assert owed == pytest.approx(10_000.0)                                 # 12,000 excess in all
    sells = {i.symbol: i.qty for i in o.intents}
    assert all(i.side == Side.SELL and i.sleeve == C for i in o.intents)
    rules = trading_rules()                                                # sold in whole spot steps
    assert sells == pytest.approx({"BTC/USDT": rules["BTC/USDT"].floor_qty(1.0 * 10_000 / 70_000),
                                   "ETH/USDT": rules["ETH/USDT"].floor_qty(8.0 * 10_000 / 70_000)})
    core.cash = 10_000.0                                                   # the sales filled
    o2 = al.orchestrate(o.state, utc("2023-08-11"), utc("2023-08-12"), books, equity, closes, calm, P)
    assert sum(t.qty for t in o2.transfers) == pytest.approx(10_000.0) and o2.state["owed"] == []


# --- the replay: deposits and orchestration through the same code ------------------------------------------

def test_four_engine_replay_takes_monthly_deposits_and_rebalances_each_quarter(dataset):
    from eternal.config import Settings
    from eternal.replay import run_backfill

    r = run_backfill(dataset, Settings(), start=utc("2024-01-01"), end=utc("2024-04-01"), capital=100_000.0,
                     progress=False, monthly_deposit=1_000.0)
    deposits = [e for e in r.events if e.kind == "deposit"]
    assert [e.ts for e in deposits] == [utc("2024-02-01"), utc("2024-03-01"), utc("2024-04-01")]
    assert all(sum(e.data["split"].values()) == pytest.approx(1_000.0) for e in deposits)
    assert r.summary["deposits"] == 3_000.0
    quarterly = [e for e in r.events if e.kind == "quarterly_rebalance"]
    assert [e.ts for e in quarterly] == [utc("2024-04-01")]
    assert "pre_halving" in quarterly[0].message            # 2024-03-31 is 20 days before the halving
    regimes = [e.data["regime"] for e in r.events if e.kind == "regime_change"]
    assert regimes[0] in set(Regime)


def test_the_configured_weights_are_the_base_targets_and_a_zero_weight_sleeve_stays_off():
    base = {C: 0.0, T1: 0.15, T2: 0.05, F: 0.75, TA: 0.05}
    assert al.targets(Regime.BASE, P, base) == base
    bear = al.targets(Regime.BEAR, P, base)          # 70/5/15/10 without CORE: 3.75/1.25/15/10 of 30
    assert bear[C] == 0.0 and sum(bear.values()) == pytest.approx(1.0)
    assert bear[F] == pytest.approx(0.15 / 0.30) and bear[TA] == pytest.approx(0.10 / 0.30)


def test_trend_reduces_both_perps_and_funding_unwinds_both_legs_pro_rata_to_raise_cash():
    from eternal.models import PerpPosition

    closes = {"BTC": 50_000.0, "ETH": 2_500.0}
    marks = {"BTC/USDT:USDT": 50_000.0, "ETH/USDT:USDT": 2_500.0}
    opened = utc("2024-01-01")
    trend = SleeveBook(T1, 1_000.0, perps={
        "BTC/USDT:USDT": PerpPosition("BTC/USDT:USDT", 0.4, 45_000.0, 9_000.0, 2.0, opened),     # +2,000 open
        "ETH/USDT:USDT": PerpPosition("ETH/USDT:USDT", -4.0, 2_500.0, 5_000.0, 2.0, opened)})   # flat
    # frees margin + unrealised: 11,000 + 5,000 = 16,000; 4,000 beyond the cash is a quarter
    intents = al.raise_cash(trend, 5_000.0, closes, "allocation", "test", marks)
    assert {(i.symbol, i.side, i.reduce_only): i.qty for i in intents} == pytest.approx({
        ("BTC/USDT:USDT", Side.SELL, True): 0.1, ("ETH/USDT:USDT", Side.BUY, True): 1.0})
    funding = SleeveBook(F, 0.0, {"ETH": 4.0}, perps={
        "ETH/USDT:USDT": PerpPosition("ETH/USDT:USDT", -4.0, 2_500.0, 10_000.0, 1.0, opened)})
    legs = {(i.symbol, i.side): i.qty for i in al.raise_cash(funding, 2_000.0, closes, "allocation", "t", marks)}
    assert legs == pytest.approx({("ETH/USDT", Side.SELL): 0.4, ("ETH/USDT:USDT", Side.BUY): 0.4})   # 10 % of each
