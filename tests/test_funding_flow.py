"""The funding-collection flow end to end: the driver over funding settlements on the paper exchange,
on SQLite and PostgreSQL, with real Binance settlements and candles from ../shared/data.

The exchange pays each settlement on the positions held at it, at the perp's open of the
settlement's day (a long pays rate x qty x price, a short receives it); our ledger books the
payment from the exchange's journal, then FUNDING decides.
"""
from __future__ import annotations

import pytest

from eternal.data.store import MarketStore
from eternal.errors import ConfigError
from eternal.exchange.paper import PaperExchange
from eternal.instruments import default as trading_rules
from eternal.models import PERP_SYMBOLS, SPOT_SYMBOLS, Sleeve, transfer_qty, utc
from eternal.store.db import connect
from eternal.store.driver_store import SqlLedger
from eternal.store.ledger import LedgerStore
from eternal.store.models import (
    CandleRow,
    CycleRunRow,
    DriverStateRow,
    EventRow,
    ExchangeStateRow,
    FillRow,
    FundingPaymentRow,
    OrderRow,
    PaperOrderRow,
    PlanRow,
    TransferRow,
)
from tests.flow_support import (
    count,
    daily,
    funding,
    latest_artifact,
    ledger_vs_exchange,
    rows,
    store_market,
    table_rows,
)

pytestmark = [pytest.mark.db, pytest.mark.flow]
ASSETS = ("BTC", "ETH", "SOL")
EQUAL = {s.value: [] for s in Sleeve}


def engine_with(db_url, dataset, monkeypatch, start: str, end: str):
    monkeypatch.setenv("ETERNAL_DATABASE_URL", db_url)
    engine = connect(db_url)
    store_market(engine, dataset, start, end)
    return engine


@pytest.fixture
def august_2024(db_url, dataset, monkeypatch, prefect_harness):
    """Every real series from 2023-08-01 to 2024-08-10."""
    return engine_with(db_url, dataset, monkeypatch, "2023-08-01", "2024-08-11")


@pytest.fixture
def january_2024(db_url, dataset, monkeypatch, prefect_harness):
    """Every real series from 2023-01-01 to 2024-01-03."""
    return engine_with(db_url, dataset, monkeypatch, "2023-01-01", "2024-01-04")


def test_the_settlement_of_2024_08_09_0800_is_booked_for_trend_positions_realised_equal_to_expected(
        august_2024, dataset):
    """TREND-2 went short BTC and ETH at the open of 2024-08-08, TREND-1 short ETH at the open of
    08-09 (both from the daily runs). Binance settled BTC at 0.00002184 and ETH at 0.00004212 at
    08:00; the exchange pays on each short at the perp opens of 08-09 (61,659.80 and 2,681.59).
    The funding run of 08:05 books exactly that, run from the CLI; its artifact lists it."""
    from eternal.cli import main

    db = august_2024
    daily("2024-08-08T00:05:00Z")
    daily("2024-08-09T00:05:00Z")
    before = LedgerStore(db).load_books()
    held = {(s.value, sym): p.qty for s, b in before.items() for sym, p in b.perps.items() if p.qty}
    assert set(held) == {("trend-2", PERP_SYMBOLS["BTC"]), ("trend-2", PERP_SYMBOLS["ETH"]),
                         ("trend-1", PERP_SYMBOLS["ETH"])} and all(q < 0 for q in held.values())

    assert main(["run", "funding", "--asof", "2024-08-09T08:05:00Z"]) == 0
    ts = utc("2024-08-09T08:00:00Z")
    rate = {a: float(dataset.funding[PERP_SYMBOLS[a]].loc[ts, "funding_rate"]) for a in ("BTC", "ETH")}
    price = {a: float(dataset.daily(PERP_SYMBOLS[a]).loc["2024-08-09", "open"]) for a in ("BTC", "ETH")}
    assert rate == {"BTC": 0.00002184, "ETH": 0.00004212} and price == {"BTC": 61_659.8, "ETH": 2_681.59}
    paid = rows(db, FundingPaymentRow, where=[FundingPaymentRow.ts == ts])
    assert {(p.sleeve, p.symbol) for p in paid} == set(held)
    for p in paid:
        a = p.symbol.split("/")[0]
        assert (p.qty, p.price, p.rate) == (held[(p.sleeve, p.symbol)], price[a], rate[a])
        assert p.amount == p.expected == pytest.approx(-rate[a] * p.qty * price[a], rel=1e-12)
        assert p.amount > 0                                      # a short receives a positive rate
    by_sleeve = {s: sum(p.amount for p in paid if p.sleeve == s) for s in ("trend-1", "trend-2")}
    after = LedgerStore(db).load_books()
    for s, amount in by_sleeve.items():
        assert after[Sleeve(s)].cash == pytest.approx(before[Sleeve(s)].cash + amount, abs=1e-9)
    assert ledger_vs_exchange(db) == EQUAL
    assert count(db, OrderRow, OrderRow.flow == "funding") == 0      # FUNDING was flat: nothing to decide

    table = table_rows(latest_artifact("funding-collection-funding"))
    mine = {(r["sleeve"], r["asset"]): r for r in table if r["ts"] == ts.isoformat()}
    assert set(mine) == {("trend-2", "BTC"), ("trend-2", "ETH"), ("trend-1", "ETH")}
    for r in mine.values():
        assert set(r) == {"ts", "sleeve", "asset", "qty", "price", "rate", "realised", "expected"}
        assert r["realised"] == r["expected"] > 0 and r["price"] == price[r["asset"]]


def test_funding_hedges_at_the_2024_01_02_settlement_and_sends_half_its_funding_to_tactical(january_2024, dataset):
    """At the settlement of 2024-01-02 00:00 the predicted rates (BTC 0.000658, ETH 0.000535, SOL
    0.000575) are above the 0.0001 threshold: FUNDING buys 5 % of its 15,000 USDT of each coin at the
    spot open (down to the perp's step) and shorts the same quantity at the perp open. The 08:00 settlement pays the shorts;
    half of each payment moves to TACTICAL, the other half stays to compound."""
    db = january_2024
    daily("2024-01-02T00:05:00Z")
    spot = {a: float(dataset.daily(SPOT_SYMBOLS[a]).loc["2024-01-02", "open"]) for a in ASSETS}
    perp = {a: float(dataset.daily(PERP_SYMBOLS[a]).loc["2024-01-02", "open"]) for a in ASSETS}
    books = LedgerStore(db).load_books()
    fund = books[Sleeve.FUNDING]
    # both legs in whole steps of the perp (Bybit: 0.001 BTC, 0.01 ETH, 0.1 SOL)
    qty = {a: trading_rules()[PERP_SYMBOLS[a]].floor_qty(0.05 * 15_000 / spot[a]) for a in ASSETS}
    # the spot leg less its 0.1 % fee, charged in the coin bought (as Bybit charges a spot buy)
    assert fund.holdings == pytest.approx({a: q * 0.999 for a, q in qty.items()}, rel=1e-12)
    assert {s: p.qty for s, p in fund.perps.items()} == pytest.approx({PERP_SYMBOLS[a]: -qty[a] for a in ASSETS},
                                                                      rel=1e-12)
    assert {s: p.entry_price for s, p in fund.perps.items()} == {PERP_SYMBOLS[a]: perp[a] for a in ASSETS}
    legs = rows(db, FillRow.symbol, FillRow.price, FillRow.ts, where=[FillRow.sleeve == "funding"])
    assert {f.symbol: f.price for f in legs} == {**{SPOT_SYMBOLS[a]: spot[a] for a in ASSETS},
                                                 **{PERP_SYMBOLS[a]: perp[a] for a in ASSETS}}
    assert {utc(f.ts) for f in legs} == {utc("2024-01-02")}
    cash_before, tactical_before = fund.cash, books[Sleeve.TACTICAL].cash
    assert tactical_before == 5_000.0

    report = funding("2024-01-02T08:05:00Z")
    assert report["events"] == 1 and report["payments"] == 3
    ts = utc("2024-01-02T08:00:00Z")
    paid = {p.symbol: p for p in rows(db, FundingPaymentRow, where=[FundingPaymentRow.sleeve == "funding"])}
    assert set(paid) == {PERP_SYMBOLS[a] for a in ASSETS}
    for a in ASSETS:
        p = paid[PERP_SYMBOLS[a]]
        rate = float(dataset.funding[PERP_SYMBOLS[a]].loc[ts, "funding_rate"])
        assert (utc(p.ts), p.rate, p.price) == (ts, rate, perp[a])
        assert p.amount == p.expected == pytest.approx(rate * qty[a] * perp[a], rel=1e-12)
        assert p.amount > 0
    moved = rows(db, TransferRow.ts, TransferRow.to_sleeve, TransferRow.asset, TransferRow.qty,
                 where=[TransferRow.from_sleeve == "funding"])
    # half of each, in the 8 decimals a venue moves (down: `eternal.models.transfer_qty`)
    halves = sorted(transfer_qty(p.amount / 2) for p in paid.values())
    assert sorted(t.qty for t in moved) == pytest.approx(halves, rel=1e-12)
    assert {(utc(t.ts), t.to_sleeve, t.asset) for t in moved} == {(ts, "tactical", "USDT")}
    books = LedgerStore(db).load_books()
    total = sum(p.amount for p in paid.values())
    assert books[Sleeve.TACTICAL].cash == pytest.approx(tactical_before + sum(halves), abs=1e-9)
    assert books[Sleeve.FUNDING].cash == pytest.approx(cash_before + total - sum(halves), abs=1e-9)
    states = LedgerStore(db).load_states()[Sleeve.FUNDING]["assets"]
    assert {a: states[a]["phase"] for a in ASSETS} == {a: "FUNDING_COLLECTING" for a in ASSETS}
    assert ledger_vs_exchange(db) == EQUAL


def snapshot(engine) -> dict:
    """Everything a repeated settlement run must leave alone."""
    ledger = LedgerStore(engine)
    return {"payments": count(engine, FundingPaymentRow), "transfers": count(engine, TransferRow),
            "orders": count(engine, OrderRow), "venue_orders": count(engine, PaperOrderRow),
            "fills": count(engine, FillRow), "events": count(engine, EventRow),
            "books": {s: (b.cash, dict(b.holdings), {k: p.qty for k, p in b.perps.items()})
                      for s, b in ledger.load_books().items()},
            "states": ledger.load_states(), "clock": SqlLedger(engine).clock()}


def test_rerunning_a_settlement_slot_books_no_payment_transfer_or_order_twice(january_2024):
    db = january_2024
    daily("2024-01-02T00:05:00Z")
    funding("2024-01-02T08:05:00Z")
    done = snapshot(db)
    assert done["payments"] == 3 and done["clock"] == "2024-01-02T08:00:00|1"
    for asof in ("2024-01-02T08:05:00Z", "2024-01-02T00:05:00Z"):       # the same slot, then an older one
        report = funding(asof)
        assert report["line"] == "nothing due: the ledger is at funding settlement 2024-01-02 08:00Z"
        assert (report["events"], report["payments"], report["orders"]) == (0, 0, 0)
    assert snapshot(db) == done
    assert ledger_vs_exchange(db) == EQUAL


def test_an_exchange_down_for_a_whole_run_leaves_the_decision_stored_and_the_next_run_sends_it_once(
        january_2024, monkeypatch):
    """FUNDING's orders of the 2024-01-02 00:00 settlement cannot reach the exchange in any of the
    task's 4 attempts: the run fails with its decision stored (write-ahead). The next run finishes
    that stored plan, sending each of its 6 orders once, and does not decide again."""
    db = january_2024
    original = PaperExchange.place_order

    def down_for_funding(self, cid, intent, now):
        if intent.sleeve == Sleeve.FUNDING:
            raise ConnectionError("exchange unreachable")
        return original(self, cid, intent, now)

    with monkeypatch.context() as m:
        m.setattr(PaperExchange, "place_order", down_for_funding)
        with pytest.raises(ConnectionError):
            funding("2024-01-02T00:05:00Z")
    tick = "2024-01-02T00:00:00|1"
    assert SqlLedger(db).clock() == "2024-01-02T00:00:00|0"          # the close is done, the tick not
    assert [(r.key, r.status) for r in rows(db, PlanRow.key, PlanRow.status, where=[PlanRow.key == tick])] == [
        (tick, "stored")]
    assert count(db, PaperOrderRow) == 2 and count(db, OrderRow, OrderRow.sleeve == "funding") == 0  # CORE's only
    assert [r.status for r in rows(db, CycleRunRow.status)] == ["failed"] * 4

    report = funding("2024-01-02T00:05:00Z")
    assert report["finished_plan"] == tick and report["clock"] == "2024-01-02T00:00:00|2"
    assert count(db, OrderRow, OrderRow.sleeve == "funding") == count(db, FillRow, FillRow.sleeve == "funding") == 6
    assert count(db, PaperOrderRow) == count(db, OrderRow) == 8
    decided = [r.message for r in rows(db, EventRow.message, where=[EventRow.kind == "funding_state"])]
    assert len(decided) == 6 and len(set(decided)) == 6                 # decided once: 3 detected, 3 entering
    assert ledger_vs_exchange(db) == EQUAL
    assert count(db, PlanRow, PlanRow.status == "stored") == 0


def test_other_modes_are_refused_before_the_exchange_is_touched(january_2024, monkeypatch):
    db = january_2024
    monkeypatch.setenv("ETERNAL_MODE", "demo")
    with pytest.raises(ConfigError, match="ETERNAL_MODE='demo'"):
        funding("2024-01-02T08:05:00Z")
    assert count(db, ExchangeStateRow) == 0 and count(db, PaperOrderRow) == 0
    assert count(db, DriverStateRow) == 0 and count(db, EventRow) == 0 and count(db, CycleRunRow) == 0
    assert not LedgerStore(db).is_initialised()


def test_a_close_missing_from_the_store_is_downloaded_from_bybit_before_the_run(
        db_url, dataset, monkeypatch, prefect_harness):
    """Paper mode refreshes the store first: at 2024-01-02 08:05 it holds candles and settlements up
    to 2023-12-31 only, so the run first fetches the days since from Bybit (the local V5 emulator,
    fed with the real Binance history), then starts the portfolio on the close of 2024-01-01."""
    from tests.bybit_stub import BybitStub

    db = engine_with(db_url, dataset, monkeypatch, "2023-01-01", "2024-01-01")
    fg = dataset.fear_greed                        # Fear & Greed is current: its own refresh is not under test
    MarketStore(db).upsert_fear_greed(fg[(fg.index >= "2024-01-01") & (fg.index < "2024-01-02")])
    asof = "2024-01-02T08:05:00Z"
    with BybitStub(now=utc(asof)) as stub:
        for a in ASSETS:
            for category, sym in (("spot", SPOT_SYMBOLS[a]), ("linear", PERP_SYMBOLS[a])):
                stub.set_klines(category, f"{a}USDT", dataset.daily(sym).loc["2022-11-01":"2024-01-01"])
            rates = dataset.funding[PERP_SYMBOLS[a]]
            stub.set_funding("linear", f"{a}USDT", rates.loc["2022-11-01":"2024-01-02 08:00"])
        monkeypatch.setenv("ETERNAL_DATA__REFRESH_BEFORE_CYCLE", "true")
        monkeypatch.setenv("ETERNAL_EXCHANGE__PUBLIC_URL", stub.url)
        report = funding(asof)
    assert not stub.unknown and stub.counts["/v5/market/kline"] >= 6
    assert report["closes"] == ["2024-01-01"]                  # the downloaded close, decided on
    stored = rows(db, CandleRow.close, where=[CandleRow.symbol == "BTC/USDT", CandleRow.ts == utc("2024-01-01")])
    assert [r.close for r in stored] == [44_179.55]
    core = {r.symbol: r.limit_price for r in rows(db, OrderRow.symbol, OrderRow.limit_price,
                                                  where=[OrderRow.sleeve == "core"])}
    assert core == {"BTC/USDT": 44_179.55, "ETH/USDT": 2_352.04}   # CORE's tranche at that close
