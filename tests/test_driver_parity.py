"""Parity: the Prefect flows on their real crons, day after day, trade exactly like `eternal backfill`.

Window 2021-03-03 00:05 .. 2021-04-03 00:05 (32 days, the 2021-04-01 quarter start inside): the
daily cycle at 00:05, funding collection at 00:05, 08:05 and 16:05, the quarterly rebalance at
00:15 on 2021-04-01; the funding run goes first at 00:05 on odd days and second on even days (the
two share a slot in no fixed order). The portfolio starts with the first run, so its first
decision is on the close of 2021-03-02, as a backfill started on 2021-03-02.
"""
from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
import pytest
from sqlalchemy import select

from eternal.config import load_settings
from eternal.data.importer import import_dir
from eternal.data.store import MarketStore
from eternal.models import utc
from eternal.replay import run_backfill
from eternal.store.db import connect
from eternal.store.models import EquitySnapshotRow, FillRow, FundingPaymentRow, OrderRow

pytestmark = [pytest.mark.db, pytest.mark.flow]
FIRST_RUN = utc("2021-03-03T00:05:00Z")
LAST_RUN = utc("2021-04-03T00:05:00Z")


def cron_slots(first: datetime, last: datetime) -> list[tuple[datetime, str]]:
    """(time, flow) of every scheduled run from `first` to `last`, in the order they start."""
    out, day = [], first.replace(hour=0, minute=0)
    while day <= last:
        at_0005 = ["funding", "daily"] if day.day % 2 else ["daily", "funding"]
        out += [(day + timedelta(minutes=5), f) for f in at_0005]
        if day.day == 1 and day.month in (1, 4, 7, 10):
            out.append((day + timedelta(minutes=15), "quarterly"))
        out += [(day + timedelta(hours=8, minutes=5), "funding"), (day + timedelta(hours=16, minutes=5), "funding")]
        day += timedelta(days=1)
    return [(t, f) for t, f in out if first <= t <= last]


def run_flows(slots) -> None:
    from flows.daily_cycle import daily_cycle
    from flows.funding_collection import funding_collection
    from flows.quarterly_rebalance import quarterly_rebalance

    flows = {"daily": daily_cycle, "funding": funding_collection, "quarterly": quarterly_rebalance}
    for at, name in slots:
        flows[name](asof=at)


@pytest.fixture(scope="module")
def parity(tmp_path_factory, shared_data, dataset, prefect_harness):
    """The live flows over the window on SQLite, and the backfill of the same days."""
    tmp = tmp_path_factory.mktemp("parity")
    url = f"sqlite:///{tmp / 'live.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("ETERNAL_DATABASE_URL", url)
    mp.setenv("ETERNAL_DATA__REFRESH_BEFORE_CYCLE", "false")
    try:
        engine = connect(url)
        import_dir(MarketStore(engine), shared_data)
        run_flows(cron_slots(FIRST_RUN, LAST_RUN))
        backfill = run_backfill(dataset, load_settings(), start=utc("2021-03-02"), end=utc("2021-04-03"),
                                progress=False)
    finally:
        mp.undo()
    with engine.connect() as conn:
        fills = pd.read_sql(select(FillRow), conn)
        orders = pd.read_sql(select(OrderRow), conn)
        equity = pd.read_sql(select(EquitySnapshotRow), conn)
        funding = pd.read_sql(select(FundingPaymentRow), conn)
    return fills, orders, equity, funding, backfill


def test_flows_on_their_crons_fill_exactly_the_backfills_orders(parity):
    fills, _, _, _, backfill = parity
    end = "2021-04-03"
    live = fills.assign(ts=pd.to_datetime(fills.ts, utc=True)).sort_values(["ts", "client_order_id", "trade_id"])
    live = live[live.ts < end]
    replay = backfill.trades[backfill.trades.reason != "end"].copy()
    replay["ts"] = pd.to_datetime(replay.timestamp, utc=True)
    replay = replay.sort_values(["ts", "client_order_id"])
    assert len(live) == len(replay) > 50           # every sleeve trades in the window
    assert set(live.sleeve) == {"core", "trend-1", "trend-2", "funding", "tactical"}
    for col in ("client_order_id", "sleeve", "symbol", "side"):
        assert list(live[col]) == list(replay[col]), col
    assert list(live.ts) == list(replay.ts)
    assert list(live.fee_asset) == list(replay.fee_asset)      # a spot buy's in the coin bought
    live = live.assign(fee=live.fee.where(live.fee_asset == "USDT", live.fee * live.price))   # trades.csv's USDT
    for col in ("qty", "price", "fee"):
        assert live[col].to_numpy() == pytest.approx(replay[col].to_numpy(), rel=1e-9), col


def test_flows_hold_the_backfills_equity_per_sleeve_at_every_close(parity):
    _, _, equity, _, backfill = parity
    live = equity.assign(day=pd.to_datetime(equity.day, utc=True)).pivot(index="day", columns="sleeve",
                                                                         values="equity")
    replay = backfill.equity.drop(columns="total").iloc[:-1]     # its last close sold everything ("end")
    live = live.loc[replay.index, replay.columns]
    assert len(replay) == 31                   # the closes of 2021-03-02 .. 2021-04-01
    assert (live - replay).abs().to_numpy().max() < 0.01


def test_flows_book_every_settlement_the_backfill_books(parity):
    _, _, _, funding, backfill = parity
    live = funding.assign(ts=pd.to_datetime(funding.ts, utc=True))
    live = live[live.ts < "2021-04-03"]
    replay = [p for p in backfill.funding if p.ts < utc("2021-04-03")]
    assert len(live) == len(replay) > 150
    assert live.amount.sum() == pytest.approx(sum(p.amount for p in replay), abs=1e-6)


def test_the_quarter_start_rebalances_once_before_core_decides(parity):
    _, orders, _, _, backfill = parity
    quarterly = [e for e in backfill.events if e.kind == "quarterly_rebalance"]
    assert [f"{e.ts:%Y-%m-%d}" for e in quarterly] == ["2021-04-01"]
    assert set(orders.flow) <= {"daily-close", "funding"}
