"""The funding-collection flow end to end on the paper exchange, on SQLite and PostgreSQL, with real
Binance settlements and daily closes from ../shared/data."""
from __future__ import annotations

import asyncio
import json

import pytest
from sqlalchemy import func, select

from eternal import ledger as books_ledger
from eternal.config import load_settings
from eternal.data.store import MarketStore
from eternal.errors import ConfigError
from eternal.exchange.paper import FillPolicy, PaperExchange
from eternal.models import (
    PERP_SYMBOLS,
    SPOT_SYMBOLS,
    Fill,
    Market,
    Side,
    Sleeve,
    base_of,
    utc,
)
from eternal.store.db import connect
from eternal.store.ledger import LedgerStore
from eternal.store.models import (
    CycleRunRow,
    EngineStateRow,
    EventRow,
    FillRow,
    FundingPaymentRow,
    OrderRow,
    TransferRow,
)

pytestmark = [pytest.mark.db, pytest.mark.flow]
ASSETS = ("BTC", "ETH", "SOL")


def load_market(engine, dataset, start: str, end: str, funding_end: str | None = None) -> None:
    """Real spot and perp daily candles and perp funding of BTC/ETH/SOL with start <= ts < end."""
    market = MarketStore(engine)
    for a in ASSETS:
        for sym in (SPOT_SYMBOLS[a], PERP_SYMBOLS[a]):
            df = dataset.daily(sym)
            market.upsert_candles(sym, "1d", df[(df.index >= start) & (df.index < end)])
        f = dataset.funding[PERP_SYMBOLS[a]]
        market.upsert_funding(PERP_SYMBOLS[a], f[(f.index >= start) & (f.index < (funding_end or end))])


@pytest.fixture
def db(db_url, monkeypatch, prefect_harness):
    monkeypatch.setenv("ETERNAL_DATABASE_URL", db_url)
    return connect(db_url)


def run(asof: str) -> dict:
    from flows.funding_collection import funding_collection

    return funding_collection(asof=asof)


def count(engine, model, *where) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def exchange_books(engine) -> dict:
    return PaperExchange.from_state(LedgerStore(engine).load_exchange_state("paper"), None, None).books


def assert_ledger_equals_exchange(engine) -> None:
    ours, theirs = LedgerStore(engine).load_books(), exchange_books(engine)
    for sleeve, book in ours.items():
        assert book.cash == theirs[sleeve].cash, sleeve                  # the same arithmetic, to the bit
        assert {a: q for a, q in book.holdings.items() if q} == {
            a: q for a, q in theirs[sleeve].holdings.items() if q}, sleeve
        assert {s: p.qty for s, p in book.perps.items()} == {s: p.qty for s, p in theirs[sleeve].perps.items()}


def open_trend_positions(engine) -> None:
    """A fresh portfolio whose TREND-2 is short 0.1 BTC and TREND-1 long 3 ETH, both 2x, opened at the
    2024-08-08 perp opens (55,102.90 and 2,341.40), in our ledger and at the paper exchange alike."""
    s = load_settings()
    ledger = LedgerStore(engine)
    at = utc("2024-08-08")
    books = ledger.initialise(s.initial_capital, {sl: getattr(s.weights, sl.weight_field) for sl in Sleeve}, at)
    for sleeve, sym, side, qty, price in ((Sleeve.TREND_2, PERP_SYMBOLS["BTC"], Side.SELL, 0.1, 55_102.9),
                                          (Sleeve.TREND_1, PERP_SYMBOLS["ETH"], Side.BUY, 3.0, 2_341.4)):
        books_ledger.apply_fill(books[sleeve], Fill(
            f"seed-{sleeve.value}", at, sleeve, sym, Market.PERP, side, qty, price, qty * price * s.fees.perp_taker,
            "USDT", "taker", f"seed-{sleeve.value}-1", "entry", 2.0))
    ledger.save_books(books.values(), at)
    ledger.save_exchange_state("paper", PaperExchange(s.fees, FillPolicy.IMMEDIATE, books).to_state(), at)


def test_trend_short_receives_and_long_pays_the_btc_eth_settlement_of_2024_08_09_0800(db, dataset):
    load_market(db, dataset, "2024-08-01", "2024-08-10")
    open_trend_positions(db)
    before = LedgerStore(db).load_books()
    report = run("2024-08-09T08:05:00Z")

    ts = utc("2024-08-09T08:00:00Z")
    rates = {"BTC": 0.00002184, "ETH": 0.00004212}                    # Binance, 2024-08-09 08:00
    closes = {"BTC": 61_659.8, "ETH": 2_681.59}                       # perp closes of 2024-08-08
    assert report["ts"] == ts.isoformat()
    assert {base_of(s): r for s, r in report["rates"].items() if base_of(s) in rates} == rates
    stored = {p.sleeve: p for p in LedgerStore(db).load_funding()}
    assert set(stored) == {Sleeve.TREND_1, Sleeve.TREND_2}
    short, long_ = stored[Sleeve.TREND_2], stored[Sleeve.TREND_1]
    assert (short.ts, short.symbol, short.qty, short.price, short.rate) == (
        ts, PERP_SYMBOLS["BTC"], -0.1, closes["BTC"], rates["BTC"])
    assert (long_.ts, long_.symbol, long_.qty, long_.price, long_.rate) == (
        ts, PERP_SYMBOLS["ETH"], 3.0, closes["ETH"], rates["ETH"])
    assert short.amount == short.expected == -rates["BTC"] * -0.1 * closes["BTC"]   # received: 0.1347
    assert long_.amount == long_.expected == -rates["ETH"] * 3.0 * closes["ETH"]    # paid: 0.3388
    assert short.amount == pytest.approx(0.134665, abs=1e-6) and long_.amount == pytest.approx(-0.338846, abs=1e-6)

    after = LedgerStore(db).load_books()
    assert after[Sleeve.TREND_2].cash == before[Sleeve.TREND_2].cash + short.amount
    assert after[Sleeve.TREND_1].cash == before[Sleeve.TREND_1].cash + long_.amount
    assert_ledger_equals_exchange(db)
    assert report["sent"] == 0 and count(db, OrderRow) == 0         # FUNDING saw no opportunity (< 0.0001)
    with db.connect() as conn:
        runs = conn.execute(select(CycleRunRow.flow, CycleRunRow.scheduled, CycleRunRow.status)).all()
    assert [(r.flow, utc(r.scheduled), r.status) for r in runs] == [("funding-collection", ts, "completed")]


def test_artifact_lists_realised_vs_expected_per_sleeve_and_asset(db, dataset):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    load_market(db, dataset, "2024-08-01", "2024-08-10")
    open_trend_positions(db)
    from eternal.cli import main

    assert main(["run", "funding", "--asof", "2024-08-09T08:05:00Z"]) == 0     # the CLI runs the flow

    async def read(key):
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    table = asyncio.run(read("funding-2024-08-09-0800"))[-1]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    by = {(r["sleeve"], r["asset"]): r for r in rows}
    assert set(by) == {("trend-2", "BTC"), ("trend-1", "ETH")}
    for r in rows:
        assert set(r) == {"sleeve", "asset", "qty", "price", "rate", "realised", "expected", "difference"}
        assert r["realised"] == r["expected"] and r["difference"] == 0.0     # the paper exchange pays exactly
    assert by[("trend-2", "BTC")]["realised"] > 0 > by[("trend-1", "ETH")]["realised"]


def _snapshot(engine) -> dict:
    """Everything a repeated tick must leave alone."""
    ledger = LedgerStore(engine)
    state = ledger.load_exchange_state("paper")
    with engine.connect() as conn:
        transfers = conn.execute(select(TransferRow.ts, TransferRow.from_sleeve, TransferRow.to_sleeve,
                                        TransferRow.qty).order_by(TransferRow.id)).all()
    return {"payments": ledger.load_funding(), "transfers": [tuple(t) for t in transfers],
            "orders": count(engine, OrderRow), "fills": count(engine, FillRow),
            "books": {s: (b.cash, dict(b.holdings), {k: p.qty for k, p in b.perps.items()})
                      for s, b in ledger.load_books().items()},
            "exchange_books": state["books"], "exchange_orders": sorted(state["orders"]),
            "funding_last": state["funding_last"], "states": ledger.load_states(),
            "decisions": count(engine, EventRow, EventRow.kind == "funding_tick")}


FUNDING_ENTRY = "2024-11-07T08:05:00Z"      # ETH predicted 0.00014885, last two 0.0001 / 0.00014885
FUNDING_COLLECT = "2024-11-07T16:05:00Z"    # ETH settles 0.0001 on the new short


def test_funding_opens_eth_hedge_at_2024_11_07_0800_and_sends_half_the_next_funding_to_tactical(db, dataset):
    load_market(db, dataset, "2024-11-01", "2024-11-08")
    spot, perp = 2_721.87, 2_722.49                 # ETH closes of 2024-11-06: basis 0.0228 % < 2 %
    entry = run(FUNDING_ENTRY)
    # BTC and SOL settle exactly 0.0001 at 08:00: not above the 0.0001 threshold, so only ETH opens
    assert entry["rates"] == {PERP_SYMBOLS["BTC"]: 0.0001, PERP_SYMBOLS["ETH"]: 0.00014885,
                              PERP_SYMBOLS["SOL"]: 0.0001}
    assert entry["sent"] == 2 and entry["fills"] == 2 and entry["payments"] == 0
    books = LedgerStore(db).load_books()
    fund = books[Sleeve.FUNDING]
    qty = 0.05 * 15_000.0 / spot                    # 5 % of the sleeve's equity (all cash: 15,000)
    assert fund.holdings == {"ETH": qty}
    assert {s: p.qty for s, p in fund.perps.items()} == {PERP_SYMBOLS["ETH"]: -qty}    # spot qty == short qty
    assert fund.perps[PERP_SYMBOLS["ETH"]].entry_price == perp
    assert_ledger_equals_exchange(db)
    state = LedgerStore(db).load_states()[Sleeve.FUNDING]
    assert state["assets"]["ETH"]["phase"] == "ENTERING"

    tactical_before, funding_cash_before = books[Sleeve.TACTICAL].cash, fund.cash
    collect = run(FUNDING_COLLECT)
    (payment,) = LedgerStore(db).load_funding(sleeve=Sleeve.FUNDING)
    assert (payment.ts, payment.symbol, payment.qty, payment.price, payment.rate) == (
        utc("2024-11-07T16:00:00Z"), PERP_SYMBOLS["ETH"], -qty, perp, 0.0001)
    assert payment.amount == payment.expected == -0.0001 * -qty * perp > 0          # 0.0750 USDT received
    books = LedgerStore(db).load_books()
    half = payment.amount * 0.5
    assert books[Sleeve.TACTICAL].cash == tactical_before + half                    # exactly half, moved
    assert books[Sleeve.FUNDING].cash == funding_cash_before + payment.amount - half
    with db.connect() as conn:
        (t,) = conn.execute(select(TransferRow.ts, TransferRow.to_sleeve, TransferRow.asset, TransferRow.qty,
                                   TransferRow.reason).where(TransferRow.from_sleeve == "funding")).all()
    assert (utc(t.ts), t.to_sleeve, t.asset, t.qty) == (payment.ts, "tactical", "USDT", half)
    assert "TACTICAL" in t.reason
    state = LedgerStore(db).load_states()[Sleeve.FUNDING]["assets"]["ETH"]
    assert state["phase"] == "FUNDING_COLLECTING" and state["compound_pending_usdt"] == half   # kept to compound
    assert collect["sent"] == 0 and collect["transfers"] == [{"from": "funding", "to": "tactical", "qty": half}]
    assert_ledger_equals_exchange(db)


def test_rerunning_ticks_books_no_payment_transfer_or_order_twice(db, dataset):
    load_market(db, dataset, "2024-11-01", "2024-11-08")
    run(FUNDING_ENTRY)
    first = run(FUNDING_COLLECT)
    done = _snapshot(db)
    assert done["transfers"][-1][1:3] == ("funding", "tactical") and done["orders"] == 2
    again = run(FUNDING_COLLECT)                    # the same tick: settlement repeated at the exchange
    assert again["decided_now"] is False and again["sent"] == 0 and again["payments"] == first["payments"]
    run(FUNDING_ENTRY)                              # an older tick: the exchange settled past it
    assert _snapshot(db) == done
    assert_ledger_equals_exchange(db)
    with db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(FundingPaymentRow)).scalar_one() == 1
        assert set(conn.execute(select(CycleRunRow.status)).scalars()) == {"completed"}


def test_crash_before_the_orders_resumes_the_recorded_decision_once(db, dataset, monkeypatch):
    """The exchange is unreachable for the whole execute task (4 tries): the run fails after the
    engine decided. The re-run sends the decided orders once and does not decide again."""
    load_market(db, dataset, "2024-11-01", "2024-11-08")

    def down(self, cid, intent, now):
        raise ConnectionError("exchange unreachable")

    with monkeypatch.context() as m:
        m.setattr(PaperExchange, "place_order", down)
        with pytest.raises(ConnectionError):
            run(FUNDING_ENTRY)
    assert count(db, FillRow) == 0 and count(db, EventRow, EventRow.kind == "funding_tick") == 1
    state = LedgerStore(db).load_states()[Sleeve.FUNDING]
    assert state["assets"]["ETH"]["phase"] == "ENTERING"
    decisions = count(db, EventRow, EventRow.kind == "funding_state")     # OPPORTUNITY_DETECTED, ENTERING
    report = run(FUNDING_ENTRY)
    assert report["decided_now"] is False and report["sent"] == 2 and report["fills"] == 2
    assert count(db, EventRow, EventRow.kind == "funding_tick") == 1
    assert count(db, EventRow, EventRow.kind == "funding_state") == decisions == 2
    assert LedgerStore(db).load_states()[Sleeve.FUNDING] == state                 # not decided again
    assert run(FUNDING_ENTRY)["sent"] == 0 and count(db, FillRow) == 2
    assert_ledger_equals_exchange(db)
    with db.connect() as conn:
        assert [r for r in conn.execute(select(CycleRunRow.status).order_by(CycleRunRow.id)).scalars()] == [
            "failed", "completed", "completed"]


def test_staking_accrual_is_left_to_the_daily_cycle(db, dataset):
    """A funding tick executes through the daily cycle's task, but never moves the day the paper
    exchange has accrued staking through (a 08:00 tick would otherwise swallow 16 hours)."""
    load_market(db, dataset, "2024-11-01", "2024-11-08")
    ledger = LedgerStore(db)
    s = load_settings()
    ledger.initialise(s.initial_capital, {sl: getattr(s.weights, sl.weight_field) for sl in Sleeve},
                      utc("2024-11-06"))
    ex = PaperExchange(s.fees, FillPolicy.IMMEDIATE, ledger.load_books())
    ex.accrued_through = "2024-11-06T00:00:00+00:00"
    ledger.save_exchange_state("paper", ex.to_state(), utc("2024-11-07"))
    assert run(FUNDING_ENTRY)["sent"] == 2
    assert ledger.load_exchange_state("paper")["accrued_through"] == "2024-11-06T00:00:00+00:00"


def test_other_modes_are_refused_before_the_exchange_is_touched(db, dataset, monkeypatch):
    load_market(db, dataset, "2024-11-01", "2024-11-08")
    monkeypatch.setenv("ETERNAL_MODE", "demo")
    with pytest.raises(ConfigError, match="ETERNAL_MODE='demo'"):
        run(FUNDING_ENTRY)
    assert LedgerStore(db).load_exchange_state("paper") is None
    with db.connect() as conn:
        assert conn.execute(select(CycleRunRow.status)).scalar_one() == "failed"
    assert count(db, EngineStateRow) == 0 and count(db, EventRow) == 0 and not LedgerStore(db).is_initialised()


def test_a_settlement_missing_from_the_store_is_downloaded_before_the_tick(db, dataset, monkeypatch):
    """Paper mode refreshes like the daily cycle: at 08:05 the store holds settlements up to 00:00
    only, so the flow first fetches the 08:00 one from Bybit (the local V5 emulator, fed with the
    real Binance history) and then acts on it."""
    from tests.bybit_stub import BybitStub

    load_market(db, dataset, "2024-11-01", "2024-11-07", funding_end="2024-11-07T00:00:01Z")
    with BybitStub(now=utc(FUNDING_ENTRY)) as stub:
        for a in ASSETS:
            for category, sym in (("spot", SPOT_SYMBOLS[a]), ("linear", PERP_SYMBOLS[a])):
                stub.set_klines(category, f"{a}USDT", dataset.daily(sym).loc["2024-10-25":"2024-11-07"])
            stub.set_funding("linear", f"{a}USDT", dataset.funding[PERP_SYMBOLS[a]].loc["2024-10-25":"2024-11-07"])
        monkeypatch.setenv("ETERNAL_DATA__REFRESH_BEFORE_CYCLE", "true")
        monkeypatch.setenv("ETERNAL_EXCHANGE__PUBLIC_URL", stub.url)
        report = run(FUNDING_ENTRY)
    assert not stub.unknown and stub.counts["/v5/market/funding/history"] >= 3
    assert report["ts"] == "2024-11-07T08:00:00+00:00" and report["notes"] == []
    assert report["rates"][PERP_SYMBOLS["ETH"]] == 0.00014885 and report["sent"] == 2
