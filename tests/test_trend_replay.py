"""TREND in the replay: the order of a day's events, stops, funding, and the perp ledger."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from eternal.config import load_settings
from eternal.models import ExitReason, Sleeve, utc
from eternal.replay import parse_sleeves, run_backfill

EXIT_REASONS = {r.value for r in ExitReason} - {"liquidation"}
# the first day both perps have their SMA 200 warm-up (ETH's perp lists on 2019-11-27): the backfill
# refuses an earlier start
FULL_START, FULL_END = utc("2020-06-14"), utc("2026-01-01")
FULL_DAYS = (FULL_END - FULL_START).days      # 2,027


@pytest.fixture(scope="module")
def trend_2_aug_2024(dataset):
    return run_backfill(dataset, load_settings(), start=utc("2024-07-20"), end=utc("2024-08-20"),
                        sleeves=parse_sleeves("trend-2"), capital=100_000.0, progress=False)


def test_the_hard_stop_goes_out_with_the_entry_and_guards_the_fill_day(trend_2_aug_2024, dataset):
    """TREND-2 shorted BTC at the 2024-08-08 open (55,102.90, 08-07's close). The hard stop went out
    with the entry (Bybit: the order's stopLoss) at that close + 2 x ATR(08-07) = 61,467.15, and
    08-08's high of 62,737.20 reached it: the stop bought back that same day at its level, not at
    08-09's open of 61,659.80 as when stops were only set at the first close after the fill. The
    engine, finding the entry flat at its next close and the day past its stop, says so."""
    t = trend_2_aug_2024.trades
    btc = dataset.daily("BTC/USDT:USDT")
    entry = t[(t.symbol == "BTC/USDT:USDT") & (t.reason == "entry")].iloc[0]
    stop = t[(t.symbol == "BTC/USDT:USDT") & (t.reason == "hard_stop")].iloc[0]
    assert entry.timestamp.startswith("2024-08-08") and entry.price == btc.loc["2024-08-08", "open"] == 55_102.9
    assert btc.loc["2024-08-07", "close"] == 55_102.9
    assert stop.timestamp.startswith("2024-08-08") and stop.side == "buy" and stop.qty == entry.qty
    assert stop.price == pytest.approx(61_467.15, abs=0.005)
    assert btc.loc["2024-08-08", "open"] < stop.price < btc.loc["2024-08-08", "high"] == 62_737.2
    said = [e.message for e in trend_2_aug_2024.events if e.ts == utc("2024-08-09") and "BTC: ENTERING" in e.message]
    assert said == ["BTC: ENTERING -> SCANNING: flat at the close, and the day reached the stop at 61467.15 sent "
                    "with the entry: it closed the position on its fill day, or the entry was not sent"]


def test_entries_and_exits_fill_at_the_next_open_with_the_taker_fee(trend_2_aug_2024, dataset):
    t = trend_2_aug_2024.trades
    for _, x in t[t.reason.isin(["entry", "sma_exit", "funding_exit", "time_stop"])].iterrows():
        assert x.price == dataset.daily(x.symbol).loc[x.timestamp[:10], "open"]
        assert x.fee == pytest.approx(x.qty * x.price * 0.00055)


def test_positions_open_at_the_end_close_at_the_last_close_with_reason_end(trend_2_aug_2024, dataset):
    t = trend_2_aug_2024.trades
    end = t[t.reason == "end"]
    assert set(end.symbol) == {"BTC/USDT:USDT", "ETH/USDT:USDT"}
    for _, x in end.iterrows():
        assert x.price == dataset.daily(x.symbol).loc["2024-08-19", "close"]


@pytest.fixture(scope="module")
def trend_1_full(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("trend-1")
    checks = {"days": 0, "worst": 0.0}

    def compare(day, books, exchange_books, closes, marks, *_):
        ours, theirs = books[next(iter(books))], exchange_books[next(iter(books))]
        for b in (ours, theirs):      # cash + margin + unrealised is the equity, to the cent
            parts = b.cash + sum(p.margin + p.unrealised(marks[s]) for s, p in b.perps.items())
            assert abs(parts - b.equity(closes, marks)) < 0.005
        checks["worst"] = max(checks["worst"], abs(ours.equity(closes, marks) - theirs.equity(closes, marks)))
        checks["days"] += 1

    r = run_backfill(dataset, load_settings(), start=FULL_START, end=FULL_END,
                     sleeves=parse_sleeves("trend-1"), capital=100_000.0, out_dir=out, progress=False,
                     on_day=compare)
    return r, out, checks


def test_trend_1_backfill_2020_2026_writes_trades_equity_and_summary(trend_1_full):
    r, out, _ = trend_1_full
    trades = pd.read_csv(out / "trades.csv")
    assert set(trades.market) == {"perp"} and set(trades.sleeve) == {"trend-1"}
    assert set(trades.reason) - {"entry"} <= EXIT_REASONS
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trades"] == len(trades) and summary["days"] == FULL_DAYS
    assert sum(summary["exit_reasons"].values()) == (trades.reason != "entry").sum()
    equity = pd.read_csv(out / "equity.csv", index_col="date")
    assert equity.index[0] == f"{FULL_START:%Y-%m-%d}" and equity.index[-1] == "2025-12-31"


def test_perp_ledger_balances_to_the_cent_at_every_close(trend_1_full):
    r, _, checks = trend_1_full
    assert checks["days"] == FULL_DAYS and checks["worst"] < 0.005    # our books == the exchange's


def test_final_equity_is_capital_plus_realised_minus_fees_plus_funding(trend_1_full):
    """Every position is closed at the end, so the equity is exactly the cash flows."""
    r, _, _ = trend_1_full
    t = r.trades.copy()
    sign = t.side.map({"buy": 1.0, "sell": -1.0})
    realised = 0.0
    for sym, g in t.groupby("symbol"):            # FIFO-free: one-way positions open/close whole
        realised += float((-(sign[g.index]) * g.qty * g.price).sum())
    funding = sum(p.amount for p in r.funding)
    assert r.summary["final_equity"] == pytest.approx(100_000 + realised - t.fee.sum() + funding, abs=0.01)
    assert r.summary["funding"] == pytest.approx(funding)


def test_single_trend_sleeve_gets_the_whole_capital_and_trend_selects_both():
    assert parse_sleeves("trend") == parse_sleeves("trend-1,trend-2")
    assert [s.value for s in parse_sleeves("trend")] == ["trend-1", "trend-2"]


def test_a_backfill_without_funding_still_says_what_its_perps_received_and_paid(trend_2_aug_2024):
    """TREND-2 alone, 2024-07-20..2024-08-20: its BTC and ETH perps were paid 9.02 USDT of funding
    and paid 12.14 (net -3.12); the summary said "received 0.00, paid 0.00" when FUNDING was not
    in the run."""
    s, payments = trend_2_aug_2024.summary, trend_2_aug_2024.funding
    assert s["funding_received"] == pytest.approx(sum(p.amount for p in payments if p.amount > 0)) == \
        pytest.approx(9.0235, abs=5e-5)
    assert s["funding_paid"] == pytest.approx(12.1409, abs=5e-5)
    assert s["funding_received"] - s["funding_paid"] == pytest.approx(s["funding"], abs=1e-9)


def test_a_selection_is_one_whatever_order_it_is_typed_in():
    """`--engines funding,tactical` and `--engines tactical,funding` are the same selection: the
    sleeves come in the portfolio's order (before, the typed order set equity.csv's columns and
    the report's rows, and `eternal report` rebuilt it from the ledger in yet another order)."""
    assert parse_sleeves("funding,tactical") == parse_sleeves(" tactical , funding") == (Sleeve.TACTICAL,
                                                                                         Sleeve.FUNDING)
    assert parse_sleeves("trend-2,core,trend-1") == (Sleeve.CORE, Sleeve.TREND_1, Sleeve.TREND_2)
