"""The orchestration layer's I/O edge: its persisted state in, its pure decision out."""
from __future__ import annotations

from prefect import task

from eternal import allocation
from eternal.config import Settings
from eternal.models import Snapshot
from tasks.context import stores


@task(name="allocate")
def allocate(snap: Snapshot, s: Settings, *, quarterly: bool = False,
             prefix: str = "allocation:") -> allocation.Orchestration:
    """Regime, band rebalancing and what earlier rebalances still owe (the daily cycle); with
    `quarterly`, the quarter's rebalance to the regime targets (the quarterly-rebalance flow)."""
    _, ledger = stores(s)
    equity = {sl: b.equity(snap.closes, snap.marks) for sl, b in snap.books.items()}
    return allocation.orchestrate(ledger.load_allocation_state(), snap.day, snap.asof, snap.books, equity,
                                  snap.closes, snap.regime_inputs, s.allocation, quarterly_allowed=quarterly,
                                  prefix=prefix, base=s.weights.by_sleeve(), marks=snap.marks)
