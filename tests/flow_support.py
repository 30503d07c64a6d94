"""What the flow tests share: real market data stored in a database, the flows, counts, artifacts,
and the check that our ledger equals the paper exchange's books (not a test module)."""
from __future__ import annotations

import asyncio
import io
import json
from contextlib import redirect_stderr, redirect_stdout
from datetime import datetime

from sqlalchemy import func, select

from eternal.config import load_settings
from eternal.data.store import MarketStore
from eternal.driver import book_differences
from eternal.store.driver_store import open_paper_exchange
from eternal.store.ledger import LedgerStore


def store_market(engine, dataset, start: str, end: str) -> None:
    """Every real series of ../shared/data (spot and perp daily candles of BTC/ETH/SOL, their funding
    settlements, Fear & Greed) with start <= timestamp < end, as a live store would hold it; the
    spot candles of the assets whose all-time high an engine reads from their first day (2017-08-17,
    `eternal.market.FULL_HISTORY_FROM`): the flows refuse a shorter history."""
    from eternal.market import FULL_HISTORY_FROM

    market = MarketStore(engine)
    full = {f"{asset}/USDT" for asset in FULL_HISTORY_FROM}
    for (symbol, timeframe), df in dataset.candles.items():
        first = df.index[0] if symbol in full else start
        market.upsert_candles(symbol, timeframe, df[(df.index >= first) & (df.index < end)])
    for symbol, df in dataset.funding.items():
        market.upsert_funding(symbol, df[(df.index >= start) & (df.index < end)])
    fg = dataset.fear_greed
    market.upsert_fear_greed(fg[(fg.index >= start) & (fg.index < end)])


def daily(asof: str) -> dict:
    from flows.daily_cycle import daily_cycle

    return daily_cycle(asof=asof)


def funding(asof: str) -> dict:
    from flows.funding_collection import funding_collection

    return funding_collection(asof=asof)


def quarterly(asof: str) -> dict:
    from flows.quarterly_rebalance import quarterly_rebalance

    return quarterly_rebalance(asof=asof)


def count(engine, model, *where) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def rows(engine, *columns, where=()) -> list:
    with engine.connect() as conn:
        return conn.execute(select(*columns).where(*where)).all()


def ledger_vs_exchange(engine) -> dict[str, list[str]]:
    """Per sleeve, what differs between our books and the paper exchange's (all empty: equal)."""
    ours = LedgerStore(engine).load_books()
    venue = open_paper_exchange(engine, load_settings().fees).books
    return {s.value: book_differences(b, venue.get(s)) for s, b in ours.items()}


def latest_artifact(key: str):
    """The newest artifact under `key` (the session's Prefect server keeps other tests' runs too)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    found = asyncio.run(read())
    assert found, f"no artifact {key!r}"
    return max(found, key=lambda a: a.created)


def table_rows(artifact) -> list[dict]:
    return json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data


def frozen_datetime(at: datetime) -> type[datetime]:
    """A `datetime` whose now() is `at`: deposit_intake stamps a deposit with the wall clock."""

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return at

    return Frozen


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`eternal ARGV` in this process: (exit status, stdout, stderr). Captured in buffers never
    closed, not capsys: Prefect may set its console log handler up on the stream of the moment
    during a flow run, and one left on a closed capsys stream fails every later flow's logging."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        from eternal.cli import main

        code = main(argv)
    return code, out.getvalue(), err.getvalue()
