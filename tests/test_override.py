"""The human override (issue 12) end to end on real stored data: `eternal halt` / `eternal resume`
and the `halt` / `resume` flows, whose resume pauses for a typed form as the Prefect UI shows it.

The days: the portfolio starts with the run of 2024-01-02 00:05 (CORE's first tranche, FUNDING
hedged short BTC, ETH and SOL perps at the open of 01-02). The run of 2024-01-09 00:05 decides
CORE's second tranche on the close of 01-08; with the 01-09 candles not stored yet its orders rest
at the venue. The halt cancels them. Up to the close of 01-15 (run of 01-16) CORE's third tranche
and FUNDING's exit of 01-16 00:00 are refused by the kill switch, while every settlement on the
held perps is booked. After the confirmed resume, the run of 01-23 sends FUNDING's exit (decided
again at the settlement of 01-16 08:00) and CORE's fourth tranche.
"""
from __future__ import annotations

import contextlib
import io
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from eternal.cli import main
from eternal.store.db import connect
from eternal.store.driver_store import SqlLedger
from eternal.store.models import (
    DriverStateRow,
    EquitySnapshotRow,
    EventRow,
    FundingPaymentRow,
    OrderRow,
    PaperOrderRow,
)
from tests.flow_support import count, daily, ledger_vs_exchange, rows, store_market

pytestmark = [pytest.mark.db, pytest.mark.flow]
PERPS = {"BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT"}


def engine_with(url: str, dataset, monkeypatch, end: str):
    monkeypatch.setenv("ETERNAL_DATABASE_URL", url)
    engine = connect(url)
    store_market(engine, dataset, "2023-01-01", end)
    return engine


@pytest.fixture
def db(dataset, monkeypatch, prefect_harness, tmp_path):
    """SQLite with every real series up to the close of 2024-01-08."""
    return engine_with(f"sqlite:///{tmp_path / 'eternal.db'}", dataset, monkeypatch, "2024-01-09")


def cli(*argv: str) -> tuple[int, str, str]:
    """`eternal ARGV` in-process: (exit code, stdout, stderr). Not capsys: Prefect's log handler
    would keep the stderr capsys swaps in and closes after the test (see test_backfill)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def events(engine, kind: str) -> list:
    return rows(engine, EventRow, where=[EventRow.kind == kind])


def risk(engine):
    return SqlLedger(engine).load().risk


def doc(engine) -> dict:
    with engine.connect() as conn:
        return conn.execute(select(DriverStateRow.doc)).scalar_one()


def test_halt_cancels_resting_orders_and_the_next_run_sends_none_but_books_funding_and_equity_until_a_confirmed_resume(
        db, dataset):
    daily("2024-01-02T00:05:00Z")
    daily("2024-01-09T00:05:00Z")
    resting = {r.client_order_id for r in rows(db, OrderRow, where=[OrderRow.status == "open"])}
    assert len(resting) == 2 and all(c.startswith("co240109") for c in resting)   # CORE's tranche 2
    held = {sym for b in SqlLedger(db).load().books.values() for sym, p in b.perps.items() if p.qty}
    assert held == PERPS

    before = datetime.now(UTC)
    code, out, _ = cli("halt", "--reason", "exchange incident: withdrawals look stuck", "--who", "alice")
    after = datetime.now(UTC)
    assert code == 0
    assert "kill switch engaged by alice" in out and out.count("cancelled: kill switch engaged by alice") == 2
    [engaged] = events(db, "kill_switch_engaged")                 # who, why, when
    assert engaged.data == {"who": "alice", "reason": "exchange incident: withdrawals look stuck"}
    assert before <= engaged.ts.replace(tzinfo=UTC) <= after and engaged.level == "alert"
    ks = risk(db).kill_switch
    assert (ks.who, ks.reason) == ("alice", "exchange incident: withdrawals look stuck")
    # the resting orders were cancelled at the venue and in our ledger
    assert {r.client_order_id: r.status for r in rows(db, OrderRow) if r.client_order_id in resting} == \
        dict.fromkeys(resting, "cancelled")
    assert {r.client_order_id: r.status for r in rows(db, PaperOrderRow) if r.client_order_id in resting} == \
        dict.fromkeys(resting, "cancelled")
    assert {e.data["client_order_id"] for e in events(db, "order_cancelled")} == resting
    assert not SqlLedger(db).load().open_orders

    # halted: the next run sends nothing, yet books every settlement and every close
    store_market(db, dataset, "2023-01-01", "2024-01-24")
    orders, equity_days = count(db, OrderRow), count(db, EquitySnapshotRow)
    daily("2024-01-16T00:05:00Z")
    assert count(db, OrderRow) == orders and count(db, PaperOrderRow) == orders
    # nothing is even decided under the kill switch: CORE's tranche 3 stays due (not counted as done)
    assert events(db, "risk_refused") == [] and events(db, "core_tranche")[-1].data["tranche"] == 2
    paid = rows(db, FundingPaymentRow, where=[FundingPaymentRow.ts >= datetime(2024, 1, 9, tzinfo=UTC)])
    assert {p.symbol for p in paid} == PERPS and len(paid) == 3 * 22   # 01-09 00:00 .. 01-16 00:00
    assert count(db, EquitySnapshotRow) > equity_days
    assert max(r.day for r in rows(db, EquitySnapshotRow)).date().isoformat() == "2024-01-15"
    assert ledger_vs_exchange(db) == {s: [] for s in ("core", "trend-1", "trend-2", "funding", "tactical")}

    # the operator reads the state
    code, out, _ = cli("risk")
    assert code == 0
    assert "kill switch: ENGAGED by alice" in out and "exchange incident" in out and "breaker level: normal" in out
    assert "funding" in out and "BTC/USDT:USDT -0.016" in out and len(out.splitlines()) < 25

    # a resume without the second confirmation is refused with one line, and changes nothing
    state, n_events = doc(db), count(db, EventRow)
    code, out, err = cli("resume", "--reason", "incident over", "--who", "bob")
    assert code == 2 and out == ""
    assert err.startswith("error: the kill switch is engaged") and "--confirm-kill-switch" in err
    assert err.count("\n") == 1
    assert doc(db) == state and count(db, EventRow) == n_events

    code, out, _ = cli("resume", "--reason", "incident over", "--who", "bob", "--confirm-kill-switch")
    assert code == 0 and "kill switch lifted by bob" in out
    [lifted] = events(db, "kill_switch_lifted")
    assert (lifted.data["who"], lifted.data["reason"], lifted.data["engaged_by"]) == ("bob", "incident over", "alice")
    assert risk(db).kill_switch is None

    daily("2024-01-23T00:05:00Z")                                  # trading again
    sent = rows(db, OrderRow, where=[OrderRow.id > orders])
    assert {(o.sleeve, o.status) for o in sent} == {("funding", "filled"), ("core", "filled")}
    assert {o.symbol for o in sent if o.sleeve == "funding"} == PERPS | {"BTC/USDT", "ETH/USDT", "SOL/USDT"}
    # tranche 3 (due on the 01-15 close, under the halt) went out on the first close after the resume
    assert events(db, "risk_refused") == [] and [e.data["tranche"] for e in events(db, "core_tranche")] == [1, 2, 3, 4]
    assert ledger_vs_exchange(db) == {s: [] for s in ("core", "trend-1", "trend-2", "funding", "tactical")}


def test_override_commands_refuse_with_one_line_when_there_is_no_portfolio_or_nothing_to_resume(db):
    for argv in (["halt", "--reason", "x"], ["resume", "--reason", "x"], ["risk"]):
        code, _, err = cli(*argv)
        assert code == 2 and err.startswith("error: no portfolio in ") and "run the daily cycle first" in err
        assert err.count("\n") == 1
    assert count(db, EventRow) == 0
    daily("2024-01-02T00:05:00Z")
    assert cli("resume", "--reason", "x") == (2, "", "error: nothing to resume: nothing is halted (drawdown 0.00%)\n")
    code, _, err = cli("halt", "--reason", "  ")
    assert code == 2 and "--reason is empty" in err
    assert risk(db).kill_switch is None and not events(db, "kill_switch_engaged")


# the flows: the resume form as the Prefect UI shows and answers it --------------------------------
def paused_resume_run(timeout_s: float = 60.0):
    """The flow run of `resume` waiting for its form (one at a time in these tests)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState, \
        FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            found = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["resume"])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                    any_=[StateType.PAUSED]))))
            if found:
                [run] = found
                return run
            time.sleep(0.2)
    raise AssertionError("the resume flow never paused")


def answer_form(answer: dict) -> tuple:
    """Start the `resume` flow, read its paused form (schema and description) and answer it as
    the UI does; returns (final state, schema, description)."""
    from prefect.flow_runs import resume_flow_run
    from prefect.input import keyset_from_paused_state
    from prefect.input.actions import read_flow_run_input

    from flows.override import resume

    with ThreadPoolExecutor(1) as pool:
        done = pool.submit(resume, reason="incident over", return_state=True)
        run = paused_resume_run()
        keys = keyset_from_paused_state(run.state)
        schema = read_flow_run_input(keys["schema"], flow_run_id=run.id)
        description = read_flow_run_input(keys["description"], flow_run_id=run.id)
        resume_flow_run(run.id, run_input=answer)
        state = done.result(timeout=60)
    return state, schema, description


@pytest.fixture
def halted_by_flow(dataset, monkeypatch, prefect_harness, tmp_path):
    """A portfolio of 2024-01-02 (FUNDING holds its hedges) halted by the `halt` flow."""
    import flows.override

    monkeypatch.setattr(flows.override, "POLL_INTERVAL_S", 0.5)      # the form is read every 0.5 s, not 10 s
    engine = engine_with(f"sqlite:///{tmp_path / 'eternal.db'}", dataset, monkeypatch, "2024-01-03")
    daily("2024-01-02T00:05:00Z")
    result = flows.override.halt(reason="drill: the operator pulls the plug", who="carol")
    assert [e["kind"] for e in result["events"]] == ["kill_switch_engaged"]
    assert result["status"]["kill_switch"]["who"] == "carol"
    return engine


def test_resume_flow_pauses_with_the_risk_state_and_lifts_the_kill_switch_only_with_the_second_confirmation(
        halted_by_flow):
    db = halted_by_flow
    form = {"confirm": True, "reason": "drill over", "who": "dave", "confirm_kill_switch": False}

    # not confirmed: the run ends Completed, nothing resumed
    state, schema, description = answer_form({**form, "confirm": False})
    assert state.is_completed() and "nothing resumed" in state.message
    assert state.result()["resumed"] is False and risk(db).kill_switch is not None
    props = schema["properties"]
    assert set(props) == {"confirm", "reason", "who", "confirm_kill_switch"}
    assert props["confirm"]["description"] == "I have read the state above and resume trading"
    assert all(p.get("description") for p in props.values())
    assert "**Breaker level:** normal" in description and "**Drawdown:** 0.00%" in description
    assert "ENGAGED by carol" in description and "drill: the operator pulls the plug" in description
    assert "| funding |" in description and "BTC/USDT:USDT -0.016" in description
    assert "tick `confirm_kill_switch`" in description

    # confirmed without the second confirmation: refused by the rules, the run Failed with one line
    state, _, _ = answer_form(form)
    assert state.is_failed()
    assert "ResumeRefused: the kill switch is engaged (drill: the operator pulls the plug, by carol" in state.message
    assert "\n" not in state.message
    assert risk(db).kill_switch is not None and not events(db, "kill_switch_lifted")

    # both confirmations: lifted, by whom and why
    state, _, _ = answer_form({**form, "confirm_kill_switch": True})
    assert state.is_completed()
    result = state.result()
    assert result["resumed"] is True and result["status"]["kill_switch"] is None
    assert risk(db).kill_switch is None
    [lifted] = events(db, "kill_switch_lifted")
    assert (lifted.data["who"], lifted.data["reason"], lifted.data["engaged_by"]) == ("dave", "drill over", "carol")


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_halt_and_confirmed_resume_on_postgresql(db_url, dataset, monkeypatch, prefect_harness):
    db = engine_with(db_url, dataset, monkeypatch, "2024-01-03")
    daily("2024-01-02T00:05:00Z")
    assert cli("halt", "--reason", "pg drill", "--who", "erin")[0] == 0
    assert risk(db).kill_switch.who == "erin" and len(events(db, "kill_switch_engaged")) == 1
    code, out, _ = cli("halt", "--reason", "again")                # engaged again: the first reason stays
    assert code == 0 and "already engaged" in out and risk(db).kill_switch.reason == "pg drill"
    assert cli("resume", "--reason", "done")[0] == 2
    assert cli("resume", "--reason", "done", "--who", "erin", "--confirm-kill-switch")[0] == 0
    assert risk(db).kill_switch is None and len(events(db, "kill_switch_lifted")) == 1
