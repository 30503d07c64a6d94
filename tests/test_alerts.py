"""Alerts that arrive (issue 12): events sent through Apprise to a local `json://` receiver, with
their severity in the title; a failing channel is an `alert_failed` event, never an exception, and
the URL's token stays out of events and logs."""
from __future__ import annotations

import logging
import re
import socket
from datetime import datetime

import pytest

from eternal.alerts import MAX_MESSAGES, SEVERITY, alert_urls, notify, parse_urls, severity, summary_alert
from eternal.config import load_settings
from eternal.models import UTC, Event, Sleeve
from tests.alert_receiver import AlertReceiver

NOW = datetime(2024, 1, 2, 0, 5, tzinfo=UTC)
TOKEN = "Tk9secret7hook3key"             # a webhook key in the path
QUERY_TOKEN = "q8s3cr3tv4lu3"            # and one in the query


@pytest.fixture
def receiver():
    r = AlertReceiver().start()
    yield r
    r.stop()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ev(kind: str, message: str = "what happened", level: str = "info", sleeve: Sleeve | None = None) -> Event:
    return Event(NOW, kind, message, sleeve=sleeve, level=level)


def title_severity(body: dict) -> str:
    return re.search(r"\[(P\d)\]", body["title"])[1]


# severities --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, expected", [
    ("breaker_escalated", "P0"), ("kill_switch_engaged", "P0"), ("exchange_unhealthy", "P0"),
    ("order_rejected", "P1"), ("insufficient_funds", "P1"), ("tactical_deploy_failed", "P1"),
    ("data_quality_failed", "P1"), ("reconciliation_failed", "P1"), ("invariant_broken", "P1"),
    ("liquidation", "P1"), ("kill_switch_lifted", "P1"), ("breaker_resumed", "P1"), ("fill_adopted", "P1"),
    ("risk_refused", "P2"), ("risk_reduced", "P2"), ("breaker_cleared", "P2"), ("order_blocked", "P2"),
    ("candle_corrected", "P2"), ("stored_rows_replaced", "P2"), ("daily_summary", "P3")])
def test_named_kinds_have_the_specs_severity_whatever_their_level(kind, expected):
    assert SEVERITY[kind] == expected
    assert severity(ev(kind)) == severity(ev(kind, level="alert")) == expected


def test_unknown_kinds_go_by_level_and_info_and_alert_failed_are_never_alerted():
    assert severity(ev("something_new", level="alert")) == "P1"
    assert severity(ev("something_new", level="warning")) == "P2"
    assert severity(ev("core_tranche")) is None
    assert severity(ev("alert_failed", level="alert")) is None      # no alert about an alert
    assert severity(summary_alert("Close of 2024-01-01", NOW)) == "P3"


def test_alert_urls_are_split_on_commas_and_whitespace_but_a_urls_own_list_survives(monkeypatch):
    text = "json://127.0.0.1:9/a, tgram://123456789:AAbbCCdd/42\n mailto://u:p@x.org?to=a@x.org,b@x.org"
    assert parse_urls(text) == ["json://127.0.0.1:9/a", "tgram://123456789:AAbbCCdd/42",
                                "mailto://u:p@x.org?to=a@x.org,b@x.org"]
    assert parse_urls("") == parse_urls(None) == []
    monkeypatch.setenv("ETERNAL_ALERT_URLS", "json://127.0.0.1:9/a json://127.0.0.1:9/a")
    assert alert_urls(load_settings()) == ["json://127.0.0.1:9/a"]
    monkeypatch.delenv("ETERNAL_ALERT_URLS")
    assert alert_urls(load_settings()) == []


# delivery ----------------------------------------------------------------------------------------
def test_a_p0_and_a_p1_event_arrive_with_their_severity_and_text_and_an_info_event_does_not(receiver):
    events = [ev("core_tranche", "tranche 1/4"),
              ev("order_rejected", "BTC/USDT buy rejected: qty below the minimum", "alert", Sleeve.CORE),
              ev("breaker_escalated", "L2: drawdown 15.3 % from the high-water mark", "alert")]
    failed = notify(events, [receiver.url("hooks")], now=NOW)
    assert failed == []
    got = receiver.bodies()
    assert [(title_severity(b), b["type"]) for b in got] == [("P0", "failure"), ("P1", "failure")]  # P0 first
    assert got[0]["title"] == "Eternal Engine [P0] breaker_escalated"
    assert got[0]["message"].startswith("L2: drawdown 15.3 % from the high-water mark")
    assert got[1]["title"] == "Eternal Engine [P1] order_rejected"
    assert "BTC/USDT buy rejected: qty below the minimum\nsleeve: core" in got[1]["message"]
    assert not any("tranche" in b["message"] for b in got)


def test_p2_is_a_warning_and_the_daily_summary_p3_an_info(receiver):
    notify([ev("risk_reduced", "TREND size x0.75"), summary_alert("Close of 2024-01-01: equity 100,000.00", NOW)],
           [receiver.url()], now=NOW)
    assert [(title_severity(b), b["type"]) for b in receiver.bodies()] == [("P2", "warning"), ("P3", "info")]


def test_beyond_the_cap_the_rest_arrive_as_one_digest(receiver):
    events = [ev("risk_reduced", f"cut {i}") for i in range(MAX_MESSAGES + 5)]
    assert notify(events, [receiver.url()], now=NOW) == []
    got = receiver.bodies()
    assert len(got) == MAX_MESSAGES
    assert got[-1]["title"] == "Eternal Engine [P2] more_alerts" and "6 more alerts" in got[-1]["message"]


# failing channels --------------------------------------------------------------------------------
def test_a_refusing_receiver_and_a_closed_port_give_alert_failed_events_not_exceptions(receiver):
    receiver.failing = True
    dead = f"json://127.0.0.1:{closed_port()}/hooks"
    events = [ev("kill_switch_engaged", "operator stop", "alert"), ev("core_tranche"),
              ev("order_rejected", "ETH/USDT sell rejected", "alert")]
    failed = notify(events, [receiver.url("hooks"), dead], now=NOW, timeout_s=2.0)
    assert len(receiver.bodies()) == 1      # the first was sent and refused; the channel is not tried again
    assert [(e.kind, e.level, e.ts, e.data["severity"], e.data["kind"], e.data["channel"]) for e in failed] == [
        ("alert_failed", "warning", NOW, sev, kind, channel) for channel in (receiver.url("hooks"), dead)
        for sev, kind in (("P0", "kill_switch_engaged"), ("P1", "order_rejected"))]
    assert "not tried" in failed[1].message and "refused it or did not answer" in failed[0].message


def test_a_receiver_that_never_answers_is_given_up_after_the_timeout():
    with socket.socket() as silent:         # accepts connections (the backlog) and never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"json://127.0.0.1:{silent.getsockname()[1]}/hooks"
        failed = notify([ev("breaker_escalated", level="alert"), ev("liquidation", level="alert")], [url],
                        now=NOW, timeout_s=0.3)
    assert [e.data["kind"] for e in failed] == ["breaker_escalated", "liquidation"]


@pytest.mark.parametrize("url", ["not a url", "nosuchscheme://host/x", "json://", "tgram://"])
def test_a_url_apprise_cannot_parse_is_an_alert_failed_event(url):
    failed = notify([ev("breaker_escalated", level="alert")], [url], now=NOW)
    assert [(e.kind, e.data["kind"]) for e in failed] == [("alert_failed", "breaker_escalated")]


def test_the_urls_token_reaches_neither_the_events_nor_the_logs(receiver, caplog):
    caplog.set_level(logging.DEBUG)           # Apprise's and urllib3's debug lines print the URL
    path = f"hooks/{TOKEN}?apikey={QUERY_TOKEN}&x={QUERY_TOKEN}"
    urls = [receiver.url(path), f"json://127.0.0.1:{closed_port()}/{path}"]
    receiver.failing = True
    failed = notify([ev("order_rejected", level="alert")], urls, now=NOW)
    assert len(failed) == 2 and receiver.received[0]["path"].startswith(f"/hooks/{TOKEN}")   # it was used
    shown = repr(failed) + caplog.text
    assert "127.0.0.1" in caplog.text and "JSON" in caplog.text      # the logs were captured
    assert TOKEN not in shown and QUERY_TOKEN not in shown
    assert failed[0].data["channel"] == f"json://127.0.0.1:{receiver.port}/hooks/***?apikey=***&x=***"


# the flow ----------------------------------------------------------------------------------------
@pytest.mark.db
@pytest.mark.flow
def test_the_daily_cycle_sends_the_p3_summary_and_completes_with_a_failing_channel_on_record(
        db_url, dataset, monkeypatch, prefect_harness, receiver):
    from eternal.store.db import connect
    from eternal.store.models import CycleRunRow, EventRow
    from tests.flow_support import daily, rows, store_market

    monkeypatch.setenv("ETERNAL_DATABASE_URL", db_url)
    engine = connect(db_url)
    store_market(engine, dataset, "2023-01-01", "2024-01-10")
    monkeypatch.setenv("ETERNAL_ALERT_URLS", receiver.url(f"hooks/{TOKEN}"))

    report = daily("2024-01-02T00:05:00Z")
    summaries = [b for b in receiver.bodies() if b["title"] == "Eternal Engine [P3] daily_summary"]
    assert len(summaries) == 1 and summaries[0]["type"] == "info"
    text = summaries[0]["message"]
    assert text.startswith(f"Close of 2024-01-01: equity {report['total_equity']:,.2f} USDT (core ")
    assert f"; {report['orders']} orders; halted: none" in text

    receiver.failing = True
    report = daily("2024-01-03T00:05:00Z")
    assert report["closes"] == ["2024-01-02"]
    assert [r.status for r in rows(engine, CycleRunRow.status)] == ["completed", "completed"]
    failed = rows(engine, EventRow.level, EventRow.data, EventRow.message, where=[EventRow.kind == "alert_failed"])
    assert {(r.level, r.data["severity"], r.data["kind"]) for r in failed} >= {("warning", "P3", "daily_summary")}
    assert all(TOKEN not in r.message and TOKEN not in r.data["channel"] for r in failed)
