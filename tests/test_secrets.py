"""Secrets are secrets: a credential in any setting is shown masked and never logged, stored or
echoed in an error.

The proof: known fake credentials in every setting that can carry one (the database password, a
user:password and a token in the Fear & Greed URL and in Bybit's public URL, the API key and
secret), then a daily cycle, a failing run (the refresh against a dead public URL), a failing Fear &
Greed download, a download and a backfill through the CLI; then every place a text can end up is
searched: stdout/stderr, log records, the Prefect server's flow runs (parameters, states), task runs,
logs, artifacts and events, every row of every table, every file written, the exception texts.
PostgreSQL's trust auth ignores the password, so a URL holding one still connects.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import traceback
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from eternal.cli import main
from eternal.errors import DataError
from eternal.secrets import SecretFilter, SecretUrl, redact_url, register, scrub
from eternal.store.db import cached_engine, connect
from eternal.store.models import CycleRunRow
from tests.conftest import PG_URL, create_database
from tests.flow_support import daily, rows, store_market

DB_PASSWORD = "FAKEDBPW-5d1c"
FG_USER, FG_PASSWORD, FG_TOKEN = "fakefguser", "FAKEFGPW-8a2e", "FAKEFGTOKEN-3b7f"
BB_USER, BB_PASSWORD, BB_TOKEN = "fakebbuser", "FAKEBBPW-9c4d", "FAKEBBTOKEN-1e6a"
API_KEY, API_SECRET = "FAKEAPIKEY-2f8b", "FAKEAPISECRET-7a3c"
BF_PASSWORD = "FAKEBFPW-4e9d"
SECRETS = (DB_PASSWORD, FG_USER, FG_PASSWORD, FG_TOKEN, BB_USER, BB_PASSWORD, BB_TOKEN, API_KEY, API_SECRET,
           BF_PASSWORD)


# the pieces ---------------------------------------------------------------------------------
@pytest.mark.parametrize("url, shown", [
    ("postgresql+psycopg2://eternal:pw@db.example:5432/eternal", "postgresql+psycopg2://***:***@db.example:5432/eternal"),
    ("https://user@proxy.example/fng", "https://***@proxy.example/fng"),
    # unencoded "/", "#" and "@" in a password (SQLAlchemy reads to the last "@"): masked whole
    ("postgresql+psycopg2://postgres:PW/LEAK123@127.0.0.1:5432/t", "postgresql+psycopg2://***:***@127.0.0.1:5432/t"),
    ("postgresql://postgres:PW#LEAK123@db.example/t", "postgresql://***:***@db.example/t"),
    ("postgresql://postgres:PW@LEAK123@db.example/t", "postgresql://***:***@db.example/t"),
    # an "@" in a query is no userinfo
    ("https://api.example/fng/?limit=0&email=a@b.example", "https://api.example/fng/?limit=0&email=a@b.example"),
    ("https://proxy.example/fng/?limit=0&format=json&token=abc", "https://proxy.example/fng/?limit=0&format=json&token=***"),
    ("https://h.example/?api_key=k1&apiKey=k2&X-Amz-Signature=s&access_token=t&page=2",
     "https://h.example/?api_key=***&apiKey=***&X-Amz-Signature=***&access_token=***&page=2"),
    ("https://api.alternative.me/fng/?limit=0&format=json", "https://api.alternative.me/fng/?limit=0&format=json"),
    ("sqlite:///var/eternal.db", "sqlite:///var/eternal.db"),
    ("sqlite:////tmp/a@b/eternal.db", "sqlite:////tmp/a@b/eternal.db"),     # an @ in a path is no userinfo
    ("http://127.0.0.1:8123", "http://127.0.0.1:8123"),
    ("https://u:p%40ss@h.example:8443/x?sig=&q=1#frag", "https://***:***@h.example:8443/x?sig=&q=1#frag"),
])
def test_redact_url_masks_userinfo_and_token_like_query_values_and_keeps_the_rest(url, shown):
    assert redact_url(url) == shown


def test_scrub_removes_registered_values_and_the_credentials_of_any_url_in_a_text():
    register(SecretStr("k-registered-9911"), SecretUrl("https://u:pw-registered-7@h.example/?token=tok-registered-3"))
    text = ("GET https://someone:other-pw@x.example/v5?category=spot failed; key k-registered-9911; "
            "retry with pw-registered-7 or tok-registered-3 (see https://status.bybit.com)")
    assert scrub(text) == ("GET https://***:***@x.example/v5?category=spot failed; key ***; "
                           "retry with *** or *** (see https://status.bybit.com)")
    assert scrub(scrub(text)) == scrub(text)       # a scrubbed text passes a second door unchanged


def test_a_url_password_is_registered_decoded_too():
    register(SecretUrl("postgresql://u:p%40ss-word-1@h/db"))
    assert scrub("auth failed for p@ss-word-1 and p%40ss-word-1") == "auth failed for *** and ***"


def test_the_log_filter_scrubs_message_arguments_and_exception_text():
    register(SecretStr("log-secret-4242"))
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    handler = Keep()
    handler.addFilter(SecretFilter())
    log = logging.getLogger("tests.secrets.filter")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("connecting to %s with %s", "http://a:b-pass@127.0.0.1:9/", "log-secret-4242")
        try:
            raise RuntimeError("boom at https://u:log-secret-4242@h.example/")
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    assert records[0] == "connecting to http://***:***@127.0.0.1:9/ with ***"
    assert records[1].startswith("failed\nTraceback") and "boom at https://***:***@h.example/" in records[1]
    assert "log-secret-4242" not in "".join(records) and "b-pass" not in "".join(records)


def test_loading_settings_puts_the_filter_on_prefects_api_and_console_handlers_and_roots():
    from prefect import flow  # noqa: F401  (Prefect sets its handlers up on this first use)
    from prefect.logging.handlers import APILogHandler, PrefectConsoleHandler

    from eternal.config import load_settings

    load_settings()
    handlers = [h for lg in (logging.getLogger(), logging.getLogger("prefect.flow_runs"),
                             logging.getLogger("prefect.task_runs")) for h in lg.handlers]
    assert any(isinstance(h, APILogHandler) for h in handlers)
    assert any(isinstance(h, PrefectConsoleHandler) for h in handlers)
    for h in handlers:
        assert any(isinstance(f, SecretFilter) for f in h.filters), h


def test_connect_error_masks_the_password_of_the_url(tmp_path):
    port = _closed_port()
    url = f"postgresql+psycopg2://someone:conn-pw-5150@127.0.0.1:{port}/x"
    with pytest.raises(Exception) as info:
        connect(url)      # (a traceback shows this line: the URL is not written in it)
    assert "conn-pw-5150" not in str(info.value) and f"***:***@127.0.0.1:{port}/x" in str(info.value)
    assert "conn-pw-5150" not in "".join(traceback.format_exception(info.value))


# the proof ----------------------------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _with_password(url: str, password: str) -> str:
    return make_url(url).set(password=password).render_as_string(hide_password=False)


def _fresh_database(name: str) -> str:
    """An empty PostgreSQL database `name` beside the worker's (created once, emptied each time)."""
    create_database(name)
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return url


def _dump_database(url: str) -> str:
    """Every row of every table, as text."""
    engine = create_engine(url)
    try:
        out = []
        with engine.connect() as conn:
            for table in inspect(engine).get_table_names():
                out += [f"{table}: {tuple(row)!r}" for row in conn.execute(text(f'SELECT * FROM "{table}"'))]
        return "\n".join(out)
    finally:
        engine.dispose()


def _prefect_texts(since) -> tuple[str, dict]:
    """Flow runs (parameters, states), their task runs, logs and artifacts, and events, as text."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterStartTime,
        LogFilter,
        LogFilterFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogHandler

    from prefect.events.worker import EventsWorker

    APILogHandler().flush()        # logs and events still queued in this process
    EventsWorker.drain_all(timeout=10)

    async def events_since(client) -> list[dict]:
        page = (await client._client.post("/events/filter", json={
            "filter": {"occurred": {"since": since.isoformat()}}, "limit": 50})).json()
        events = list(page["events"])
        while page.get("next_page"):
            page = (await client._client.get(page["next_page"])).json()
            events += page["events"]
        return events

    async def read():
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                start_time=FlowRunFilterStartTime(after_=since)), limit=200)
            ids = [r.id for r in runs]
            states = [s for r in runs for s in await client.read_flow_run_states(r.id)]
            tasks = await client.read_task_runs(task_run_filter=TaskRunFilter(
                flow_run_id=TaskRunFilterFlowRunId(any_=ids)), limit=200)
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)), limit=200)
            more = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)),
                                          limit=200, offset=200)
            artifacts = await client.read_artifacts(limit=200)
            for _ in range(40):       # the server stores events in batches: wait for the last run's end
                events = await events_since(client)
                if sum(e["event"] in ("prefect.flow-run.Failed", "prefect.flow-run.Completed") for e in events) >= 3:
                    break
                await asyncio.sleep(0.5)
            return runs, states, tasks, logs + more, artifacts, events

    runs, states, tasks, logs, artifacts, events = asyncio.run(read())
    texts = [r.model_dump_json() for r in (*runs, *states, *tasks, *logs, *artifacts)] + [repr(events)]
    return "\n".join(texts), {"runs": runs, "logs": logs, "artifacts": artifacts, "events": events}


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_no_fake_credential_appears_in_any_output_row_log_file_or_error(
        db_url, dataset, shared_data, monkeypatch, capsys, caplog, tmp_path, prefect_harness):
    from datetime import UTC, datetime

    since = datetime.now(UTC)
    caplog.set_level(logging.DEBUG)
    dead = _closed_port()
    ledger_url = _with_password(db_url, DB_PASSWORD)
    replay_url = _with_password(_fresh_database(make_url(PG_URL).database + "_replay"), BF_PASSWORD)
    fg_url = f"http://{FG_USER}:{FG_PASSWORD}@127.0.0.1:{dead}/fng/?limit=0&format=json&token={FG_TOKEN}"
    bb_url = f"http://{BB_USER}:{BB_PASSWORD}@127.0.0.1:{dead}/?apikey={BB_TOKEN}"
    for var, value in {"ETERNAL_DATABASE_URL": ledger_url, "ETERNAL_DATA__FEAR_GREED_URL": fg_url,
                       "ETERNAL_DATA__FEAR_GREED_RETRIES": "0", "ETERNAL_EXCHANGE__PUBLIC_URL": bb_url,
                       "ETERNAL_EXCHANGE__API_KEY": API_KEY, "ETERNAL_EXCHANGE__API_SECRET": API_SECRET}.items():
        monkeypatch.setenv(var, value)
    cached_engine.cache_clear()
    store_market(connect(ledger_url), dataset, "2015-01-01", "2024-01-10")   # ATHs need it all
    outputs, errors = [], []

    # config show: every credential masked, the hosts still shown
    assert main(["config", "show"]) == 0
    shown = capsys.readouterr().out
    outputs.append(shown)
    assert f"***:***@127.0.0.1:{dead}/fng/?limit=0&format=json&token=***" in shown
    assert f"***:***@{make_url(db_url).host}:{make_url(db_url).port}/" in shown

    # a daily cycle that trades, then a failing run: the refresh against the dead public URL
    report = daily("2024-01-03T00:05:00Z")
    assert report["closes"]
    monkeypatch.setenv("ETERNAL_DATA__REFRESH_BEFORE_CYCLE", "true")
    with pytest.raises(DataError) as failed:
        daily("2024-01-12T00:05:00Z")
    errors.append("".join(traceback.format_exception(failed.value)))
    # unreachable: one line naming the offline way (no URL in it; the searches below find no secret)
    assert "Bybit cannot be reached" in str(failed.value) and BB_PASSWORD not in str(failed.value)
    monkeypatch.setenv("ETERNAL_DATA__REFRESH_BEFORE_CYCLE", "false")
    outputs += capsys.readouterr()              # Prefect's console lines of both runs
    stored = rows(connect(ledger_url), CycleRunRow.status, CycleRunRow.summary)
    assert [r.summary["error"] for r in stored if r.status == "failed"] == [str(failed.value)]

    # the CLI's own doors: a failing download and Fear & Greed download, then a backfill into a
    # PostgreSQL ledger whose URL holds a password
    for argv in (["data", "download", "--since", "2024-01-01"], ["data", "fear-greed"]):
        assert main(argv) == 2
        out, err = capsys.readouterr()
        outputs += [out, err]
        assert err.splitlines()[-1].startswith("error: ") and f"127.0.0.1:{dead}" in err
    out_dir = tmp_path / "out"
    # with a Prefect server configured the backfill is a flow run (stored: its parameters are searched)
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    assert main(["backfill", "--data-dir", str(shared_data), "--start", "2024-01-01", "--end", "2024-01-20",
                 "--monthly-deposit", "500", "--out", str(out_dir), "--database-url", replay_url,
                 "--no-progress"]) == 0
    out, err = capsys.readouterr()
    outputs += [out, err]
    assert "final equity" in out and (out_dir / "summary.json").exists()
    assert _dump_database(replay_url).count("fills: ") > 0          # the replay's ledger went there

    prefect_text, found = _prefect_texts(since)
    backfill_runs = [r for r in found["runs"] if r.parameters.get("out") == str(out_dir)]
    assert len(backfill_runs) == 1 and "database_url" not in backfill_runs[0].parameters
    assert any(r.state_type.value == "FAILED" for r in found["runs"])           # the failing run is there
    assert found["logs"] and any(e["event"] == "prefect.flow-run.Failed" for e in found["events"])

    searched = {
        "stdout/stderr": "\n".join(outputs),
        "log records": caplog.text + "\n".join(r.getMessage() + str(r.exc_text) for r in caplog.records),
        "Prefect server": prefect_text,
        "ledger database": _dump_database(ledger_url),
        "replay database": _dump_database(replay_url),
        "files": "\n".join(p.read_bytes().decode("utf-8", "replace") for p in tmp_path.rglob("*") if p.is_file()),
        "exceptions": "\n".join(errors),
    }
    assert "decided" in searched["ledger database"] or "cycle_runs" in searched["ledger database"]
    leaks = {where: [s for s in SECRETS if s in text_] for where, text_ in searched.items()}
    assert leaks == {where: [] for where in searched}
