"""The driver's ports on a database: our ledger (`SqlLedger`) and the paper exchange's own rows.

`SqlLedger` keeps the portfolio in the ledger tables (balances, positions, engine states, orders,
fills, events, transfers, funding, equity) plus the driver's clock and write-ahead plans; one event
is committed in one transaction. The paper exchange stands for a venue that outlives our process:
it persists itself on every change, in rows (only what changed is written: a small document for
books, leverage, stops and counters, one row per order, per journal entry and per keyed operation).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.orm import Session

from eternal.config import FeeParams
from eternal.driver import Batch, Portfolio
from eternal.errors import EternalError
from eternal.exchange.paper import FillPolicy, PaperExchange
from eternal.exchange.paper_state import (
    _fill_from_dict,
    _fill_to_dict,
    _order_from_dict,
    _order_to_dict,
    _payment_from_dict,
    _payment_to_dict,
)
from eternal.models import UTC, OrderStatus, Sleeve, SleeveBook, utc
from eternal.store.ledger import LedgerStore, _jsonable, _record
from eternal.store.models import (
    DriverStateRow,
    FillRow,
    OrderRow,
    PaperJournalRow,
    PaperKeyRow,
    PaperOrderRow,
    PlanRow,
)
from eternal.store.upsert import upsert

PAPER = "paper"
DRIVER_LOCK = "driver"      # one driver run at a time per database (flows never race)
HALT_REQUEST = 2            # driver_state row of a kill switch asked for during a run
API_SLOT_LEASE = 3          # driver_state row: the Prefect lease of the run holding a `bybit-api` slot
OPEN_STATUSES = [s.value for s in OrderStatus if not s.is_final]


class SqlLedger:
    """The driver's ledger port on the database."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.store = LedgerStore(engine)

    def load(self) -> Portfolio | None:
        if not self.store.is_initialised():
            return None
        with Session(self.engine) as session:
            doc = session.execute(select(DriverStateRow.doc).where(DriverStateRow.id == 1)).scalar()
            open_rows = session.scalars(select(OrderRow).where(OrderRow.status.in_(OPEN_STATUSES))).all()
        if doc is None:
            raise EternalError("this ledger was written before the cycle driver (no clock): start a new "
                               "database, or replay the history with `eternal backfill`")
        p = Portfolio(self.store.load_books(), self.store.load_states(), self.store.load_allocation_state())
        p.load_doc(doc)
        if "capital_in" not in doc:
            p.capital_in = self.store.capital_in()
        p.open_orders = {r.client_order_id: _record(r) for r in open_rows}
        return p

    def known_orders(self, client_order_ids: set[str]) -> set[str]:
        """Which of these client order ids our ledger holds an order for."""
        with self.engine.connect() as conn:
            return set(conn.execute(select(OrderRow.client_order_id).where(
                OrderRow.client_order_id.in_(sorted(client_order_ids)))).scalars())

    def known_trades(self, trade_ids: set[str]) -> set[str]:
        """Which of these venue trade ids our ledger has booked a fill for."""
        with self.engine.connect() as conn:
            return set(conn.execute(select(FillRow.trade_id).where(FillRow.trade_id.in_(sorted(trade_ids)))).scalars())

    def clock(self) -> str | None:
        with self.engine.connect() as conn:
            doc = conn.execute(select(DriverStateRow.doc).where(DriverStateRow.id == 1)).scalar()
        return doc.get("clock") if doc else None

    def initialise(self, portfolio: Portfolio, capital: float, shares: dict[Sleeve, float], ts: datetime) -> None:
        """Starting capital and the driver's clock; deposits taken before the first run wait on."""
        with self.engine.connect() as conn:
            early = conn.execute(select(DriverStateRow.doc).where(DriverStateRow.id == 1)).scalar() or {}
        portfolio.deposits = [*early.get("deposits", []), *portfolio.deposits]
        self.store.initialise(capital, shares, ts)
        with self.engine.begin() as conn:
            upsert(conn, DriverStateRow.__table__, [{"id": 1, "doc": portfolio.doc(), "updated_at": ts}], ["id"])

    def pending_plan(self) -> tuple[str, dict] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(PlanRow.key, PlanRow.payload).where(PlanRow.status == "stored")
                               .order_by(PlanRow.key).limit(1)).first()
        return (row.key, row.payload) if row is not None else None

    def store_plan(self, key: str, plan: dict) -> None:
        from eternal.driver import Due

        with self.engine.begin() as conn:
            upsert(conn, PlanRow.__table__, [{"key": key, "status": "stored", "payload": _jsonable(plan),
                                              "created_at": Due.from_key(key).ts, "finished_at": None}], ["key"])

    def commit(self, p: Portfolio, batch: Batch) -> None:
        now = batch.due.ts if batch.due is not None else _clock_ts(p)
        run_key = batch.due.key if batch.due is not None else (batch.label or "reconcile")
        with self.engine.begin() as conn:
            self.store.save_execution(batch.orders, batch.fills, batch.events, None, now, run_key, conn,
                                      transfers=batch.transfers)
            self.store._save_books(conn, p.books.values(), now, p.stops)
            if p.states:
                self.store.save_states(p.states, now, conn)
            if p.allocation is not None:
                self.store.save_allocation_state(p.allocation, now, conn)
            self.store.save_funding(batch.payments, conn)
            if batch.equity:
                self.store.save_equity(batch.equity, conn)
            for d in batch.deposits_taken:
                self.store.save_deposit(utc(d["ts"]), d["usdt"], d["reference"], conn)
            upsert(conn, DriverStateRow.__table__, [{"id": 1, "doc": _jsonable(p.doc()), "updated_at": now}], ["id"])
            if batch.plan_key is not None:
                conn.execute(update(PlanRow).where(PlanRow.key == batch.plan_key).values(status="done",
                                                                                       finished_at=now))

    # the kill switch asked for while a run holds the driver lock ---------------------------------
    def request_halt(self, reason: str, who: str, at: datetime) -> None:
        """Ask a running driver to engage the kill switch at its next event (no lock needed: one
        row, its own transaction). `eternal halt` writes it before it waits for the lock."""
        with self.engine.begin() as conn:
            upsert(conn, DriverStateRow.__table__, [{"id": HALT_REQUEST, "doc": {
                "reason": reason, "who": who, "at": utc(at).isoformat()}, "updated_at": utc(at)}], ["id"])

    def halt_request(self) -> dict | None:
        with self.engine.connect() as conn:
            return conn.execute(select(DriverStateRow.doc).where(DriverStateRow.id == HALT_REQUEST)).scalar()

    def clear_halt_request(self) -> None:
        from sqlalchemy import delete

        with self.engine.begin() as conn:
            conn.execute(delete(DriverStateRow).where(DriverStateRow.id == HALT_REQUEST))

    # the `bybit-api` slot of the run holding the driver lock (tasks.exchange_limit) -------------
    def slot_lease(self) -> str | None:
        """The lease id recorded by the last run that took a slot and has not given it back."""
        with self.engine.connect() as conn:
            doc = conn.execute(select(DriverStateRow.doc).where(DriverStateRow.id == API_SLOT_LEASE)).scalar()
        return doc.get("lease_id") if doc else None

    def record_slot_lease(self, lease_id: str | None, at: datetime) -> None:
        """Record (None: forget) the lease of the slot this run holds."""
        from sqlalchemy import delete

        with self.engine.begin() as conn:
            if lease_id is None:
                conn.execute(delete(DriverStateRow).where(DriverStateRow.id == API_SLOT_LEASE))
            else:
                upsert(conn, DriverStateRow.__table__, [{"id": API_SLOT_LEASE, "doc": {"lease_id": lease_id},
                                                         "updated_at": utc(at)}], ["id"])

    def deposit_known(self, reference: str) -> bool:
        """Taken at a close, or waiting for the next one."""
        return self.store.deposit_seen(reference) or any(d["reference"] == reference for d in _pending(self.engine))

    def add_deposit(self, ts: datetime, usdt: float, reference: str) -> bool:
        """A deposit waiting for the next close; False when the reference was taken before."""
        with self.engine.begin() as conn:
            doc = conn.execute(select(DriverStateRow.doc).where(DriverStateRow.id == 1)).scalar() or {}
            if self.deposit_known(reference):
                known = [d["usdt"] for d in doc.get("deposits", []) if d["reference"] == reference]
                if known and known[0] != usdt:
                    raise EternalError(f"deposit {reference!r} was taken as {known[0]:,.2f} USDT; "
                                       f"{usdt:,.2f} under the same reference is refused (use a new reference)")
                return False
            doc = {**doc, "deposits": [*doc.get("deposits", []), {"ts": utc(ts).isoformat(), "usdt": usdt,
                                                                   "reference": reference}]}
            upsert(conn, DriverStateRow.__table__, [{"id": 1, "doc": doc, "updated_at": ts}], ["id"])
        return True


def _pending(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        doc = conn.execute(select(DriverStateRow.doc).where(DriverStateRow.id == 1)).scalar() or {}
    return doc.get("deposits", [])


def _clock_ts(p: Portfolio) -> datetime:
    from eternal.driver import Due

    return Due.from_key(p.clock).ts


# the paper exchange in rows ---------------------------------------------------------------------
def _journal_to_dict(kind: str, item: Any) -> dict:
    if kind == "fill":
        return _fill_to_dict(item)
    if kind == "funding":
        return _payment_to_dict(item)
    sleeve, asset, qty = item
    return {"sleeve": sleeve.value, "asset": asset, "qty": qty}


def _journal_from_dict(kind: str, d: dict) -> Any:
    if kind == "fill":
        return _fill_from_dict(d)
    if kind == "funding":
        return _payment_from_dict(d)
    return Sleeve(d["sleeve"]), d["asset"], d["qty"]


def _seq_of(order) -> int:
    return int(order.exchange_order_id.rsplit("-", 1)[1])


def open_paper_exchange(engine: Engine, fees: FeeParams, books: dict[Sleeve, SleeveBook] | None = None
                        ) -> PaperExchange:
    """The paper exchange stored in this database (a new one holding copies of `books` when there
    is none), saving itself after every change; orders it does not hold in memory are looked up."""
    store = LedgerStore(engine)
    state = store.load_exchange_state(PAPER)
    if state is None:
        ex = PaperExchange(fees, FillPolicy.NEXT_OPEN, books or {})
    else:
        with engine.connect() as conn:
            rows = conn.execute(select(PaperOrderRow.client_order_id, PaperOrderRow.payload)
                                .where(PaperOrderRow.status == OrderStatus.OPEN.value)).all()
            keys = conn.execute(select(PaperKeyRow.key, PaperKeyRow.value)).all()
            top = conn.execute(select(func.max(PaperOrderRow.seq))).scalar() or 0
        ex = PaperExchange.from_state({**state, "orders": {r.client_order_id: r.payload for r in rows}},
                                      fees, FillPolicy.NEXT_OPEN)
        ex.stake_ops = {k: v for k, v in keys}
        ex._seq = max(ex._seq, top)         # order ids after the last saved document
    flushed = {"seq": ex.journal_seq, "doc": None}

    def lookup(cid: str):
        with engine.connect() as conn:
            payload = conn.execute(select(PaperOrderRow.payload).where(
                PaperOrderRow.client_order_id == cid)).scalar()
        return _order_from_dict(cid, payload) if payload is not None else None

    def journal(after: int, before: int) -> list:
        with engine.connect() as conn:
            rows = conn.execute(select(PaperJournalRow.seq, PaperJournalRow.kind, PaperJournalRow.payload)
                                .where(PaperJournalRow.seq > after, PaperJournalRow.seq < before)
                                .order_by(PaperJournalRow.seq)).all()
        return [(r.seq, r.kind, _journal_from_dict(r.kind, r.payload)) for r in rows]

    def save(ex: PaperExchange) -> None:
        new = [e for e in ex.journal if e[0] > flushed["seq"]]
        doc = ex.to_doc()
        # the document only when something besides the order counter changed (a new order
        # carries its own number: the counter is recovered from the order rows)
        same = _jsonable({**doc, "seq": None})
        with engine.begin() as conn:
            if same != flushed["doc"]:
                store.save_exchange_state(PAPER, _jsonable(doc), datetime.now(UTC), conn)
            if ex._dirty_orders:
                upsert(conn, PaperOrderRow.__table__, [
                    {"client_order_id": cid, "seq": _seq_of(ex.orders[cid]), "status": ex.orders[cid].status.value,
                     "payload": _jsonable(_order_to_dict(ex.orders[cid]))} for cid in sorted(ex._dirty_orders)],
                    ["client_order_id"])
            if new:
                conn.execute(insert(PaperJournalRow), [{"seq": seq, "kind": kind, "payload":
                                                        _jsonable(_journal_to_dict(kind, item))}
                                                       for seq, kind, item in new])
            if ex._new_keys:
                upsert(conn, PaperKeyRow.__table__, [{"key": k, "value": v} for k, v in ex._new_keys.items()],
                       ["key"])
        flushed["doc"] = same
        ex._dirty_orders.clear()
        ex._new_keys.clear()
        if new:
            flushed["seq"] = new[-1][0]

    ex._lookup, ex._journal_loader, ex._on_change = lookup, journal, save
    if state is None:
        save(ex)
    return ex
