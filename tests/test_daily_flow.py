"""The daily-cycle flow end to end on the paper exchange, on SQLite and PostgreSQL."""
from __future__ import annotations

import pytest
from sqlalchemy import delete, func, select, update

from eternal.data.store import MarketStore
from eternal.errors import DataQualityError, InsufficientFunds, StaleDataError
from eternal.exchange.paper import PaperExchange
from eternal.models import Sleeve
from eternal.store.db import connect
from eternal.store.ledger import LedgerStore
from eternal.store.models import CandleRow, CycleRunRow, EngineStateRow, EventRow, FillRow, OrderRow

pytestmark = [pytest.mark.db, pytest.mark.flow]
ASOF = "2024-01-01T00:05:00Z"        # decides on the close of 2023-12-31


def load_market(engine, dataset, start: str, end: str) -> None:
    """Real BTC/ETH spot and perp daily candles and perp funding with start <= ts < end."""
    market = MarketStore(engine)
    for sym in ("BTC/USDT", "ETH/USDT", "BTC/USDT:USDT", "ETH/USDT:USDT"):
        df = dataset.daily(sym)
        market.upsert_candles(sym, "1d", df[(df.index >= start) & (df.index < end)])
    for sym in ("BTC/USDT:USDT", "ETH/USDT:USDT"):
        f = dataset.funding[sym]
        market.upsert_funding(sym, f[(f.index >= start) & (f.index <= end)])


@pytest.fixture
def db(db_url, dataset, monkeypatch, prefect_harness):
    """A database holding a year of real daily candles up to 2023-12-31, and settings pointing at it."""
    monkeypatch.setenv("ETERNAL_DATABASE_URL", db_url)
    engine = connect(db_url)
    load_market(engine, dataset, "2023-01-01", "2024-01-01")
    return engine


def run(asof: str = ASOF) -> dict:
    from flows.daily_cycle import daily_cycle

    return daily_cycle(asof=asof)


def count(engine, model, *where) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def exchange_orders(engine) -> dict:
    return LedgerStore(engine).load_exchange_state("paper")["orders"]


def test_first_cycle_buys_the_first_tranche_at_the_bid_with_maker_fee(db, dataset):
    report = run()
    btc_close = float(dataset.daily("BTC/USDT").loc["2023-12-31", "close"])   # 42,283.58
    eth_close = float(dataset.daily("ETH/USDT").loc["2023-12-31", "close"])   # 2,281.87
    assert (btc_close, eth_close) == (42283.58, 2281.87)
    tranche = 60_000 * 0.95 / 4
    books = LedgerStore(db).load_books()
    core = books[Sleeve.CORE]
    assert core.holdings["BTC"] == pytest.approx(tranche * 2 / 3 / btc_close)
    assert core.holdings["ETH"] == pytest.approx(tranche / 3 / eth_close)
    assert core.cash == pytest.approx(60_000 - tranche * 1.001)             # 0.10 % maker fee
    assert {s.value: b.cash for s, b in books.items() if s.value != "core"} == {
        "trend-1": 15_000.0, "trend-2": 5_000.0, "funding": 15_000.0, "tactical": 5_000.0}
    assert report["fills"] == 2 and report["sent"] == 2
    with db.connect() as conn:
        orders = conn.execute(select(OrderRow)).all()
        assert {o.status for o in orders} == {"filled"}
        assert all(len(o.client_order_id) <= 36 and o.post_only for o in orders)
        state = conn.execute(select(EngineStateRow.state).where(EngineStateRow.sleeve == "core")).scalar_one()
        assert state["phase"] == "INITIALIZING" and state["tranches_done"] == 1
        kinds = set(conn.execute(select(EventRow.kind)).scalars())
        assert {"core_phase", "core_tranche"} <= kinds
        run_row = conn.execute(select(CycleRunRow.status, CycleRunRow.summary)).one()
        assert run_row.status == "completed" and run_row.summary["fills"] == 2


def test_cycle_artifacts_show_portfolio_decisions_and_orders(db):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    run()

    async def read(key):
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    def latest(key):          # the session's server holds other tests' runs of the same day too
        return max(asyncio.run(read(key)), key=lambda a: a.created)

    md = latest("daily-cycle-2023-12-31")
    assert "| core | BTC |" in md.data and "tranche 1/4" in md.data
    table = latest("daily-cycle-2023-12-31-orders")
    assert "filled" in str(table.data) and "BTC/USDT" in str(table.data)


def test_rerunning_the_same_cycle_places_no_second_order(db):
    run()
    cash_after_first = LedgerStore(db).load_books()
    # The second run must re-decide the same orders: forget the engine state, as if the first
    # run had crashed right after execution, before recording its state.
    with db.begin() as conn:
        conn.execute(delete(EngineStateRow))
    report = run()
    assert report["sent"] == 0 and report["orders"] == 2
    assert len(exchange_orders(db)) == 2
    assert count(db, OrderRow) == 2 and count(db, FillRow) == 2
    again = LedgerStore(db).load_books()
    assert {s: b.cash for s, b in again.items()} == {s: b.cash for s, b in cash_after_first.items()}
    # and a plain third run of the same day decides nothing new
    assert run()["sent"] == 0 and count(db, FillRow) == 2


def test_failure_after_the_exchange_accepted_is_retried_without_a_second_order(db, monkeypatch):
    original = PaperExchange.place_order
    calls = []

    def lost_response(self, cid, intent, now):
        order = original(self, cid, intent, now)
        calls.append(cid)
        if len(calls) == 1:
            raise ConnectionError("response lost after the exchange accepted the order")
        return order

    monkeypatch.setattr(PaperExchange, "place_order", lost_response)
    report = run()
    assert len(calls) == 2 and len(set(calls)) == 2          # each order sent exactly once
    assert len(exchange_orders(db)) == 2
    assert count(db, OrderRow, OrderRow.status == "filled") == 2 and count(db, FillRow) == 2
    assert count(db, EventRow, EventRow.kind == "order_recovered") == 1
    assert report["fills"] == 2


def test_insufficient_funds_fails_the_run_with_an_alert_and_no_retry(db, monkeypatch):
    original = PaperExchange.place_order
    calls = []

    def broke(self, cid, intent, now):
        calls.append(cid)
        self.books[intent.sleeve].cash = 0.0                  # the account was emptied elsewhere
        return original(self, cid, intent, now)

    monkeypatch.setattr(PaperExchange, "place_order", broke)
    with pytest.raises(InsufficientFunds, match="core cannot buy"):
        run()
    assert len(calls) == 1                                    # not retried
    assert count(db, EventRow, EventRow.kind == "insufficient_funds", EventRow.level == "alert") == 1
    assert count(db, OrderRow, OrderRow.status == "rejected") == 1
    assert count(db, FillRow) == 0 and count(db, EngineStateRow) == 0
    with db.connect() as conn:
        assert conn.execute(select(CycleRunRow.status)).scalar_one() == "failed"


def test_bad_candle_stops_the_cycle_before_any_decision(db):
    with db.begin() as conn:   # 2023-12-20: high pushed below the close
        conn.execute(update(CandleRow).where(CandleRow.symbol == "ETH/USDT",
                                             CandleRow.ts == _ts("2023-12-20")).values(high=1.0))
    with pytest.raises(DataQualityError) as err:
        run()
    msg = str(err.value)
    assert "ETH/USDT" in msg and "high >= max(open, close)" in msg and "2023-12-20" in msg
    assert count(db, EventRow, EventRow.kind == "data_quality_failed") == 1
    assert count(db, OrderRow) == 0 and count(db, EngineStateRow) == 0


def test_stale_data_fails_the_cycle(db):
    with pytest.raises(StaleDataError, match="BTC/USDT"):
        run("2024-01-04T00:05:00Z")                            # the 2024-01-03 candle is missing
    assert count(db, OrderRow) == 0


def _ts(day: str):
    from eternal.models import utc

    return utc(day)


def test_staking_is_applied_once_across_a_crash_retry_and_a_rerun_and_rewards_match(db, dataset, monkeypatch):
    """CORE steady at target weights with a 3 % APY: it stakes all free ETH. A crash after the
    exchange staked, the task's retry, and a re-run of the same cycle leave our ledger equal to
    the exchange's book, to the last bit; the next day's reward is paid once on both."""
    from eternal.models import SleeveBook, utc
    from eternal.store.models import EngineStateRow
    from eternal.store.upsert import upsert

    monkeypatch.setenv("ETERNAL_CORE__STAKING_APY", "0.03")
    ledger = LedgerStore(db)
    weights = {s: w for s, w in zip(Sleeve, (0.60, 0.15, 0.05, 0.15, 0.05))}
    ledger.initialise(100_000.0, weights, utc("2023-12-31"))
    btc = float(dataset.daily("BTC/USDT").loc["2023-12-31", "close"])
    eth = float(dataset.daily("ETH/USDT").loc["2023-12-31", "close"])
    core = SleeveBook(Sleeve.CORE, 3_000.0, {"BTC": 38_000.0 / btc, "ETH": 19_000.0 / eth})
    ledger.save_books([core], utc("2023-12-31"))
    with db.begin() as conn:
        upsert(conn, EngineStateRow.__table__, [{"sleeve": "core", "updated_at": utc("2023-12-31"), "state": {
            "phase": "EARN_OPTIMIZING", "start_day": "2023-11-01T00:00:00+00:00", "tranches_done": 4,
            "tranche_usdt": 1.0, "quarter_handled": "2023-12-31T00:00:00+00:00"}}], ["sleeve"])

    original, crashed = PaperExchange.stake, []

    def stake_then_crash(self, sleeve, asset, qty, key=None):
        moved = original(self, sleeve, asset, qty, key)
        if not crashed:
            crashed.append(moved)
            raise ConnectionError("lost after the exchange staked")
        return moved

    monkeypatch.setattr(PaperExchange, "stake", stake_then_crash)
    run()                                                   # crash, retry, done
    with db.begin() as conn:                                # re-run the same cycle from scratch
        conn.execute(delete(EngineStateRow))
        upsert(conn, EngineStateRow.__table__, [{"sleeve": "core", "updated_at": utc("2023-12-31"), "state": {
            "phase": "EARN_OPTIMIZING", "start_day": "2023-11-01T00:00:00+00:00", "tranches_done": 4,
            "tranche_usdt": 1.0, "quarter_handled": "2023-12-31T00:00:00+00:00"}}], ["sleeve"])
    run()
    exchange = PaperExchange.from_state(ledger.load_exchange_state("paper"), None, None)
    ours = ledger.load_books()[Sleeve.CORE]
    assert crashed == [19_000.0 / eth]                      # all free ETH, staked once
    assert ours.staked == exchange.books[Sleeve.CORE].staked == {"ETH": 19_000.0 / eth}
    assert ours.holdings["ETH"] == 0.0

    load_market(db, dataset, "2024-01-01", "2024-01-02")    # the next day: one day of rewards
    import tasks.execution as task_module

    real_execute, boom = task_module.execute, []

    def fail_once(*args, **kwargs):              # the reward is paid at the exchange, then a failure
        if not boom:
            boom.append(True)
            raise ConnectionError("lost after the staking reward was paid")
        return real_execute(*args, **kwargs)

    monkeypatch.setattr(task_module, "execute", fail_once)
    run("2024-01-02T00:05:00Z")
    assert boom == [True]
    exchange = PaperExchange.from_state(ledger.load_exchange_state("paper"), None, None)
    ours = ledger.load_books()[Sleeve.CORE]
    assert ours.staked["ETH"] == exchange.books[Sleeve.CORE].staked["ETH"] == pytest.approx(
        19_000.0 / eth * (1 + 0.03 / 365))
    assert count(db, EventRow, EventRow.kind == "staking_reward") == 1


def test_trend_position_stop_is_kept_at_the_exchange_and_fires_on_the_next_days_range(db, dataset):
    """Paper mode, 2024-08: TREND-2 shorts BTC on the close of 08-07 (filled at the mark, 55,102.90);
    the next cycle sets the hard stop at the exchange (fill + 2 x ATR of 08-07, valid from 08-09,
    the day after the fill); the cycle after books the stop that fired on 08-09's range, at the
    gap open 61,659.80 -- the same fill the replay makes."""
    from eternal.models import PERP_SYMBOLS
    from eternal.store.models import FillRow

    load_market(db, dataset, "2023-08-01", "2024-08-10")
    run("2024-08-08T00:05:00Z")
    books = LedgerStore(db).load_books()
    pos = books[Sleeve.TREND_2].perps[PERP_SYMBOLS["BTC"]]
    assert pos.qty < 0 and pos.entry_price == 55_102.9 and pos.margin == pytest.approx(-pos.qty * 55_102.9 / 2)

    run("2024-08-09T00:05:00Z")
    state = LedgerStore(db).load_exchange_state("paper")
    stop = PaperExchange.from_state(state, None, None).stops[(Sleeve.TREND_2, PERP_SYMBOLS["BTC"])]
    from eternal.indicators import perp_market

    m = perp_market("BTC", PERP_SYMBOLS["BTC"], dataset.daily(PERP_SYMBOLS["BTC"]))
    atr_0807 = float(m.atr[m.index_of(_ts("2024-08-07"))])
    assert stop.reason == "hard_stop" and stop.price == pytest.approx(55_102.9 + 2 * atr_0807)
    assert stop.price == pytest.approx(61_467.15, abs=0.01)
    assert PERP_SYMBOLS["BTC"] in LedgerStore(db).load_books()[Sleeve.TREND_2].perps    # not on 08-08

    run("2024-08-10T00:05:00Z")
    with db.connect() as conn:
        fired = conn.execute(select(FillRow.price, FillRow.reason, FillRow.sleeve).where(
            FillRow.reason == "hard_stop")).all()
    assert [(f.price, f.sleeve) for f in fired] == [(61_659.8, "trend-2")]
    assert count(db, EventRow, EventRow.kind == "stop_filled") == 1
    ours = LedgerStore(db).load_books()
    theirs = PaperExchange.from_state(LedgerStore(db).load_exchange_state("paper"), None, None).books
    for sleeve in (Sleeve.TREND_1, Sleeve.TREND_2):
        assert ours[sleeve].cash == pytest.approx(theirs[sleeve].cash, abs=1e-9)
        assert {s: p.qty for s, p in ours[sleeve].perps.items()} == {s: p.qty for s, p in theirs[sleeve].perps.items()}


def test_rerun_never_tests_new_stops_on_the_old_day_and_a_retry_books_a_fired_stop(db, dataset, monkeypatch):
    """Re-running the 2024-08-09 cycle must not test the stop set at 08-08's close (61,467.15)
    against 08-08's own range (high 62,737.20); and when our ledger fails to save the stop fill
    the exchange already made on 08-09, the task's retry still books it."""
    from eternal.models import PERP_SYMBOLS
    from eternal.store.ledger import LedgerStore as Store
    from eternal.store.models import FillRow

    load_market(db, dataset, "2023-08-01", "2024-08-10")
    run("2024-08-08T00:05:00Z")
    run("2024-08-09T00:05:00Z")
    run("2024-08-09T00:05:00Z")                               # re-run of the same cycle
    assert PERP_SYMBOLS["BTC"] in LedgerStore(db).load_books()[Sleeve.TREND_2].perps

    original, failed = Store.save_execution, []

    def flaky(self, orders, fills, *args, **kwargs):
        if any(f.reason == "hard_stop" for f in fills) and not failed:
            failed.append(True)
            raise ConnectionError("database went away while booking the stop")
        return original(self, orders, fills, *args, **kwargs)

    monkeypatch.setattr(Store, "save_execution", flaky)
    run("2024-08-10T00:05:00Z")
    assert failed == [True]
    with db.connect() as conn:
        fired = conn.execute(select(FillRow.price).where(FillRow.reason == "hard_stop")).scalars().all()
    assert fired == [61_659.8]
    assert PERP_SYMBOLS["BTC"] not in LedgerStore(db).load_books()[Sleeve.TREND_2].perps or \
        LedgerStore(db).load_books()[Sleeve.TREND_2].perps[PERP_SYMBOLS["BTC"]].entry_price != 55_102.9


def test_a_sleeve_weighted_zero_is_not_decided_for(db, monkeypatch):
    """CORE at 0 (its 60 % moved to FUNDING): the cycle runs the TREND sleeves and skips CORE."""
    monkeypatch.setenv("ETERNAL_WEIGHTS__CORE", "0")
    monkeypatch.setenv("ETERNAL_WEIGHTS__FUNDING", "0.75")
    report = run()
    assert report["orders"] == 0
    assert count(db, EngineStateRow, EngineStateRow.sleeve == "core") == 0
    assert LedgerStore(db).load_books()[Sleeve.CORE].cash == 0.0


def test_a_second_overlapping_daily_cycle_run_executes_no_orders(db):
    """Two runs of the same cycle at once (a manual trigger beside the schedule): the order-placing
    steps are serialised and the second finds the first's orders by their ids: 2 orders, not 4."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda _: run(), range(2)))
    assert sorted(r["sent"] for r in reports) == [0, 2]
    assert len(exchange_orders(db)) == 2 and count(db, OrderRow) == 2 and count(db, FillRow) == 2
