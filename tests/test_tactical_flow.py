"""TACTICAL in the daily-cycle flow on the paper exchange, on SQLite and PostgreSQL (June 2022)."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from eternal.data.store import MarketStore
from eternal.exchange.paper import PaperExchange
from eternal.models import PERP_SYMBOLS, SPOT_SYMBOLS, Sleeve
from eternal.store.db import connect
from eternal.store.ledger import LedgerStore
from eternal.store.models import EventRow, TransferRow

pytestmark = [pytest.mark.db, pytest.mark.flow]


@pytest.fixture
def db(db_url, dataset, monkeypatch, prefect_harness):
    """A year of real BTC/ETH candles and funding up to 2022-06-02, and the Fear & Greed index."""
    monkeypatch.setenv("ETERNAL_DATABASE_URL", db_url)
    engine = connect(db_url)
    market = MarketStore(engine)
    start, end = "2021-06-01", "2022-06-03"
    for a in ("BTC", "ETH"):
        for sym in (SPOT_SYMBOLS[a], PERP_SYMBOLS[a]):
            df = dataset.daily(sym)
            market.upsert_candles(sym, "1d", df[(df.index >= start) & (df.index < end)])
        f = dataset.funding[PERP_SYMBOLS[a]]
        market.upsert_funding(PERP_SYMBOLS[a], f[(f.index >= start) & (f.index <= end)])
    market.upsert_fear_greed(dataset.fear_greed[dataset.fear_greed.index < end])
    return engine


def run(asof: str) -> dict:
    from flows.daily_cycle import daily_cycle

    return daily_cycle(asof=asof)


def books_equal_exchange(engine) -> None:
    ours = LedgerStore(engine).load_books()
    theirs = PaperExchange.from_state(LedgerStore(engine).load_exchange_state("paper"), None, None).books
    for sleeve in (Sleeve.CORE, Sleeve.TACTICAL):
        assert ours[sleeve].cash == pytest.approx(theirs[sleeve].cash, abs=1e-9)
        assert ours[sleeve].holdings == pytest.approx(theirs[sleeve].holdings, abs=1e-12)


def test_tactical_deploys_on_the_june_2022_close_books_the_lot_and_hands_it_to_core_once(db, dataset, monkeypatch):
    """2022-06-01: BTC 29,805.83 is 55.9 % below its 67,525.83 ATH and F&G reads 17: level 1 applies
    (50 % of TACTICAL's 5,000 USDT), filled at once in paper mode. The next cycle books the lot at
    its fill cost; with a lot age limit of 1 day it also moves the coins to CORE in kind, exactly
    once although the execution step fails after the exchange made the transfer."""
    monkeypatch.setenv("ETERNAL_TACTICAL__MAX_LOT_AGE_DAYS", "1")
    btc, eth = (float(dataset.daily(f"{a}/USDT").loc["2022-06-01", "close"]) for a in ("BTC", "ETH"))
    assert btc == 29_805.83 and int(dataset.fear_greed["value"]["2022-06-01"]) == 17
    run("2022-06-02T00:05:00Z")
    tac = LedgerStore(db).load_books()[Sleeve.TACTICAL]
    assert tac.holdings == {"BTC": pytest.approx(2_000 / btc), "ETH": pytest.approx(500 / eth)}
    assert tac.cash == pytest.approx(5_000 - 2_500 * 1.001)           # taker fee 0.10 %
    state = LedgerStore(db).load_states()[Sleeve.TACTICAL]
    assert state["phase"] == "DEPLOYING" and state["levels_fired"] == [1]
    assert set(state["signals"]) >= {"drawdown_level_1", "fear_greed"}
    books_equal_exchange(db)

    from tasks import execution

    original, calls = execution._persist, []

    def crash_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("database lost after the exchange moved the coins")
        return original(*args, **kwargs)

    monkeypatch.setattr(execution, "_persist", crash_once)
    run("2022-06-03T00:05:00Z")
    assert len(calls) == 2                                              # retried once
    books = LedgerStore(db).load_books()
    state = LedgerStore(db).load_states()[Sleeve.TACTICAL]
    assert state["lots"] == [] and books[Sleeve.TACTICAL].holdings == {"BTC": 0.0, "ETH": 0.0}
    assert books[Sleeve.TACTICAL].cash == pytest.approx(5_000 - 2_500 * 1.001)
    with db.connect() as conn:
        moved = conn.execute(select(TransferRow.asset, TransferRow.qty).where(
            TransferRow.from_sleeve == "tactical")).all()
        opened = conn.execute(select(EventRow.data).where(EventRow.kind == "tactical_lot_opened")).scalar_one()
    assert sorted(moved) == [("BTC", pytest.approx(2_000 / btc)), ("ETH", pytest.approx(500 / eth))]
    assert opened["cost_usdt"] == pytest.approx(2_500 * 1.001)
    core = books[Sleeve.CORE]
    assert core.holdings["BTC"] > 2_000 / btc                           # its own tranche plus the lot
    books_equal_exchange(db)
