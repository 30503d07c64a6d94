"""The daily-cycle flow end to end: the driver on the paper exchange in rows, on SQLite and PostgreSQL.

A portfolio starts with its first run. The run of 2024-01-02 00:05 decides on the close of
2024-01-01 (BTC 44,179.55, ETH 2,352.04); its orders rest until the next event that can fill them,
the open of 2024-01-02 at 00:00 (BTC 44,179.55, ETH 2,352.05), which the same run processes because
the 2024-01-02 candle is stored.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import update

from eternal.config import load_settings
from eternal.errors import DataQualityError, StaleDataError
from eternal.exchange.paper import PaperExchange
from eternal.indicators import perp_market
from eternal.instruments import default as trading_rules
from eternal.models import PERP_SYMBOLS, Sleeve, utc
from eternal.store.db import connect
from eternal.store.driver_store import SqlLedger, open_paper_exchange
from eternal.store.ledger import LedgerStore
from eternal.store.models import (
    CandleRow,
    CycleRunRow,
    DriverStateRow,
    EngineStateRow,
    EventRow,
    FillRow,
    OrderRow,
    PaperOrderRow,
    PlanRow,
)
from tests.flow_support import (
    count,
    daily,
    latest_artifact,
    ledger_vs_exchange,
    rows,
    store_market,
    table_rows,
)

pytestmark = [pytest.mark.db, pytest.mark.flow]
FIRST = "2024-01-02T00:05:00Z"         # the portfolio's first run: decides on the close of 2024-01-01
TRANCHE = 60_000 * 0.95 / 4            # CORE: 95 % of its 60,000 USDT in 4 tranches (spec 2)
EQUAL = {s.value: [] for s in Sleeve}   # ledger_vs_exchange of books that agree


@pytest.fixture
def db(db_url, dataset, monkeypatch, prefect_harness):
    """Every real series from 2023-01-01 to 2024-01-09 stored, and the settings pointing at it."""
    monkeypatch.setenv("ETERNAL_DATABASE_URL", db_url)
    engine = connect(db_url)
    store_market(engine, dataset, "2023-01-01", "2024-01-10")
    return engine


def day_prices(dataset, day: str, column: str) -> dict[str, float]:
    return {a: float(dataset.daily(f"{a}/USDT").loc[day, column]) for a in ("BTC", "ETH")}


def test_first_cycle_buys_cores_first_tranche_at_the_next_days_open_at_the_maker_fee(db, dataset):
    report = daily(FIRST)
    close, open_ = day_prices(dataset, "2024-01-01", "close"), day_prices(dataset, "2024-01-02", "open")
    assert close == {"BTC": 44_179.55, "ETH": 2_352.04} and open_ == {"BTC": 44_179.55, "ETH": 2_352.05}
    assert report["closes"] == ["2024-01-01"]
    # 2:1, sized at the close, down to each spot step (Bybit: 0.000001 BTC, 0.00001 ETH)
    rules = trading_rules()
    qty = {"BTC": rules["BTC/USDT"].floor_qty(TRANCHE * 2 / 3 / close["BTC"]),
           "ETH": rules["ETH/USDT"].floor_qty(TRANCHE / 3 / close["ETH"])}
    fills = {f.symbol: f for f in rows(db, FillRow, where=[FillRow.sleeve == "core"])}
    assert set(fills) == {"BTC/USDT", "ETH/USDT"}
    for a in ("BTC", "ETH"):
        f = fills[f"{a}/USDT"]
        assert (utc(f.ts), f.price, f.liquidity, f.side) == (utc("2024-01-02"), open_[a], "maker", "buy")
        assert f.qty == pytest.approx(qty[a], rel=1e-12)
        # 0.10 % maker, charged in the coin bought (as Bybit charges a spot buy)
        assert (f.fee, f.fee_asset) == (pytest.approx(qty[a] * 0.001, rel=1e-12), a)
    core = LedgerStore(db).load_books()[Sleeve.CORE]
    assert core.holdings == pytest.approx({a: q * 0.999 for a, q in qty.items()}, rel=1e-12)
    assert core.cash == pytest.approx(60_000 - sum(qty[a] * open_[a] for a in qty), rel=1e-12)
    orders = rows(db, OrderRow, where=[OrderRow.sleeve == "core"])
    assert {(o.symbol, o.order_type, o.post_only, o.limit_price, o.status, o.flow) for o in orders} == {
        ("BTC/USDT", "limit", True, close["BTC"], "filled", "daily-close"),
        ("ETH/USDT", "limit", True, close["ETH"], "filled", "daily-close")}
    assert all(len(o.client_order_id) <= 36 for o in orders)
    state = LedgerStore(db).load_states()[Sleeve.CORE]
    assert state["phase"] == "INITIALIZING" and state["tranches_done"] == 1
    assert [r.status for r in rows(db, CycleRunRow.status)] == ["completed"]
    assert ledger_vs_exchange(db) == EQUAL

    # the run's artifacts: the portfolio at the close with the decisions, and the orders
    md = latest_artifact("daily-cycle-2024-01-01").data
    assert "# Daily cycle, close of 2024-01-01 UTC" in md
    # the books at the close (the tranche's orders rest until the next open): its equity record
    assert "Portfolio value: **100,000.00 USDT**" in md and "| core | 60,000.00 | 60,000.00 | 60.00% | 60.00% |" in md
    assert f"| core | BTC/USDT | buy | {qty['BTC']:.8g} | filled |" in md     # the run's orders
    assert "- `core_tranche` (core): tranche 1/4 on day 0: 14250.00 USDT split 2:1 BTC:ETH" in md
    table = table_rows(latest_artifact("daily-cycle-orders"))
    ours = {r.client_order_id for r in rows(db, OrderRow.client_order_id)}
    assert {r["client_order_id"] for r in table} == ours and len(ours) == 8
    assert {r["symbol"]: (r["status"], r["avg_price"], r["reason"]) for r in table if r["sleeve"] == "core"} == {
        "BTC/USDT": ("filled", open_["BTC"], "tranche 1/4"), "ETH/USDT": ("filled", open_["ETH"], "tranche 1/4")}


def books_of(engine) -> dict:
    return {s: (b.cash, dict(b.holdings), {k: p.qty for k, p in b.perps.items()})
            for s, b in LedgerStore(engine).load_books().items()}


def test_rerunning_the_same_slot_places_no_second_order(db):
    daily(FIRST)
    before = books_of(db)
    again = daily(FIRST)
    assert again["line"] == "nothing due: the ledger is at open of 2024-01-02"
    assert (again["events"], again["orders"], again["closes"]) == (0, 0, [])
    assert count(db, OrderRow) == count(db, PaperOrderRow) == count(db, FillRow) == 8
    assert books_of(db) == before
    assert [r.status for r in rows(db, CycleRunRow.status)] == ["completed", "completed"]


def test_a_response_lost_after_the_exchange_accepted_an_order_is_retried_without_a_second_order(db, monkeypatch):
    original, sent = PaperExchange.place_order, []

    def lost_response(self, cid, intent, now):
        order = original(self, cid, intent, now)
        sent.append(cid)
        if len(sent) == 1:
            raise ConnectionError("response lost after the exchange accepted the order")
        return order

    monkeypatch.setattr(PaperExchange, "place_order", lost_response)
    report = daily(FIRST)
    assert len(sent) == len(set(sent)) == 8                     # each order sent exactly once
    assert report["finished_plan"] == "2024-01-02T00:00:00|0"   # the retry finished the stored plan
    recovered = rows(db, EventRow.data, where=[EventRow.kind == "order_recovered"])
    assert [r.data["client_order_id"] for r in recovered] == [sent[0]]
    assert count(db, OrderRow) == count(db, PaperOrderRow) == count(db, FillRow) == 8
    assert ledger_vs_exchange(db) == EQUAL
    assert [r.status for r in sorted(rows(db, CycleRunRow.id, CycleRunRow.status))] == ["failed", "completed"]


def test_a_bad_candle_stops_the_run_with_a_data_quality_error_before_any_decision(db):
    daily(FIRST)
    clock, plans, orders, events = SqlLedger(db).clock(), count(db, PlanRow), count(db, OrderRow), count(db, EventRow)
    with db.begin() as conn:     # the candles of 2024-01-02 (the next close) arrive corrupt
        for symbol, values in (("ETH/USDT", {"close": -2_355.34}),                        # real: 2,355.34
                               ("BTC/USDT:USDT", {"close": 44_230.2 * 1.7, "high": 44_230.2 * 1.7})):  # +70 %
            conn.execute(update(CandleRow).where(CandleRow.symbol == symbol, CandleRow.timeframe == "1d",
                                                 CandleRow.ts == utc("2024-01-02")).values(**values))
    with pytest.raises(DataQualityError) as err:
        daily("2024-01-03T00:05:00Z")                           # would decide on the close of 2024-01-02
    expected = ["ETH/USDT: close > 0 failed on 2024-01-02T00:00:00+00:00",
                "BTC/USDT:USDT: |close-to-close move| < 0.6 failed on 2024-01-02T00:00:00+00:00"]
    assert type(err.value) is DataQualityError and all(e in str(err.value) for e in expected)
    assert clock == SqlLedger(db).clock() == "2024-01-02T00:00:00|2"   # not one event processed
    assert count(db, PlanRow) == plans and count(db, OrderRow) == orders == count(db, PaperOrderRow)
    failed = count(db, CycleRunRow, CycleRunRow.status == "failed")
    alerts = rows(db, EventRow.message, where=[EventRow.kind == "data_quality_failed", EventRow.level == "alert"])
    assert failed >= 1 and len(alerts) == failed                # one alert per failed attempt ...
    assert all(e in a.message for a in alerts for e in expected)
    assert count(db, EventRow) == events + len(alerts)          # ... and no other event


def test_stale_data_fails_the_run_by_the_freshness_rule(db_url, dataset, monkeypatch, prefect_harness):
    monkeypatch.setenv("ETERNAL_DATABASE_URL", db_url)
    engine = connect(db_url)
    store_market(engine, dataset, "2023-01-01", "2024-01-02")   # the feed stopped after 2024-01-01
    with pytest.raises(StaleDataError) as err:
        daily("2024-01-04T00:05:00Z")                           # needs the close of 2024-01-03
    assert isinstance(err.value, DataQualityError)
    assert "last candle is the last closed UTC day 2024-01-03T00:00:00+00:00 failed on 2024-01-01" in str(err.value)
    assert {(f["series"], f["rule"]) for f in err.value.failures} == {
        (sym, "last_closed_day") for sym in ("BTC/USDT", "ETH/USDT", "SOL/USDT",
                                             "BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT")}
    assert count(engine, DriverStateRow) == 0 and count(engine, PlanRow) == 0 and count(engine, OrderRow) == 0


def test_eth_is_staked_once_although_the_first_commit_failed_and_a_days_reward_follows(db, monkeypatch):
    """CORE in one tranche reaches EARN_OPTIMIZING on the close of 2024-01-01 and buys its ETH at the
    open of 2024-01-02; at a 3 % APY the close of 2024-01-02 stakes all of it. Our ledger fails to
    commit that close once, after the exchange staked: the task's retry finishes the stored plan and
    the stake counts once on both sides. The close of 2024-01-03 pays one day of reward, once."""
    monkeypatch.setenv("ETERNAL_CORE__TRANCHES", "1")
    monkeypatch.setenv("ETERNAL_CORE__STAKING_APY", "0.03")
    daily(FIRST)
    eth = LedgerStore(db).load_books()[Sleeve.CORE].holdings["ETH"]
    # the qty bought less its 0.10 % maker fee, charged in ETH
    bought = trading_rules()["ETH/USDT"].floor_qty(60_000 * 0.95 / 3 / 2_352.04)
    assert eth == pytest.approx(bought * 0.999, rel=1e-12)

    original, failed = SqlLedger.commit, []

    def commit_lost_once(self, p, batch):
        if batch.plan_key == "2024-01-03T00:00:00|0" and not failed:
            failed.append(batch.plan_key)
            raise ConnectionError("database lost after the exchange staked")
        return original(self, p, batch)

    monkeypatch.setattr(SqlLedger, "commit", commit_lost_once)
    report = daily("2024-01-03T00:05:00Z")
    assert failed and report["finished_plan"] == "2024-01-03T00:00:00|0"
    fees = load_settings().fees
    ours, venue = LedgerStore(db).load_books()[Sleeve.CORE], open_paper_exchange(db, fees).books[Sleeve.CORE]
    assert ours.staked == venue.staked == {"ETH": pytest.approx(eth, rel=1e-12)}
    assert ours.holdings["ETH"] == venue.holdings["ETH"] == 0.0

    daily("2024-01-04T00:05:00Z")
    ours, venue = LedgerStore(db).load_books()[Sleeve.CORE], open_paper_exchange(db, fees).books[Sleeve.CORE]
    assert ours.staked["ETH"] == venue.staked["ETH"] == pytest.approx(eth * (1 + 0.03 / 365), rel=1e-12)
    rewards = rows(db, EventRow.data, where=[EventRow.kind == "staking_reward"])
    assert [r.data["qty"] for r in rewards] == [pytest.approx(eth * 0.03 / 365, rel=1e-9)]
    assert ledger_vs_exchange(db) == EQUAL


@pytest.fixture
def august_2024(db_url, dataset, monkeypatch, prefect_harness):
    """Every real series from 2023-08-01 to 2024-08-11."""
    monkeypatch.setenv("ETERNAL_DATABASE_URL", db_url)
    engine = connect(db_url)
    store_market(engine, dataset, "2023-08-01", "2024-08-12")
    return engine


BTC_PERP = PERP_SYMBOLS["BTC"]


def test_a_trend_stop_sent_with_the_entry_fires_on_the_fill_days_range_and_is_booked_once(august_2024, dataset,
                                                                                          monkeypatch):
    """TREND-2 decides a BTC short on the close of 2024-08-07 (55,102.90) and sends its hard stop
    with the entry: that close + 2 ATR(08-07) = 61,467.15. The entry fills at the open of 08-08,
    55,102.90, guarded from that fill on: 08-08's own high (62,737.20) reaches the stop, the
    exchange fills it at its level on 08-08's range, and the close of 08-08 books it, once,
    although our first commit of that close fails. (When stops were only set at the first close
    after the fill, this position lived through 08-08 and was stopped at 08-09's open, 61,659.80.)"""
    db, perp = august_2024, dataset.daily(BTC_PERP)
    daily("2024-08-08T00:05:00Z")
    pos = LedgerStore(db).load_books()[Sleeve.TREND_2].perps[BTC_PERP]
    assert pos.qty < 0 and pos.entry_price == float(perp.loc["2024-08-08", "open"]) == 55_102.9
    stop = open_paper_exchange(db, load_settings().fees).stops[(Sleeve.TREND_2, BTC_PERP)]
    m = perp_market("BTC", BTC_PERP, perp[(perp.index >= "2023-08-01") & (perp.index < "2024-08-12")])
    atr_0807 = float(m.atr[m.index_of(utc("2024-08-07"))])
    assert float(perp.loc["2024-08-07", "close"]) == 55_102.9
    assert stop.reason == "hard_stop" and stop.price == pytest.approx(55_102.9 + 2 * atr_0807, rel=1e-12)
    assert stop.price == pytest.approx(61_467.15, abs=0.01)
    assert float(perp.loc["2024-08-08", "open"]) < stop.price < float(perp.loc["2024-08-08", "high"]) == 62_737.2

    original, failed = SqlLedger.commit, []

    def commit_lost_once(self, p, batch):
        if any(f.reason == "hard_stop" for f in batch.fills) and not failed:
            failed.append(batch.due.key)
            raise ConnectionError("database went away while booking the stop")
        return original(self, p, batch)

    monkeypatch.setattr(SqlLedger, "commit", commit_lost_once)
    report = daily("2024-08-09T00:05:00Z")
    assert failed == ["2024-08-09T00:00:00|0"] and report["finished_plan"] == failed[0]   # the close of 08-08
    assert report["closes"] == ["2024-08-08"]
    fired = rows(db, FillRow.ts, FillRow.sleeve, FillRow.side, FillRow.qty, FillRow.price,
                 where=[FillRow.reason == "hard_stop"])
    assert [(utc(f.ts), f.sleeve, f.side) for f in fired] == [(utc("2024-08-08"), "trend-2", "buy")]
    assert fired[0].price == pytest.approx(stop.price, rel=1e-12)       # inside the day's range: at the stop
    assert fired[0].qty == pytest.approx(-pos.qty, rel=1e-12)
    assert count(db, EventRow, EventRow.kind == "stop_filled", EventRow.sleeve == "trend-2") == 1
    assert ledger_vs_exchange(db) == EQUAL


def test_a_sleeve_weighted_zero_is_not_decided_for(db, dataset, monkeypatch):
    """CORE at 0, its 60 % moved to FUNDING: nothing is decided for CORE, FUNDING hedges with 5 % of 75,000."""
    monkeypatch.setenv("ETERNAL_WEIGHTS__CORE", "0")
    monkeypatch.setenv("ETERNAL_WEIGHTS__FUNDING", "0.75")
    report = daily(FIRST)
    assert report["closes"] == ["2024-01-01"] and report["orders"] > 0
    assert count(db, OrderRow, OrderRow.sleeve == "core") == 0
    assert count(db, EngineStateRow, EngineStateRow.sleeve == "core") == 0
    assert count(db, EventRow, EventRow.sleeve == "core") == 0
    core = LedgerStore(db).load_books()[Sleeve.CORE]
    assert core.cash == 0.0 and not any(core.holdings.values())
    (hedge,) = rows(db, FillRow.qty, FillRow.price, where=[FillRow.sleeve == "funding", FillRow.symbol == "BTC/USDT"])
    assert hedge.price == float(dataset.daily("BTC/USDT").loc["2024-01-02", "open"])
    # both legs in whole steps of the perp (0.001 BTC)
    assert hedge.qty == pytest.approx(trading_rules()["BTC/USDT:USDT"].floor_qty(0.05 * 75_000 / hedge.price), rel=1e-12)


def test_two_overlapping_runs_of_the_same_slot_execute_no_duplicate_order(db):
    """A manual trigger beside the schedule: the driver lock serialises them, the second finds
    the ledger past its slot: 8 orders, not 16."""
    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda _: daily(FIRST), range(2)))
    assert sorted(r["events"] for r in reports) == [0, 3]
    assert "nothing due: the ledger is at open of 2024-01-02" in {r["line"] for r in reports}
    assert count(db, OrderRow) == count(db, PaperOrderRow) == count(db, FillRow) == 8
    assert len({r.trade_id for r in rows(db, FillRow.trade_id)}) == 8
    assert ledger_vs_exchange(db) == EQUAL
