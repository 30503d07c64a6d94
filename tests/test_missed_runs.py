"""Missed and late runs: the next run of any flow catches up every event due; an older slot does nothing.

The portfolio starts with the daily run of 2024-02-01 00:05 and the daily cycle runs every day up
to 2024-03-05 00:05 (no funding run at all: the daily runs catch every settlement up). Then every
run of 2024-03-06 00:05 is missed: BTC fell to a low of 59,112 on 2024-03-05, through both TREND
sleeves' BTC stops. The funding run of 2024-03-06 08:05 is the next one and must check 2024-03-05's
range first, so those longs stop on 2024-03-05 exactly as in a backfill of the same days.
"""
from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest
from sqlalchemy import func, select

from eternal.config import load_settings
from eternal.data.importer import import_dir
from eternal.data.store import MarketStore
from eternal.models import utc
from eternal.replay import run_backfill
from eternal.store.db import connect
from eternal.store.models import FillRow, FundingPaymentRow, OrderRow

pytestmark = [pytest.mark.flow]


@pytest.fixture(scope="module")
def timeline(tmp_path_factory, shared_data, dataset, prefect_harness):
    from flows.daily_cycle import daily_cycle
    from flows.funding_collection import funding_collection

    url = f"sqlite:///{tmp_path_factory.mktemp('missed') / 'e.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("ETERNAL_DATABASE_URL", url)
    mp.setenv("ETERNAL_DATA__REFRESH_BEFORE_CYCLE", "false")
    engine = connect(url)
    import_dir(MarketStore(engine), shared_data)
    try:
        day = utc("2024-02-01T00:05:00Z")
        while day <= utc("2024-03-05T00:05:00Z"):
            daily_cycle(asof=day)
            day += timedelta(days=1)
        caught_up = funding_collection(asof="2024-03-06T08:05:00Z")     # 2024-03-06 00:05 was missed
        late = daily_cycle(asof="2024-03-04T00:05:00Z")                  # a late run of an older slot
        backfill = run_backfill(dataset, load_settings(), start=utc("2024-01-31"), end=utc("2024-03-07"),
                                progress=False)
    finally:
        mp.undo()
    return engine, caught_up, late, backfill, url


def fills_of(engine) -> pd.DataFrame:
    with engine.connect() as conn:
        f = pd.read_sql(select(FillRow), conn)
    return f.assign(ts=pd.to_datetime(f.ts, utc=True)).sort_values(["ts", "client_order_id", "trade_id"])


def test_a_missed_daily_run_still_stops_both_trend_btc_longs_on_the_day_btc_fell_through(timeline, dataset):
    engine, caught_up, _, backfill, _ = timeline
    assert float(dataset.daily("BTC/USDT:USDT").loc["2024-03-05", "low"]) < 59_200
    assert caught_up["closes"] == ["2024-03-05"]          # the missed close, processed by the funding run
    fills = fills_of(engine)
    stops = fills[fills.reason.isin(["hard_stop", "trailing_stop"]) & (fills.symbol == "BTC/USDT:USDT")]
    assert set(stops.sleeve) == {"trend-1", "trend-2"}
    assert set(stops.ts.dt.strftime("%Y-%m-%d")) == {"2024-03-05"}
    replay = backfill.trades[backfill.trades.reason.isin(["hard_stop", "trailing_stop"])
                             & (backfill.trades.symbol == "BTC/USDT:USDT")]
    assert list(stops.price) == pytest.approx(list(replay.price[pd.to_datetime(replay.timestamp) < "2024-03-06"]),
                                              rel=1e-12)


def test_every_settlement_is_booked_although_no_funding_run_ran_until_march_6(timeline, dataset):
    engine, _, _, backfill, _ = timeline
    with engine.connect() as conn:
        live = pd.read_sql(select(FundingPaymentRow), conn)
    live = live.assign(ts=pd.to_datetime(live.ts, utc=True))
    cut = utc("2024-03-06T08:00:01Z")
    replay = [p for p in backfill.funding if p.ts < cut]
    assert len(live) == len(replay) > 100
    assert live.amount.sum() == pytest.approx(sum(p.amount for p in replay), abs=1e-6)
    at_0108 = live[live.ts == pd.Timestamp("2024-03-01T08:00:00Z")]        # the tick the issue saw lost
    assert len(at_0108) > 0 and at_0108.amount.sum() == pytest.approx(
        sum(p.amount for p in replay if p.ts == utc("2024-03-01T08:00:00Z")), abs=1e-9)


def test_a_late_run_for_an_older_slot_sends_nothing_and_says_so(timeline):
    engine, _, late, _, _ = timeline
    assert late["events"] == 0 and late["orders"] == 0
    assert late["line"].startswith("nothing due: the ledger is at")


def test_an_explicit_asof_before_the_ledgers_clock_is_refused_in_one_line(timeline, monkeypatch, capsys):
    engine, _, _, _, url = timeline
    from eternal.cli import main

    monkeypatch.setenv("ETERNAL_DATABASE_URL", url)
    with engine.connect() as conn:
        before = conn.execute(select(func.count()).select_from(OrderRow)).scalar_one()
    assert main(["run", "daily", "--asof", "2023-06-01T00:05Z"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "before the ledger's clock" in err[0]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(OrderRow)).scalar_one() == before
