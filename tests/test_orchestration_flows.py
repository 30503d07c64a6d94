"""The deposit-intake and quarterly-rebalance flows on the paper exchange, SQLite and PostgreSQL."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from eternal import allocation
from eternal.config import load_settings
from eternal.models import Sleeve, utc
from eternal.store.db import connect
from eternal.store.ledger import LedgerStore
from eternal.store.models import DepositRow, EventRow, TransferRow

from tests.test_daily_flow import load_market
from tests.test_daily_flow import run as daily

pytestmark = [pytest.mark.db, pytest.mark.flow]


@pytest.fixture
def db(db_url, dataset, monkeypatch, prefect_harness):
    """A year of real BTC/ETH candles and funding up to 2023-12-31, and settings pointing at it."""
    monkeypatch.setenv("ETERNAL_DATABASE_URL", db_url)
    engine = connect(db_url)
    load_market(engine, dataset, "2023-01-01", "2024-01-01")
    return engine


def test_a_deposit_goes_to_the_most_underweight_sleeve_once_and_the_next_cycle_deploys_it(db, dataset):
    from flows.deposit_intake import deposit_intake

    daily("2023-12-31T00:05:00Z")                   # CORE's first tranche: its fees leave it underweight
    before = LedgerStore(db).load_books()
    closes = {a: float(dataset.daily(f"{a}/USDT").loc["2023-12-31", "close"]) for a in ("BTC", "ETH")}  # the last stored
    equity = {s: b.equity(closes) for s, b in before.items()}
    total = sum(equity.values()) + 1_000.0
    gap = 0.60 * total - equity[Sleeve.CORE]          # CORE, the most underweight, up to its target
    assert 0 < gap < 1_000.0
    rest = 1_000.0 - gap                              # then by target weights
    report = deposit_intake(amount_usdt=1_000.0, reference="bank-2023-12-31")
    assert report["split"] == pytest.approx({"core": gap + 0.60 * rest, "trend-1": 0.15 * rest,
                                             "trend-2": 0.05 * rest, "funding": 0.15 * rest,
                                             "tactical": 0.05 * rest})
    assert not report["duplicate"]
    again = deposit_intake(amount_usdt=1_000.0, reference="bank-2023-12-31")
    assert again["duplicate"] and again["split"] == {}
    after = LedgerStore(db).load_books()
    assert {s.value: after[s].cash - before[s].cash for s in after} == pytest.approx(report["split"])
    with db.connect() as conn:
        assert conn.execute(select(DepositRow.amount).where(DepositRow.note == "bank-2023-12-31")).scalars().all() == [1_000.0]
        rows = conn.execute(select(TransferRow.to_sleeve, TransferRow.qty).where(
            TransferRow.reason == "deposit bank-2023-12-31")).all()
    assert dict(rows) == pytest.approx(report["split"])
    daily("2024-01-01T00:05:00Z")                   # CORE is initialising: it keeps the deposit for later
    with db.connect() as conn:
        kept = conn.execute(select(EventRow.data).where(EventRow.kind == "core_deposit")).scalars().all()
    assert [k["inflow_usdt"] for k in kept] == [pytest.approx(report["split"]["core"])]


def test_a_deposit_must_be_positive_and_nothing_is_booked_otherwise(db):
    from flows.deposit_intake import deposit_intake

    with pytest.raises(ValueError, match="positive"):
        deposit_intake(amount_usdt=-5.0, reference="typo")
    with db.connect() as conn:
        assert conn.execute(select(DepositRow).where(DepositRow.note == "typo")).first() is None


def test_the_quarterly_rebalance_brings_every_sleeve_to_the_regime_target_once(db):
    from flows.quarterly_rebalance import quarterly_rebalance

    daily("2023-12-31T00:05:00Z")                   # decides 12-30: the quarter has not ended yet
    report = quarterly_rebalance(asof="2024-01-01T00:15:00Z")     # decides 2023-12-31, the quarter's end
    state = LedgerStore(db).load_allocation_state()
    target = allocation.targets(report["regime"], load_settings().allocation, load_settings().weights.by_sleeve())
    assert report["regime"] == "pre_halving"           # 111 days before 2024-04-20
    assert report["transfers"] > 0 and state["quarter_handled"].startswith("2023-12-31")
    # exact but for moves under the 10 USDT minimum transfer (1e-4 of 100,000)
    assert report["weights_after"] == pytest.approx({s.value: t for s, t in target.items()}, abs=1e-4)
    assert report["weights_before"]["core"] == pytest.approx(0.60, abs=1e-3)
    with db.connect() as conn:
        reasons = conn.execute(select(TransferRow.reason).where(TransferRow.from_sleeve.is_not(None))).scalars().all()
    assert reasons and all(r.startswith("rebalance: quarterly") for r in reasons)
    again = quarterly_rebalance(asof="2024-01-01T00:15:00Z")
    assert again["transfers"] == 0 and again["weights_after"] == pytest.approx(report["weights_after"])


def test_coins_no_daily_sleeve_trades_are_priced_too(db, dataset):
    """FUNDING holding SOL (its spot leg): the quarterly flow values it at SOL's close of the day."""
    from eternal.data.store import MarketStore
    from flows.quarterly_rebalance import quarterly_rebalance

    sol = dataset.daily("SOL/USDT")
    MarketStore(db).upsert_candles("SOL/USDT", "1d", sol[(sol.index >= "2023-01-01") & (sol.index < "2024-01-01")])
    daily("2023-12-31T00:05:00Z")
    ledger = LedgerStore(db)
    books = ledger.load_books()
    books[Sleeve.FUNDING].cash -= 1_000.0                      # as if its spot leg had bought 1,000 of SOL
    books[Sleeve.FUNDING].holdings["SOL"] = 1_000.0 / float(sol.loc["2023-12-30", "close"])
    with db.begin() as conn:
        ledger.save_books([books[Sleeve.FUNDING]], utc("2023-12-31T00:06:00Z"), conn)
    report = quarterly_rebalance(asof="2024-01-01T00:15:00Z")
    sol_value = books[Sleeve.FUNDING].holdings["SOL"] * float(sol.loc["2023-12-31", "close"])
    total = sum(b.equity({"BTC": float(dataset.daily("BTC/USDT").loc["2023-12-31", "close"]),
                          "ETH": float(dataset.daily("ETH/USDT").loc["2023-12-31", "close"]),
                          "SOL": float(sol.loc["2023-12-31", "close"])}) for b in books.values())
    assert report["weights_before"]["funding"] == pytest.approx((14_000.0 + sol_value) / total)
