"""The database: schema through Alembic, UTC datetimes, real market data, the ledger repository.

Every test runs twice, on a fresh SQLite file and on a reset PostgreSQL database (`db_url`).
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import func, insert, inspect, select, text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session

from eternal import ledger as books_ledger
from eternal.config import FeeParams, SleeveWeights
from eternal.data.importer import import_dir
from eternal.data.store import MarketStore
from eternal.exchange.paper import FillPolicy, PaperExchange
from eternal.execution import client_order_id, execute
from eternal.instruments import default as trading_rules
from eternal.models import (
    Event,
    Market,
    OrderIntent,
    OrderStatus,
    OrderType,
    Quote,
    Side,
    Sleeve,
    SleeveBook,
    utc,
)
from eternal.store.db import MIGRATIONS, connect
from eternal.store.ledger import LedgerStore, fill_row, order_row
from eternal.store.models import (
    CandleRow,
    DepositRow,
    EventRow,
    FearGreedRow,
    FillRow,
    FundingRateRow,
    OrderRow,
    TransferRow,
)

pytestmark = pytest.mark.db

TABLES = {"sleeves", "balances", "orders", "fills", "transfers", "deposits", "engine_states", "risk_state",
          "events", "equity_snapshots", "candles", "funding_rates", "fear_greed", "cycle_runs",
          "perp_positions", "funding_payments"}
NOW = utc("2024-01-12T00:05:00Z")
WEIGHTS = {s: getattr(SleeveWeights(), s.weight_field) for s in Sleeve}   # 0.60/0.15/0.05/0.15/0.05


@pytest.fixture
def engine(db_url):
    engine = connect(db_url)
    yield engine
    engine.dispose()


def count(engine, model, *where) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def alembic_head() -> set[str]:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return set(ScriptDirectory.from_config(cfg).get_heads())


# schema ----------------------------------------------------------------------------------------
def test_connect_on_an_empty_database_upgrades_to_alembic_head(db_url):
    engine = connect(db_url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert TABLES | {"alembic_version"} <= tables
        with engine.connect() as conn:
            assert set(conn.execute(text("SELECT version_num FROM alembic_version")).scalars()) == alembic_head()
    finally:
        engine.dispose()


def test_second_connect_at_head_runs_no_migration(db_url, monkeypatch):
    connect(db_url).dispose()
    import alembic.command

    def no_upgrade(*args, **kwargs):
        raise AssertionError("connect() ran a migration on a database already at head")

    monkeypatch.setattr(alembic.command, "upgrade", no_upgrade)
    engine = connect(db_url)
    try:
        with engine.connect() as conn:
            assert set(conn.execute(text("SELECT version_num FROM alembic_version")).scalars()) == alembic_head()
    finally:
        engine.dispose()


def test_datetimes_come_back_timezone_aware_utc(engine):
    # 01:05 in UTC+1 is 00:05 UTC; microseconds are kept
    cet = datetime(2024, 1, 12, 1, 5, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    with engine.begin() as conn:
        conn.execute(insert(DepositRow), [{"ts": cet, "asset": "USDT", "amount": 500.0, "note": ""}])
    with engine.connect() as conn:
        ts = conn.execute(select(DepositRow.ts)).scalar_one()
    assert ts == datetime(2024, 1, 12, 0, 5, 0, 123456, tzinfo=timezone.utc)
    assert ts.utcoffset() == timedelta(0) and ts.tzinfo == timezone.utc


def test_naive_datetimes_are_refused_and_nothing_is_written(engine):
    with pytest.raises(StatementError, match="naive datetime"):
        with engine.begin() as conn:
            conn.execute(insert(DepositRow), [{"ts": datetime(2024, 1, 12, 0, 5), "asset": "USDT",
                                               "amount": 500.0, "note": ""}])
    assert count(engine, DepositRow) == 0


# market data -----------------------------------------------------------------------------------
README_ROWS = {   # ../shared/data/README.md, "Files"
    ("candles", "BTC/USDT"): 3064, ("candles", "ETH/USDT"): 3064, ("candles", "SOL/USDT"): 1974,
    ("candles", "BTC/USDT:USDT"): 2443, ("candles", "ETH/USDT:USDT"): 2363,
    ("candles", "SOL/USDT:USDT"): 2051,
    ("funding", "BTC/USDT:USDT"): 7102, ("funding", "ETH/USDT:USDT"): 6868,
    ("funding", "SOL/USDT:USDT"): 6068,
    ("fear_greed", None): 3121,
}


def stored_rows(engine) -> dict:
    with engine.connect() as conn:
        rows = {("candles", s): n for s, n in conn.execute(
            select(CandleRow.symbol, func.count()).where(CandleRow.timeframe == "1d").group_by(CandleRow.symbol))}
        rows |= {("funding", s): n for s, n in conn.execute(
            select(FundingRateRow.symbol, func.count()).group_by(FundingRateRow.symbol))}
    rows[("fear_greed", None)] = count(engine, FearGreedRow)
    return rows


def test_import_dir_stores_the_readme_row_counts_and_exact_values_and_reimport_adds_nothing(
        engine, shared_data, tmp_path):
    market = MarketStore(engine)
    written = import_dir(market, shared_data)
    assert written["candles BTC/USDT 1d"] == 3064 and written["fear_greed"] == 3121
    assert stored_rows(engine) == README_ROWS
    assert count(engine, CandleRow, CandleRow.timeframe != "1d") == 0    # hourly files are not daily

    btc = market.load_candles("BTC/USDT", "1d", utc("2021-11-10"), utc("2021-11-11"))
    assert list(btc.index) == [pd.Timestamp("2021-11-10", tz="UTC")]
    assert (btc["high"].iloc[0], btc["close"].iloc[0]) == (69000.00, 64882.43)       # the BTC ATH day
    assert market.load_candles("BTC/USDT", "1d", utc("2022-11-21"), utc("2022-11-22"))["close"].iloc[0] \
        == 15781.29
    assert market.load_candles("ETH/USDT", "1d", utc("2021-11-10"), utc("2021-11-11"))["high"].iloc[0] == 4868.0
    fng = market.load_fear_greed()
    assert fng.loc["2022-06-18", "value"] == 6 and fng.loc["2022-06-18", "classification"] == "Extreme Fear"
    assert fng.loc["2020-03-12", "value"] == 14
    btc_funding = market.load_funding("BTC/USDT:USDT")
    assert btc_funding.index[0] == pd.Timestamp("2019-09-10 08:00", tz="UTC")
    assert btc_funding.index[-1] == pd.Timestamp("2026-03-04 08:00", tz="UTC")
    assert btc_funding["funding_rate"].median() == 0.0001

    # re-importing the same files (the README's three named series) writes no new row
    again = tmp_path / "again"
    again.mkdir()
    for name in ("ohlcv_1d_BTC-USDT_spot.csv", "funding_8h_BTCUSDT_perp.csv", "fear_greed_1d.csv"):
        (again / name).symlink_to(shared_data / name)
    import_dir(market, again)
    assert stored_rows(engine) == README_ROWS
    assert market.load_candles("BTC/USDT", "1d", utc("2021-11-10"), utc("2021-11-11"))["close"].iloc[0] \
        == 64882.43


def test_sol_funding_keeps_its_irregular_ftx_crash_settlements(engine, shared_data, tmp_path):
    only_sol = tmp_path / "sol"
    only_sol.mkdir()
    (only_sol / "funding_8h_SOLUSDT_perp.csv").symlink_to(shared_data / "funding_8h_SOLUSDT_perp.csv")
    import_dir(MarketStore(engine), only_sol)
    sol = MarketStore(engine).load_funding("SOL/USDT:USDT")
    assert len(sol) == 6068
    gaps = sol.index.to_series().diff().iloc[1:]
    irregular = gaps[gaps != pd.Timedelta(hours=8)]
    # README: 101 irregular settlements, 98 two-hourly and 3 four-hourly, 2022-11-09 20:00 .. 11-18
    assert len(irregular) == 101
    assert irregular.value_counts().to_dict() == {pd.Timedelta(hours=2): 98, pd.Timedelta(hours=4): 3}
    assert irregular.index[0] == pd.Timestamp("2022-11-09 20:00", tz="UTC")
    assert irregular.index[-1] == pd.Timestamp("2022-11-18 08:00", tz="UTC")
    assert sol.loc["2022-11-09 20:00", "funding_rate"] == -0.02                      # -2 % per settlement


# ledger ----------------------------------------------------------------------------------------
def plan_intents() -> list[OrderIntent]:
    return [OrderIntent(Sleeve.CORE, "BTC/USDT", Market.SPOT, Side.BUY, 0.5, OrderType.LIMIT, "tranche 1",
                        "tranche-1-BTC", limit_price=46339.16, post_only=True),
            OrderIntent(Sleeve.CORE, "ETH/USDT", Market.SPOT, Side.BUY, 5.0, OrderType.MARKET, "tranche 1",
                        "tranche-1-ETH"),
            OrderIntent(Sleeve.TREND_1, "BTC/USDT", Market.SPOT, Side.BUY, 9.0, OrderType.MARKET, "entry",
                        "entry-BTC")]        # 9 BTC: more than TREND-1's 15,000 USDT can pay


def run_plan(ledger: LedgerStore, dataset):
    """Initialise 100,000 USDT, then execute the plan on the paper exchange at the 2024-01-11 closes."""
    books = ledger.initialise(100_000.0, WEIGHTS, NOW)
    ex = PaperExchange(FeeParams(), FillPolicy.IMMEDIATE, books)
    ex.set_quotes({s: Quote(c, c, c) for s in ("BTC/USDT", "ETH/USDT")
                   for c in [float(dataset.daily(s).loc["2024-01-11", "close"])]})
    result = execute(plan_intents(), ex, flow="daily-cycle", scheduled=NOW, now=NOW, known={})
    assert result.orders[-1].status == OrderStatus.REJECTED     # the TREND-1 entry: refused for funds
    return ex, result


def test_initialise_splits_100000_by_weights_into_recorded_transfers_and_balances(engine):
    ledger = LedgerStore(engine)
    assert not ledger.is_initialised()
    books = ledger.initialise(100_000.0, WEIGHTS, NOW)
    expected = {Sleeve.CORE: 60_000.0, Sleeve.TREND_1: 15_000.0, Sleeve.TREND_2: 5_000.0,
                Sleeve.FUNDING: 15_000.0, Sleeve.TACTICAL: 5_000.0}
    assert {s: b.cash for s, b in books.items()} == expected
    assert ledger.is_initialised()
    with engine.connect() as conn:
        deposits = conn.execute(select(DepositRow.amount, DepositRow.asset, DepositRow.ts)).all()
        transfers = conn.execute(select(TransferRow.from_sleeve, TransferRow.to_sleeve, TransferRow.asset,
                                        TransferRow.qty)).all()
    assert [tuple(d) for d in deposits] == [(100_000.0, "USDT", NOW)]
    assert {t.to_sleeve: t.qty for t in transfers} == {s.value: q for s, q in expected.items()}
    assert {(t.from_sleeve, t.asset) for t in transfers} == {(None, "USDT")}    # from outside: the deposit
    assert sum(t.qty for t in transfers) == 100_000.0
    assert {s: (b.cash, b.holdings, b.staked) for s, b in ledger.load_books().items()} == {
        s: (q, {}, {}) for s, q in expected.items()}
    inflows, seen = ledger.inflows_after(None)
    assert inflows == {} and seen is not None     # the initial allocation is not a deposit to deploy


def test_save_execution_then_load_books_and_orders_round_trips_exactly(engine, dataset):
    ledger = LedgerStore(engine)
    ex, result = run_plan(ledger, dataset)
    ledger.save_execution(result.orders, result.fills, result.events, ex.books.values(), NOW, "run-1")
    ids = [r.client_order_id for r in result.orders]
    assert [r.status for r in result.orders] == [OrderStatus.FILLED, OrderStatus.FILLED, OrderStatus.REJECTED]

    assert ledger.load_orders(ids) == {r.client_order_id: r for r in result.orders}
    assert ledger.load_books() == ex.books
    core = ex.books[Sleeve.CORE]
    # the 0.1 % fee of each buy in the coin bought, as Bybit charges it
    assert core.holdings == {"BTC": pytest.approx(0.5 * 0.999), "ETH": pytest.approx(5.0 * 0.999)}
    assert core.cash == pytest.approx(60_000 - (0.5 * 46339.16 + 5 * 2618.01), rel=1e-12)
    assert ledger.load_trade_ids(ids) == {"paper-1-1", "paper-2-1"}
    # saving the same execution again (a retried task) changes nothing
    ledger.save_execution(result.orders, result.fills, [], ex.books.values(), NOW, "run-1")
    assert count(engine, OrderRow) == 3 and count(engine, FillRow) == 2
    assert ledger.load_orders(ids) == {r.client_order_id: r for r in result.orders}


def eth_tranche(close: float) -> float:
    """One CORE ETH tranche of 60,000 USDT at `close`, in whole steps of ETH/USDT (Bybit)."""
    return trading_rules()["ETH/USDT"].floor_qty(60_000 * 0.95 / 4 / 3 / close)


def core_with_staked_eth(dataset) -> PaperExchange:
    """CORE buys its ETH tranches at the 2024-01-11 and 2024-01-12 closes (4,750 USDT each, down to
    the 0.00001 ETH step: 1.81435 and 1.88302 ETH), stakes the first and earns 30 days at 3 % APY on it."""
    ex = PaperExchange(FeeParams(), FillPolicy.IMMEDIATE, {Sleeve.CORE: SleeveBook(Sleeve.CORE, 60_000.0)})
    for n, day in enumerate(("2024-01-11", "2024-01-12")):
        eth = float(dataset.daily("ETH/USDT").loc[day, "close"])
        ex.set_quotes({"ETH/USDT": Quote(eth, eth, eth)})
        ex.place_order(f"eth-{n}", OrderIntent(Sleeve.CORE, "ETH/USDT", Market.SPOT, Side.BUY,
                                               eth_tranche(eth), OrderType.MARKET, "tranche",
                                               f"eth-{n}"), NOW)
    ex.stake(Sleeve.CORE, "ETH", ex.orders["eth-0"].filled_qty)
    books_ledger.accrue_staking(ex.books[Sleeve.CORE], "ETH", 0.03, days=30)
    return ex


def test_staked_balances_keep_total_and_staked_qty_exactly(engine, dataset):
    ex = core_with_staked_eth(dataset)
    book = ex.books[Sleeve.CORE]
    LedgerStore(engine).save_books(ex.books.values(), NOW)
    loaded = LedgerStore(engine).load_books()[Sleeve.CORE]
    assert loaded.cash == book.cash
    first = eth_tranche(float(dataset.daily("ETH/USDT").loc["2024-01-11", "close"]))
    assert loaded.staked == book.staked
    assert book.staked["ETH"] == pytest.approx(first * (1 + 0.03 / 365) ** 30, rel=1e-12)   # 30 days at 3 % APY
    assert loaded.qty("ETH") == book.qty("ETH")
    assert loaded.holdings["ETH"] == book.holdings["ETH"]


def test_staked_balances_round_trip_free_holdings_exactly(engine, dataset):
    ex = core_with_staked_eth(dataset)
    LedgerStore(engine).save_books(ex.books.values(), NOW)
    assert LedgerStore(engine).load_books() == ex.books


def test_scale_to_cash_order_round_trips_exactly(engine, dataset):
    ledger = LedgerStore(engine)
    ledger.initialise(100_000.0, WEIGHTS, NOW)
    btc = float(dataset.daily("BTC/USDT").loc["2024-01-11", "close"])
    ex = PaperExchange(FeeParams(), FillPolicy.IMMEDIATE, ledger.load_books())
    ex.set_quotes({"BTC/USDT": Quote(btc, btc, btc)})
    tranche = OrderIntent(Sleeve.CORE, "BTC/USDT", Market.SPOT, Side.BUY, 0.2, OrderType.LIMIT, "tranche 1",
                          "tranche-1-BTC", limit_price=btc, post_only=True, scale_to_cash=True)
    result = execute([tranche], ex, flow="daily-cycle", scheduled=NOW, now=NOW, known={})
    ledger.save_execution(result.orders, result.fills, result.events, ex.books.values(), NOW)
    (rec,) = result.orders
    loaded = ledger.load_orders([rec.client_order_id])[rec.client_order_id]
    assert loaded.intent.scale_to_cash
    assert loaded == rec


def test_client_order_id_is_unique_at_the_database_level(engine, dataset):
    ledger = LedgerStore(engine)
    ex, result = run_plan(ledger, dataset)
    ledger.save_execution(result.orders, result.fills, result.events, ex.books.values(), NOW)
    row = order_row(result.orders[0])
    with pytest.raises(IntegrityError):
        with engine.begin() as conn:
            conn.execute(insert(OrderRow), [row])
    cid = client_order_id("daily-cycle", NOW, Sleeve.CORE, "tranche-1-BTC")
    assert row["client_order_id"] == cid and count(engine, OrderRow, OrderRow.client_order_id == cid) == 1
    with pytest.raises(IntegrityError):            # and a fill's trade id, so no fill is booked twice
        with engine.begin() as conn:
            conn.execute(insert(FillRow), [fill_row(result.fills[0])])
    assert count(engine, FillRow) == 2


def test_events_are_append_only_rows_with_json_data(engine, dataset):
    ledger = LedgerStore(engine)
    ex, result = run_plan(ledger, dataset)
    (alert,) = result.events
    ledger.save_execution(result.orders, result.fills, result.events, ex.books.values(), NOW, "run-1")
    tranche = Event(NOW, "core_tranche", "tranche 1 of 4", Sleeve.CORE,
                    data={"tranche": 1, "btc_usdt": np.float64(23169.58), "day": utc("2024-01-11"),
                          "targets": {"BTC": 2 / 3, "ETH": 1 / 3}, "keys": ("a", "b")})
    ledger.append_events([tranche], "run-1")
    ledger.append_events([tranche], "run-2")          # the same event again is a new row
    with Session(engine) as session:
        rows = session.scalars(select(EventRow).order_by(EventRow.id)).all()
    assert [r.kind for r in rows] == ["insufficient_funds", "core_tranche", "core_tranche"]
    assert rows[0].id < rows[1].id < rows[2].id
    assert (rows[0].level, rows[0].sleeve, rows[0].message, rows[0].run_key) == (
        "alert", "trend-1", alert.message, "run-1")
    assert rows[0].data == {"client_order_id": client_order_id("daily-cycle", NOW, Sleeve.TREND_1, "entry-BTC"),
                            "intent": "entry-BTC"}
    assert rows[1].data == {"tranche": 1, "btc_usdt": 23169.58, "day": "2024-01-11T00:00:00+00:00",
                            "targets": {"BTC": 2 / 3, "ETH": 1 / 3}, "keys": ["a", "b"]}
    assert rows[1].data == rows[2].data and (rows[1].run_key, rows[2].run_key) == ("run-1", "run-2")
    assert rows[1].ts == NOW and rows[1].ts.tzinfo == timezone.utc


HELD_BY_A_CYCLE = """
import gc, os, sys
from sqlalchemy import text
from eternal.store.db import close_all, connect

gc.disable()                       # as at the CLI's fast exit: no collector runs before os._exit
engine = connect(sys.argv[1], migrate=False)
with engine.begin() as conn:
    conn.execute(text("CREATE TABLE fills (qty REAL)"))
    conn.execute(text("INSERT INTO fills VALUES (0.01)"))
held = {"conn": engine.connect(), "engine": engine}      # a connection checked out, then lost in a cycle
held["self"] = held
held["conn"].execute(text("SELECT qty FROM fills")).all()
del engine, held, conn
print(os.path.exists(sys.argv[2]), flush=True)
close_all()
os._exit(0)
"""


def test_close_all_leaves_no_wal_file_for_a_ledger_only_a_reference_cycle_still_holds(tmp_path):
    """The CLI ends with os._exit after close_all: a SQLite connection that garbage in a reference
    cycle still holds (no collector runs) is closed too, so the -wal file is folded back and removed."""
    import subprocess
    import sys

    path = tmp_path / "backfill.db"
    wal = f"{path}-wal"
    out = subprocess.run([sys.executable, "-c", HELD_BY_A_CYCLE, f"sqlite:///{path}", wal],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True"]           # the -wal file existed before close_all
    assert not os.path.exists(wal) and path.exists()
    with connect(f"sqlite:///{path}", migrate=False).connect() as conn:
        assert conn.execute(text("SELECT qty FROM fills")).scalar_one() == 0.01
