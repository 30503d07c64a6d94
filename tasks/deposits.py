"""Deposits at Bybit (exchange modes): each one credited at the main account is booked once.

Bybit's deposit id keys it (reference `bybit-deposit <id>`): the ledger takes a reference once, so a
re-read, a retried run or the next day's run books nothing twice. A booked deposit waits in the
ledger like one taken by the deposit-intake flow: the next daily close splits it by the deposit
rules (the orchestration layer) and moves each share from the main account to its sleeve's account.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select

from eternal.driver import Due, Portfolio
from eternal.models import QUOTE, Event, utc
from eternal.store.driver_store import SqlLedger
from eternal.store.models import DepositRow, EventRow

LOOKBACK = timedelta(days=7)
"""Each run reads from this long before the ledger's clock: a deposit Bybit lists late is still found."""


def reference(deposit_id: str) -> str:
    return f"bybit-deposit {deposit_id}"


def read_from(ledger: SqlLedger, p: Portfolio) -> datetime:
    """Where a run reads the deposit records from: LOOKBACK before the ledger's clock, never before
    the ledger opened (money at the main account before then is not the portfolio's)."""
    since = Due.from_key(p.clock).ts - LOOKBACK
    with ledger.engine.connect() as conn:
        opened = conn.execute(select(func.min(DepositRow.ts)).where(DepositRow.note == "initial capital")).scalar()
    return max(since, utc(opened)) if opened is not None else since


def book_venue_deposits(exchange, ledger: SqlLedger, p: Portfolio, until: datetime, log) -> list[str]:
    """Each USDT deposit Bybit credited from `read_from` up to `until`, booked into the ledger once
    (it waits for the next close); a deposit of another coin is not split by the rules: a warning,
    once. Returns the references booked by this call."""
    booked: list[str] = []
    events: list[Event] = []
    for d in exchange.deposits_since(read_from(ledger, p), until):
        ref = reference(d.deposit_id)
        if d.coin != QUOTE:
            if not _warned(ledger, ref):
                message = (f"{ref}: {d.amount:.8g} {d.coin} credited at Bybit's main account on {d.ts:%Y-%m-%d %H:%M}Z "
                           f"is not booked and not in the portfolio's value: the deposit rules split {QUOTE} only; "
                           f"withdraw it and deposit {QUOTE} instead")
                log.warning(message)
                events.append(Event(d.ts, "deposit_ignored", message, None, "warning",
                                    {"reference": ref, "coin": d.coin, "amount": d.amount}))
            continue
        if ledger.add_deposit(d.ts, d.amount, ref):
            message = (f"{ref}: {d.amount:,.2f} {QUOTE} credited at Bybit on {d.ts:%Y-%m-%d %H:%M}Z, booked; "
                       "the next daily close splits it among the sleeves")
            log.info(message)
            events.append(Event(d.ts, "deposit_booked", message, None, "info", {"reference": ref, "usdt": d.amount}))
            booked.append(ref)
    ledger.store.append_events(events)
    return booked


def _warned(ledger: SqlLedger, ref: str) -> bool:
    with ledger.engine.connect() as conn:
        return conn.execute(select(EventRow.id).where(EventRow.kind == "deposit_ignored",
                                                      EventRow.message.like(f"{ref}:%")).limit(1)).first() is not None
