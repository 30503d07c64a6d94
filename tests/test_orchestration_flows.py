"""The orchestration layer through the flows (deposit intake, quarterly rebalance), on the paper
exchange, SQLite and PostgreSQL. Both act at one defined point, a daily close, processed by
whichever flow runs first at or after it, before the engines decide."""
from __future__ import annotations

import pytest

from eternal import allocation
from eternal.config import load_settings
from eternal.errors import ConfigError
from eternal.models import PERP_SYMBOLS, SPOT_SYMBOLS, Sleeve, base_of, utc
from eternal.store.db import connect
from eternal.store.driver_store import SqlLedger
from eternal.store.ledger import LedgerStore
from eternal.store.models import DepositRow, DriverStateRow, EquitySnapshotRow, EventRow, TransferRow
from tests.flow_support import (
    count,
    daily,
    frozen_datetime,
    funding,
    latest_artifact,
    quarterly,
    rows,
    store_market,
    table_rows,
)

pytestmark = [pytest.mark.db, pytest.mark.flow]
BASE = {"core": 0.60, "trend-1": 0.15, "trend-2": 0.05, "funding": 0.15, "tactical": 0.05}   # spec weights


@pytest.fixture
def db(db_url, dataset, monkeypatch, prefect_harness):
    """Every real series from 2023-01-01 to 2024-01-03, and the settings pointing at it."""
    monkeypatch.setenv("ETERNAL_DATABASE_URL", db_url)
    engine = connect(db_url)
    store_market(engine, dataset, "2023-01-01", "2024-01-04")
    return engine


def equity_at(books, dataset, day: str) -> dict[str, float]:
    """Each sleeve marked to market at the real closes of `day`: spot coins at the spot close,
    perps at margin plus P&L at the perp close."""
    spot = {a: float(dataset.daily(SPOT_SYMBOLS[a]).loc[day, "close"]) for a in SPOT_SYMBOLS}
    perp = {PERP_SYMBOLS[a]: float(dataset.daily(PERP_SYMBOLS[a]).loc[day, "close"]) for a in PERP_SYMBOLS}
    return {s.value: b.cash + sum(b.qty(a) * spot[a] for a in {*b.holdings, *b.staked})
            + sum(p.margin + (perp[sym] - p.entry_price) * p.qty for sym, p in b.perps.items())
            for s, b in books.items()}


def test_a_deposit_goes_to_the_most_underweight_sleeve_once_at_the_next_close(db, dataset, monkeypatch):
    """1,000 USDT deposited on 2024-01-02 at 18:00 wait for the close of 2024-01-02. Measured against
    the total with the deposit, CORE is the most underweight sleeve there: it gets its gap to its
    60 % target, the rest is split by the target weights. The reference is taken once."""
    import flows.deposit_intake as intake

    daily("2024-01-02T00:05:00Z")
    funding("2024-01-02T16:05:00Z")          # the books as the close of 2024-01-02 finds them
    before = equity_at(LedgerStore(db).load_books(), dataset, "2024-01-02")
    total = sum(before.values()) + 1_000.0
    gap = {s: BASE[s] - before[s] / total for s in BASE}
    first = max(gap, key=gap.get)
    assert first == "core" and 0 < BASE["core"] * total - before["core"] < 1_000
    to_first = BASE["core"] * total - before["core"]
    split = {s: (to_first if s == first else 0.0) + (1_000.0 - to_first) * w for s, w in BASE.items()}

    monkeypatch.setattr(intake, "datetime", frozen_datetime(utc("2024-01-02T18:00:00Z")))
    assert intake.deposit_intake(amount_usdt=1_000.0, reference="bank-2024-01-02")["duplicate"] is False
    assert intake.deposit_intake(amount_usdt=1_000.0, reference="bank-2024-01-02")["duplicate"] is True
    assert [d["usdt"] for d in SqlLedger(db).load().deposits] == [1_000.0]      # waiting, once
    assert count(db, DepositRow, DepositRow.note == "bank-2024-01-02") == 0

    report = daily("2024-01-03T00:05:00Z")
    assert report["closes"] == ["2024-01-02"]
    (event,) = rows(db, EventRow.ts, EventRow.data, where=[EventRow.kind == "deposit"])
    assert utc(event.ts) == utc("2024-01-03") and event.data["split"] == pytest.approx(split, rel=1e-9)
    moved = rows(db, TransferRow.to_sleeve, TransferRow.qty, where=[TransferRow.reason == "deposit of 1,000.00 USDT"])
    assert {t.to_sleeve: t.qty for t in moved} == pytest.approx(split, rel=1e-9) and len(moved) == 5
    at_close = rows(db, EquitySnapshotRow.sleeve, EquitySnapshotRow.equity,
                    where=[EquitySnapshotRow.day == utc("2024-01-02")])
    assert {r.sleeve: r.equity for r in at_close} == pytest.approx({s: before[s] + split[s] for s in BASE}, rel=1e-9)
    assert [r.amount for r in rows(db, DepositRow.amount, where=[DepositRow.note == "bank-2024-01-02"])] == [1_000.0]
    assert SqlLedger(db).load().deposits == []
    (kept,) = rows(db, EventRow.data, where=[EventRow.kind == "core_deposit"])   # CORE initialising keeps it
    assert kept.data["inflow_usdt"] == pytest.approx(split["core"], rel=1e-9)
    assert intake.deposit_intake(amount_usdt=1_000.0, reference="bank-2024-01-02")["duplicate"] is True
    assert SqlLedger(db).load().deposits == []


def test_a_deposit_must_be_positive_and_nothing_is_queued_otherwise(db):
    from flows.deposit_intake import deposit_intake

    for amount in (-5.0, 0.0, float("nan")):
        with pytest.raises(ConfigError, match="positive"):
            deposit_intake(amount_usdt=amount, reference="typo")
    assert count(db, DriverStateRow) == 0 and count(db, DepositRow) == 0


def test_a_deposit_taken_before_the_first_run_is_split_at_the_portfolios_first_close(db, monkeypatch):
    """1,000 USDT arrive on 2024-01-01 at 12:00, before any run: they wait, and the first close
    (2024-01-01, decided by the run of 2024-01-02 00:05) splits them over sleeves still exactly at
    their weights of 100,000: CORE, the most underweight after the deposit, first up to its target
    (600), the remaining 400 by the weights."""
    import flows.deposit_intake as intake

    monkeypatch.setattr(intake, "datetime", frozen_datetime(utc("2024-01-01T12:00:00Z")))
    assert intake.deposit_intake(amount_usdt=1_000.0, reference="early")["duplicate"] is False
    assert intake.deposit_intake(amount_usdt=1_000.0, reference="early")["duplicate"] is True
    assert not LedgerStore(db).is_initialised()
    report = daily("2024-01-02T00:05:00Z")
    assert report["closes"] == ["2024-01-01"]
    split = {s: (600.0 if s == "core" else 0.0) + 400.0 * w for s, w in BASE.items()}
    (event,) = rows(db, EventRow.data, where=[EventRow.kind == "deposit"])
    assert event.data["split"] == pytest.approx(split, rel=1e-12)
    moved = rows(db, TransferRow.to_sleeve, TransferRow.qty, where=[TransferRow.reason == "deposit of 1,000.00 USDT"])
    assert {t.to_sleeve: t.qty for t in moved} == pytest.approx(split, rel=1e-12) and len(moved) == 5
    assert [r.amount for r in rows(db, DepositRow.amount, where=[DepositRow.note == "early"])] == [1_000.0]
    assert SqlLedger(db).load().deposits == []


def test_the_quarterly_rebalance_brings_every_sleeve_to_the_regime_target_once(db):
    """The portfolio starts on the close of 2023-12-30; the quarter's first close is that of
    2023-12-31 (at 2024-01-01 00:00), 111 days before the 2024-04-20 halving: the pre-halving
    targets apply and CORE's surplus goes to the TREND sleeves, once."""
    daily("2023-12-31T00:05:00Z")
    report = quarterly("2024-01-01T00:15:00Z")
    assert report["closes"] == ["2023-12-31"] and report["regime"] == "pre_halving"
    s = load_settings()
    target = {sl.value: t for sl, t in allocation.targets(allocation.Regime.PRE_HALVING, s.allocation,
                                                          s.weights.by_sleeve()).items()}
    assert target == pytest.approx({"core": 0.50, "trend-1": 0.225, "trend-2": 0.075, "funding": 0.15,
                                    "tactical": 0.05})
    total = report["total_equity"]
    assert {sl: e / total for sl, e in report["equity"].items()} == pytest.approx(target, abs=1e-4)
    (event,) = rows(db, EventRow.ts, EventRow.message, where=[EventRow.kind == "quarterly_rebalance"])
    assert utc(event.ts) == utc("2024-01-01") and event.message.startswith(
        "quarter ended 2023-12-31: sleeves to the pre_halving targets")
    moved = rows(db, TransferRow.from_sleeve, TransferRow.to_sleeve, TransferRow.reason,
                 where=[TransferRow.reason.like("allocation:%")])
    assert {(t.from_sleeve, t.to_sleeve) for t in moved} == {("core", "trend-1"), ("core", "trend-2")}
    assert all(t.reason.startswith("allocation: quarterly") for t in moved)
    table = {r["sleeve"]: r for r in table_rows(latest_artifact("quarterly-rebalance-weights"))}
    assert {sl: r["target"] for sl, r in table.items()} == pytest.approx(target, abs=1e-6)
    assert {sl: r["actual"] for sl, r in table.items()} == pytest.approx(target, abs=1e-4)

    again = quarterly("2024-01-01T00:15:00Z")
    assert again["line"] == "nothing due: the ledger is at open of 2024-01-01" and again["events"] == 0
    assert daily("2024-01-02T00:05:00Z")["closes"] == ["2024-01-01"]       # the quarter's next close
    assert count(db, EventRow, EventRow.kind == "quarterly_rebalance") == 1
    assert len(rows(db, TransferRow.id, where=[TransferRow.reason.like("allocation:%")])) == len(moved)
    assert LedgerStore(db).load_allocation_state()["quarter_handled"].startswith("2023-12-31")


def test_a_coin_only_funding_holds_is_priced(db, dataset):
    """FUNDING hedged SOL at the 2023-12-31 00:00 settlement (spot long, perp short); no daily
    sleeve trades SOL. The quarterly run values it at SOL's real closes of 2023-12-31."""
    daily("2023-12-31T00:05:00Z")
    report = quarterly("2024-01-01T00:15:00Z")
    books = LedgerStore(db).load_books()
    holders = {s.value for s, b in books.items() if b.qty("SOL") or any(base_of(p) == "SOL" for p in b.perps)}
    assert holders == {"funding"}
    sol = books[Sleeve.FUNDING].qty("SOL")
    assert sol * float(dataset.daily("SOL/USDT").loc["2023-12-31", "close"]) == pytest.approx(750, rel=0.02)
    # the run reports the close's equity records (eternal.valuation); the books read after the run
    # also hold the 2024-01-01 00:00 settlement booked after that close: a few tenths of a USDT
    recorded = {sleeve: equity for sleeve, equity, day in rows(db, EquitySnapshotRow.sleeve, EquitySnapshotRow.equity,
                                                               EquitySnapshotRow.day) if f"{day:%Y-%m-%d}" == "2023-12-31"}
    assert report["equity"] == pytest.approx(recorded, rel=1e-12)
    equity = equity_at(books, dataset, "2023-12-31")
    assert report["equity"] == pytest.approx(equity, rel=1e-4)
    equity = report["equity"]
    actual = {r["sleeve"]: r["actual"] for r in table_rows(latest_artifact("quarterly-rebalance-weights"))}
    assert actual["funding"] == pytest.approx(equity["funding"] / sum(equity.values()), abs=1e-6)
