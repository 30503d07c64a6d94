"""Alerts that arrive: domain events sent to the operator through Apprise (issue 12, "Alerts").

`ETERNAL_ALERT_URLS` holds one or more Apprise URLs (tgram://, mailto://, slack://, json://...).
Each alertable event becomes one notification titled `<prefix> [P0] breaker_escalated`, so any
receiver (a phone, a `json://` webhook) reads the severity from the title:

* P0 - the portfolio is in danger: a circuit breaker escalated, the kill switch, the exchange down;
* P1 - something failed and needs a look: executions, data quality, reconciliation, invariants;
* P2 - worth knowing: risk limits applied, a breaker cleared, stored history corrected;
* P3 - the daily summary only.

A channel that fails never stops the trading logic: `notify` never raises and returns an
`alert_failed` event per undelivered alert, for the caller to store (tasks/notify.py). Alert URLs
carry tokens (a bot token as the host, a webhook key in the path): their token-like parts are
registered with `eternal.secrets`, so `scrub` and the log filter remove them, and the loggers of
Apprise and urllib3 are filtered themselves (their debug lines print the URL posted to).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from eternal import secrets
from eternal.models import Event

log = logging.getLogger("eternal.alerts")

SEVERITY: dict[str, str] = {
    # P0: act now
    "breaker_escalated": "P0", "kill_switch_engaged": "P0", "exchange_unhealthy": "P0",
    # P1: a failure to look at today
    "order_rejected": "P1", "insufficient_funds": "P1", "tactical_deploy_failed": "P1",
    "data_quality_failed": "P1", "reconciliation_failed": "P1", "invariant_broken": "P1", "run_failed": "P1",
    "liquidation": "P1", "kill_switch_lifted": "P1", "breaker_resumed": "P1", "fill_adopted": "P1",
    # P2: worth knowing
    "risk_refused": "P2", "risk_reduced": "P2", "breaker_cleared": "P2", "order_blocked": "P2",
    "candle_corrected": "P2", "stored_rows_replaced": "P2",
    # P3: the daily summary only
    "daily_summary": "P3",
}
"""Event kind -> severity. Kinds not named here: level "alert" -> P1, "warning" -> P2, info -> none."""

FAILED_KIND = "alert_failed"
SUMMARY_KIND = "daily_summary"
NEVER_ALERTED = frozenset({FAILED_KIND})     # an alert about a failed alert would loop
MAX_MESSAGES = 20
"""Per channel and call: beyond this, the rest go as one digest (a throttled service such as
Telegram waits ~5 s between messages; 100 risk_reduced lines must not hold a flow for minutes)."""

_SCHEME = r"[A-Za-z][A-Za-z0-9+.\-]*://"
_URL_START = re.compile(rf"[\s,]+(?={_SCHEME})")


def severity(event: Event) -> str | None:
    """"P0".."P3" for an event to alert, None for one that is not alerted (info, `alert_failed`)."""
    if event.kind in NEVER_ALERTED:
        return None
    if (found := SEVERITY.get(event.kind)) is not None:
        return found
    return {"alert": "P1", "warning": "P2"}.get(event.level)


def parse_urls(text: str | None) -> list[str]:
    """Apprise URLs from a comma- or whitespace-separated text, in order, duplicates dropped.
    A separator counts only before a new `scheme://`, so a URL's own comma list survives
    (mailto://...?to=a@x.org,b@x.org)."""
    if not text:
        return []
    found: list[str] = []
    for part in _URL_START.split(text.strip()):
        url = part.strip().strip(",").strip()
        if url and url not in found:
            found.append(url)
    return found


def alert_urls(settings: Any) -> list[str]:
    """The alert URLs of `settings` (ETERNAL_ALERT_URLS), [] when none are configured; their
    token-like parts are registered as secrets."""
    raw = settings.alert_urls.get_secret_value() if settings.alert_urls is not None else None
    urls = parse_urls(raw)
    for url in urls:
        secrets.register(*url_tokens(url))
    return urls


# secrets of an Apprise URL ------------------------------------------------------------------------
def _token_like(part: str) -> bool:
    # long enough and with a digit (bot tokens, chat and webhook ids), or long outright (webhook keys);
    # short words ("hooks", "services") stay readable in every text the scrubber touches
    return len(part) >= 8 and (any(c.isdigit() for c in part) or len(part) >= 16)


def url_tokens(url: str) -> set[str]:
    """The parts of an Apprise URL that can be credentials: the password and token-named query
    values (`eternal.secrets.url_secrets`), a host that is no host name (tgram://BOT_TOKEN/...,
    discord://WEBHOOK_ID/...), and token-like path segments and query values."""
    found = set(secrets.url_secrets(url))
    _, sep, rest = url.partition("://")
    if not sep:              # no URL at all: perhaps a token pasted alone
        return {url} if len(url) >= secrets.MIN_SCRUBBED_LEN else found
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    hostport = netloc.rpartition("@")[2]
    if "." not in hostport and not hostport.startswith(("localhost", "[")) and _token_like(hostport):
        found.add(hostport)
    found |= {seg for seg in re.split(r"[/#]", path) if _token_like(seg)}
    found |= {v for pair in query.split("&") for v in pair.partition("=")[2].split(",") if _token_like(v)}
    return {t for t in found if len(t) >= secrets.MIN_SCRUBBED_LEN}


def channel_name(url: str) -> str:
    """`url` as an operator may see it: `redact_url`, and its token-like parts as ***."""
    if "://" not in url:
        return "(not a URL)"
    shown = secrets.redact_url(url)
    for token in sorted(url_tokens(url), key=len, reverse=True):
        shown = shown.replace(token, secrets.MASK)
    return shown


_LOG_FILTER = secrets.SecretFilter("eternal.alerts")
_SENDING_LOGGERS = ("apprise", "urllib3.connectionpool", "urllib3.connection", "urllib3.util.retry")
"""Loggers that print the URL a notification goes to (Apprise's debug lines, urllib3's request line)."""


def _filter_sending_logs() -> None:
    """Scrub every record the sending loggers emit, whichever handler (Prefect's, pytest's) gets
    it: a filter on the logger itself runs before any handler does."""
    for name in _SENDING_LOGGERS:
        logger = logging.getLogger(name)
        if _LOG_FILTER not in logger.filters:
            logger.addFilter(_LOG_FILTER)


# sending --------------------------------------------------------------------------------------------
def summary_alert(text: str, now: datetime) -> Event:
    """The daily summary as an event to send (kind `daily_summary`, severity P3)."""
    return Event(now, SUMMARY_KIND, text, level="info", data={"severity": "P3"})


def _message(event: Event, sev: str, title_prefix: str) -> tuple[str, str]:
    title = f"{title_prefix} [{sev}] {event.kind}".strip()
    body = event.message + (f"\nsleeve: {event.sleeve.value}" if event.sleeve else "")
    body += f"\nat {event.ts:%Y-%m-%d %H:%M} UTC"
    return secrets.scrub(title), secrets.scrub(body)


def _digest(rest: Sequence[tuple[Event, str]]) -> tuple[Event, str]:
    top = min(sev for _, sev in rest)          # "P0" < "P1" < ...
    kinds: dict[str, int] = {}
    for e, _ in rest:
        kinds[e.kind] = kinds.get(e.kind, 0) + 1
    text = f"{len(rest)} more alerts in this run: " + ", ".join(f"{k} x{n}" for k, n in kinds.items())
    return Event(rest[0][0].ts, "more_alerts", text, data={"kinds": kinds}), top


def notify(events: Iterable[Event], urls: Sequence[str], *, now: datetime, timeout_s: float = 10.0,
           title_prefix: str = "Eternal Engine") -> list[Event]:
    """Send each alertable event (`severity` not None) to every URL: one notification per event,
    most severe first; title `<title_prefix> [P1] order_rejected`, body the event's message, its
    sleeve and time; Apprise type FAILURE for P0/P1, WARNING for P2, INFO for P3. Beyond
    `MAX_MESSAGES` per channel the rest go as one digest.

    `timeout_s` (seconds) caps each request's connect and read timeouts; once a channel fails, the
    call's later alerts are not tried on it, so a dead host holds the caller one timeout per
    channel (Apprise's defaults: 4 s to connect, 4 s to read), not one per alert.

    Returns one `alert_failed` event (at `now`, level "warning", data {"severity", "kind",
    "channel"}) per alert a channel did not take: refused, unreachable, not tried after a failure,
    or a URL Apprise cannot parse. Never raises."""
    try:
        import apprise
        from apprise import NotifyType
    except Exception as exc:      # apprise missing: every alert is undelivered, say so once per event
        apprise, NotifyType = None, None
        log.warning("alerts not sent: apprise cannot be imported (%s)", exc)
    kinds = {"P0": "FAILURE", "P1": "FAILURE", "P2": "WARNING", "P3": "INFO"}
    try:
        todo = sorted(((e, s) for e in events if (s := severity(e)) is not None), key=lambda es: es[1])
    except Exception as exc:
        log.warning("alerts not sent: the events could not be read (%s)", secrets.scrub(str(exc)))
        return []
    if not todo or not urls:
        return []
    if len(todo) > MAX_MESSAGES:
        todo = [*todo[:MAX_MESSAGES - 1], _digest(todo[MAX_MESSAGES - 1:])]
    _filter_sending_logs()
    failed: list[Event] = []
    for url in urls:
        try:
            secrets.register(*url_tokens(url))
            channel = channel_name(url)
        except Exception:
            channel = "<unreadable alert URL>"
        plugin, why = None, "apprise cannot be imported"
        if apprise is not None:
            try:
                plugin = apprise.Apprise.instantiate(url, asset=apprise.AppriseAsset(secure_logging=True))
                why = "Apprise cannot parse this URL (check its scheme and parts)"
                if plugin is not None:
                    # each request bounded: a dead port or host must not hold the flow
                    plugin.socket_connect_timeout = min(float(plugin.socket_connect_timeout), timeout_s)
                    plugin.socket_read_timeout = min(float(plugin.socket_read_timeout), timeout_s)
            except Exception as exc:
                plugin, why = None, f"Apprise cannot use this URL: {secrets.scrub(str(exc))}"
        down = False
        for event, sev in todo:
            ok = False
            if plugin is not None and down:
                why = "not tried: this channel failed on an earlier alert of the same call"
            elif plugin is not None:
                try:
                    title, body = _message(event, sev, title_prefix)
                    ok = bool(plugin.notify(body=body, title=title, notify_type=getattr(NotifyType, kinds[sev])))
                    why = "the channel refused it or did not answer"
                except Exception as exc:
                    why = f"sending raised {type(exc).__name__}: {secrets.scrub(str(exc))}"
            if not ok:
                down = True
                log.warning("alert [%s] %s not delivered via %s: %s", sev, event.kind, channel, why)
                failed.append(Event(now, FAILED_KIND,
                                    f"alert [{sev}] {event.kind} not delivered via {channel}: {why}; "
                                    "check ETERNAL_ALERT_URLS and the service",
                                    sleeve=event.sleeve, level="warning",
                                    data={"severity": sev, "kind": event.kind, "channel": channel}))
    return failed
