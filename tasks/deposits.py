"""Deposits: split by the allocation rules and booked exactly once per reference."""
from __future__ import annotations

from datetime import datetime

from prefect import task

from eternal import allocation
from eternal import ledger as books_ledger
from eternal.config import Settings
from eternal.models import QUOTE, SPOT_SYMBOLS, Event, Sleeve, Transfer
from eternal.store.locks import exclusive
from tasks.context import stores
from tasks.execution import PAPER, open_paper_exchange


@task(name="take-deposit")
def take_deposit(amount_usdt: float, reference: str, s: Settings, now: datetime) -> dict:
    """The most underweight sleeve (against the targets in force) first, up to its target, the rest
    by target weights. A reference already taken is not taken again (a retried or re-triggered run)."""
    if not amount_usdt > 0:
        raise ValueError(f"amount_usdt must be positive, got {amount_usdt}")
    market, ledger = stores(s)
    with exclusive(ledger.engine, PAPER):
        if ledger.deposit_seen(reference):
            return {"reference": reference, "amount_usdt": amount_usdt, "duplicate": True, "split": {}}
        if not ledger.is_initialised():
            ledger.initialise(s.initial_capital, s.weights.by_sleeve(), now)
        books = ledger.load_books()
        held = {a for b in books.values() for a in (*b.holdings, *b.staked)}
        closes = {}
        for a in held:
            c = market.load_candles(SPOT_SYMBOLS[a], "1d")
            closes[a] = float(c["close"].iloc[-1]) if len(c) else 0.0
        equity = {sl: b.equity(closes) for sl, b in books.items()}
        state = allocation.AllocationState.model_validate(ledger.load_allocation_state() or {})
        targets = allocation.targets(state.active or allocation.Regime.BASE, s.allocation, s.weights.by_sleeve())
        split = allocation.deposit_split(amount_usdt, equity, targets)
        transfers = [Transfer(now, None, sl, QUOTE, usdt, f"deposit {reference}") for sl, usdt in split.items()]
        exchange = open_paper_exchange(ledger, s, now)
        for t in transfers:
            exchange.transfer(t, f"deposit|{reference}|{t.to_sleeve.value}")
            books_ledger.apply_transfer(books, t)
        event = Event(now, "deposit", f"{amount_usdt:,.2f} USDT deposited ({reference}): " + ", ".join(
            f"{sl} {v:,.2f}" for sl, v in split.items()), None,
            data={"reference": reference, "usdt": amount_usdt, "split": {sl.value: v for sl, v in split.items()}})
        with ledger.engine.begin() as conn:
            ledger.save_deposit(now, amount_usdt, reference, conn)
            ledger.save_execution([], [], [event], [books[sl] for sl in split], now, f"deposit {reference}",
                                  conn, transfers=transfers)
    return {"reference": reference, "amount_usdt": amount_usdt, "duplicate": False,
            "split": {sl.value: v for sl, v in split.items()},
            "targets": {sl.value: t for sl, t in targets.items() if isinstance(sl, Sleeve)}}
