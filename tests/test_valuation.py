"""One valuation behind every number an operator reads (issue 14, "True numbers").

The paper daily flow runs 2024-01-02 .. 2024-01-06 on the real stored data, the store growing by
one day before each run as a live store does. FUNDING opened three short perps (BTC, ETH, SOL) at
the open of 2024-01-02, so on the close of 2024-01-05 the portfolio holds perps whose mark (the
perp's close) differs from the spot close. The artifact's headline, the equity records and
`eternal status` must then say the same total, perps included, valued at that day.
"""
from __future__ import annotations

import re
from datetime import datetime

import pytest

from eternal.cli import main
from eternal.models import PERP_SYMBOLS, PerpPosition, Sleeve, SleeveBook, utc
from eternal.store.db import connect
from eternal.store.driver_store import SqlLedger
from eternal.store.ledger import LedgerStore
from eternal.valuation import ValuationError, value_book, value_portfolio
from tests.flow_support import daily, latest_artifact, store_market

DAY = "2024-01-05"
RUNS = ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05", "2024-01-06"]


def _usdt(text: str) -> float:
    return float(text.replace(",", ""))


@pytest.fixture(scope="module")
def paper_days(tmp_path_factory, dataset, prefect_harness):
    """The ledger after five daily runs (the last decides on the close of 2024-01-05), the
    artifact of that close, and `eternal status` right after it."""
    mp = pytest.MonkeyPatch()
    url = f"sqlite:///{tmp_path_factory.mktemp('valuation') / 'eternal.db'}"
    for k, v in {"ETERNAL_DATABASE_URL": url, "ETERNAL_DATA__REFRESH_BEFORE_CYCLE": "false",
                 "ETERNAL_EXECUTION__RETRY_DELAYS_S": "[0, 0, 0]"}.items():
        mp.setenv(k, v)
    engine = connect(url)
    try:
        for day in RUNS:
            store_market(engine, dataset, "2023-01-01", day)     # the candles closed before the run
            report = daily(f"{day}T00:05:00Z")
        artifact = latest_artifact(f"daily-cycle-{DAY}").data
        yield {"engine": engine, "report": report, "artifact": artifact}
    finally:
        mp.undo()


def _status(capsys, engine) -> str:
    capsys.readouterr()
    assert main(["status"]) == 0
    return capsys.readouterr().out


def _records(engine, day: str) -> dict[str, float]:
    return {sl.value: e for sl, e in LedgerStore(engine).equity_records(utc(day)).items()}


def test_artifact_headline_equals_the_days_equity_records_perps_included(paper_days, dataset):
    engine, artifact = paper_days["engine"], paper_days["artifact"]
    records = _records(engine, DAY)
    headline = _usdt(re.search(r"Portfolio value: \*\*([\d,.]+) USDT\*\*", artifact).group(1))
    assert headline == round(sum(records.values()), 2)
    assert paper_days["report"]["total_equity"] == pytest.approx(sum(records.values()), abs=1e-9)
    # the old headline summed cash and coins only: FUNDING's three shorts are worth their margin
    # plus their unrealised P&L at the mark, which the headline now holds
    funding = LedgerStore(engine).load_books()[Sleeve.FUNDING]
    assert sorted(funding.perps) == sorted(PERP_SYMBOLS.values())
    marks = {sym: float(dataset.daily(sym).loc[DAY, "close"]) for sym in funding.perps}
    perps = sum(p.margin + (marks[sym] - p.entry_price) * p.qty for sym, p in funding.perps.items())
    closes = {a: float(dataset.daily(f"{a}/USDT").loc[DAY, "close"]) for a in ("BTC", "ETH", "SOL")}
    books = LedgerStore(engine).load_books()
    without_perps = sum(b.cash + sum(b.qty(a) * closes[a] for a in set(b.holdings) | set(b.staked)) for b in books.values())
    assert perps > 2_000
    assert headline == pytest.approx(without_perps + perps, abs=0.005)
    for sym in funding.perps:      # every perp in the positions table with its mark
        assert f"{sym} short" in artifact and f"{marks[sym]:,.2f}" in artifact


def test_equity_records_value_perps_at_their_mark_not_the_spot_close(paper_days, dataset):
    engine = paper_days["engine"]
    book = LedgerStore(engine).load_books()[Sleeve.FUNDING]       # the clock is the close of DAY
    assert SqlLedger(engine).load().clock.startswith("2024-01-06T00:00:00|0")
    spot = {a: float(dataset.daily(f"{a}/USDT").loc[DAY, "close"]) for a in ("BTC", "ETH", "SOL")}
    mark = {sym: float(dataset.daily(sym).loc[DAY, "close"]) for sym in book.perps}
    assert all(mark[sym] != spot[sym.split("/")[0]] for sym in book.perps)     # a basis to tell them apart
    coins = book.cash + sum(book.qty(a) * spot[a] for a in book.holdings)
    at_mark = coins + sum(p.margin + (mark[s] - p.entry_price) * p.qty for s, p in book.perps.items())
    at_spot = coins + sum(p.margin + (spot[s.split("/")[0]] - p.entry_price) * p.qty for s, p in book.perps.items())
    recorded = _records(engine, DAY)["funding"]
    assert recorded == pytest.approx(at_mark, abs=1e-6)
    assert abs(recorded - at_spot) > 0.01


def test_status_values_at_the_ledgers_last_close_not_the_newest_candle(paper_days, dataset, capsys, monkeypatch):
    engine = paper_days["engine"]
    monkeypatch.setenv("ETERNAL_DATABASE_URL", str(engine.url))
    records = _records(engine, DAY)
    out = _status(capsys, engine)
    assert f"valued at the close of {DAY} UTC" in out
    total = _usdt(re.search(r"portfolio ([\d,.]+) USDT", out).group(1))
    assert total == round(sum(records.values()), 2)
    for sleeve, equity in records.items():     # each sleeve's line: its equity record
        assert re.search(rf"^{sleeve}\s+{re.escape(f'{equity:,.2f}')}\s", out, re.M), sleeve
    # an operator imports everything (up to 2024-02-29): status still values at the ledger's day
    store_market(engine, dataset, "2023-01-01", "2024-03-01")
    later = _status(capsys, engine)
    assert _usdt(re.search(r"portfolio ([\d,.]+) USDT", later).group(1)) == total
    books = LedgerStore(engine).load_books()
    newest = {a: float(dataset.daily(f"{a}/USDT").loc["2024-02-29", "close"]) for a in ("BTC", "ETH", "SOL")}
    newest_marks = {sym: float(dataset.daily(sym).loc["2024-02-29", "close"]) for sym in PERP_SYMBOLS.values()}
    at_newest = sum(b.equity(newest, newest_marks) for b in books.values())
    assert abs(at_newest - total) > 1_000           # what the old status showed instead


def test_status_shows_weights_against_targets_pnl_stops_engines_and_runs(paper_days, capsys, monkeypatch):
    engine = paper_days["engine"]
    monkeypatch.setenv("ETERNAL_DATABASE_URL", str(engine.url))
    out = _status(capsys, engine)
    records = _records(engine, DAY)
    total = sum(records.values())
    core = re.search(r"^core\s+([\d,.]+)\s+([\d,.]+)\s+([\d.]+)%\s+([\d.]+)%", out, re.M)
    assert float(core.group(3)) == round(records["core"] / total * 100, 2) and core.group(4) == "60.00"
    # P&L today: the change of the equity records (no deposit in between; transfers net to zero)
    before = sum(_records(engine, "2024-01-04").values())
    today = _usdt(re.search(r"P&L today ([+-][\d,.]+) USDT", out).group(1))
    assert today == pytest.approx(total - before, abs=0.006)
    since = _usdt(re.search(r"since start ([+-][\d,.]+) USDT", out).group(1))
    assert since == pytest.approx(total - 100_000, abs=0.006)
    assert "BTC/USDT:USDT short 1x" in out and "breaker level: normal" in out
    assert re.search(r"^  funding\s+BTC FUNDING_COLLECTING", out, re.M)
    assert "daily-cycle" in out and "no failed or crashed run" in out


# the pure valuation ------------------------------------------------------------------------------
def _short() -> SleeveBook:
    return SleeveBook(Sleeve.FUNDING, cash=1_000.0, holdings={"BTC": 0.016},
                      perps={"BTC/USDT:USDT": PerpPosition("BTC/USDT:USDT", -0.016, 44_230.30, 707.68, 1.0,
                                                           datetime(2024, 1, 2, tzinfo=utc("2024-01-02").tzinfo))})


def test_a_perp_without_a_mark_is_refused_never_valued_at_the_spot_close():
    with pytest.raises(ValuationError, match="no mark for BTC/USDT:USDT"):
        value_book(_short(), {"BTC": 44_145.11})
    v = value_book(_short(), {"BTC": 44_145.11}, {"BTC/USDT:USDT": 44_145.40})
    assert v.equity == pytest.approx(1_000 + 0.016 * 44_145.11 + 707.68 + (44_145.40 - 44_230.30) * -0.016)


def test_pnl_of_the_day_leaves_out_capital_moved_between_sleeves():
    day = utc("2024-01-05")
    book = SleeveBook(Sleeve.TACTICAL, cash=5_100.0)     # 100 USDT came from FUNDING during the day
    v = value_portfolio(day, {Sleeve.TACTICAL: book}, {}, {}, capital_in={Sleeve.TACTICAL: 5_100.0},
                        previous={"equity": {"tactical": 5_000.0}, "capital_in": {"tactical": 5_000.0}})
    assert v.pnl_today == {Sleeve.TACTICAL: 0.0} and v.pnl_since_start == {Sleeve.TACTICAL: 0.0}


def test_book_equity_is_value_book_to_the_last_bit_at_every_close_of_a_replay(dataset):
    # The replay values each book with `book_equity` (no lines built); every operator-facing number
    # comes from `value_book`. Every sleeve at every close of 2022-05-01..2022-07-01 (LUNA and the
    # June crash: FUNDING's perps, TREND's shorts, TACTICAL's buys, CORE's staked ETH) must agree exactly.
    from eternal.config import load_settings
    from eternal.replay import run_backfill
    from eternal.valuation import book_equity

    seen = []

    def on_day(day, books, _exchange_books, closes, marks, _risk):
        for book in books.values():
            seen.append((book_equity(book, closes, marks), value_book(book, closes, marks).equity,
                         bool(book.perps), bool(book.staked)))

    s = load_settings().model_copy(update={"core": load_settings().core.model_copy(update={"staking_apy": 0.03})})
    run_backfill(dataset, s, start=utc("2022-05-01"), end=utc("2022-07-01"), progress=False, on_day=on_day,
                 compare_breakers=False)
    assert len(seen) == 61 * 5
    assert all(fast == slow for fast, slow, *_ in seen)
    assert any(perps for *_, perps, _ in seen) and any(staked for *_, staked in seen)
