"""Notify: a run's alertable events out through Apprise, and a failed channel into the ledger.

The shell around `eternal.alerts.notify`: it reads ETERNAL_ALERT_URLS, sends, and appends the
`alert_failed` events to the ledger's events table so an alert that did not arrive is on record.
Nothing here raises: an alert channel never stops the trading logic.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from eternal import alerts
from eternal.models import Event
from eternal.secrets import scrub

log = logging.getLogger("eternal.alerts")


def send(settings, events: Sequence[Event], ledger_store=None, *, now: datetime) -> list[Event]:
    """Send `events`' alertable ones to every URL of `settings.alert_urls`; nothing when none is
    configured. Returns the `alert_failed` events (also appended to `ledger_store`, a
    `eternal.store.ledger.LedgerStore`, when given). Never raises: a failure to send or to store
    is logged as a warning."""
    try:
        urls = alerts.alert_urls(settings)
        if not urls:
            return []
        failed = alerts.notify(events, urls, now=now)
    except Exception as exc:         # alerts.notify does not raise; reading the settings might
        log.warning("alerts not sent: %s", scrub(f"{type(exc).__name__}: {exc}"))
        return []
    if failed and ledger_store is not None:
        try:
            ledger_store.append_events(failed)
        except Exception as exc:
            log.warning("%d alert_failed event(s) not stored in the ledger: %s", len(failed),
                        scrub(f"{type(exc).__name__}: {exc}"))
    return failed
