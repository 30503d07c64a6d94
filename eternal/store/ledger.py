"""Our ledger in the database: sleeves, balances, perp positions, orders, fills, funding,
transfers, states, events.

Writes are bulk (one statement per table per call) so a replay can persist a batch of days at once.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, tuple_
from sqlalchemy.orm import Session

from eternal.exchange.paper import intent_from_dict
from eternal.models import (
    QUOTE,
    Event,
    Fill,
    FundingPayment,
    OrderIntent,
    OrderRecord,
    OrderStatus,
    PerpPosition,
    Sleeve,
    SleeveBook,
    StopLevel,
    Transfer,
    utc,
)
from eternal.secrets import scrub, scrub_data
from eternal.store.models import (
    BalanceRow,
    CycleRunRow,
    DepositRow,
    RiskStateRow,
    EngineStateRow,
    EquitySnapshotRow,
    EventRow,
    ExchangeStateRow,
    FillRow,
    FundingPaymentRow,
    OrderRow,
    PerpPositionRow,
    SleeveRow,
    TransferRow,
)
from eternal.store.upsert import upsert


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "item"):          # numpy scalars
        return value.item()
    return value


def _opt_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def order_row(rec: OrderRecord) -> dict[str, Any]:
    i = rec.intent
    return {"client_order_id": rec.client_order_id, "flow": rec.flow, "scheduled": rec.scheduled,
            "sleeve": i.sleeve.value, "symbol": i.symbol, "market": i.market.value, "side": i.side.value,
            "order_type": i.order_type.value, "qty": float(i.qty), "limit_price": _opt_float(i.limit_price),
            "post_only": i.post_only, "reduce_only": i.reduce_only, "scale_to_cash": i.scale_to_cash,
            "intent_key": i.key,
            "reason": i.reason, "status": rec.status.value, "exchange_order_id": rec.exchange_order_id,
            "filled_qty": float(rec.filled_qty), "avg_price": _opt_float(rec.avg_price), "fee": float(rec.fee),
            "error": rec.error and scrub(rec.error), "created_at": rec.created_at, "updated_at": rec.updated_at}


def fill_row(f: Fill) -> dict[str, Any]:
    return {"trade_id": f.trade_id, "client_order_id": f.client_order_id, "ts": f.ts,
            "sleeve": f.sleeve.value, "symbol": f.symbol, "market": f.market.value, "side": f.side.value,
            "qty": float(f.qty), "price": float(f.price), "fee": float(f.fee), "fee_asset": f.fee_asset,
            "liquidity": f.liquidity, "reason": f.reason, "leverage": float(f.leverage)}


def funding_row(p: FundingPayment) -> dict[str, Any]:
    return {"ts": p.ts, "sleeve": p.sleeve.value, "symbol": p.symbol, "qty": float(p.qty),
            "price": float(p.price), "rate": float(p.rate), "amount": float(p.amount),
            "expected": float(p.expected)}


def event_row(e: Event, run_key: str | None) -> dict[str, Any]:
    return {"ts": e.ts, "kind": e.kind, "level": e.level, "sleeve": e.sleeve.value if e.sleeve else None,
            "message": scrub(e.message), "data": scrub_data(_jsonable(e.data)), "run_key": run_key}


ALLOCATION_ROW = 1              # the orchestration layer's state, in risk_state
IN_CYCLE = "allocation:"        # transfers the daily cycle made and counted itself (eternal.allocation)
REBALANCE = "rebalance:"        # transfers of the quarterly-rebalance flow: counted by the next cycle


class LedgerStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    # portfolio -------------------------------------------------------------------------------
    def is_initialised(self) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(SleeveRow.name).limit(1)).first() is not None

    def initialise(self, capital: float, weights: dict[Sleeve, float], now: datetime) -> dict[Sleeve, SleeveBook]:
        """Deposit the initial capital and transfer each sleeve its share (recorded transfers)."""
        books = {s: SleeveBook(s, capital * w) for s, w in weights.items() if w >= 0}
        with self.engine.begin() as conn:
            conn.execute(insert(DepositRow), [{"ts": now, "asset": QUOTE, "amount": capital,
                                               "note": "initial capital"}])
            conn.execute(insert(SleeveRow), [{"name": s.value, "weight": w, "created_at": now}
                                             for s, w in weights.items() if w >= 0])
            conn.execute(insert(TransferRow), [
                {"ts": now, "from_sleeve": None, "to_sleeve": s.value, "asset": QUOTE, "qty": b.cash,
                 "reason": f"initial allocation {weights[s]:.4f} of {capital:.2f}"}
                for s, b in books.items() if b.cash > 0])
            self._save_books(conn, books.values(), now)
        return books

    def load_books(self) -> dict[Sleeve, SleeveBook]:
        with Session(self.engine) as session:
            sleeves = [Sleeve(n) for n in session.scalars(select(SleeveRow.name))]
            rows = session.scalars(select(BalanceRow)).all()
            perps = session.scalars(select(PerpPositionRow)).all()
        books = {s: SleeveBook(s) for s in sleeves}
        for r in rows:
            book = books.setdefault(Sleeve(r.sleeve), SleeveBook(Sleeve(r.sleeve)))
            if r.asset == QUOTE:
                book.cash = r.qty
            else:
                book.holdings[r.asset] = r.qty
                if r.staked:
                    book.staked[r.asset] = r.staked
        for p in perps:
            book = books.setdefault(Sleeve(p.sleeve), SleeveBook(Sleeve(p.sleeve)))
            book.perps[p.symbol] = PerpPosition(p.symbol, p.qty, p.entry_price, p.margin, p.leverage,
                                                utc(p.opened_at))
        return books

    def load_stops(self) -> dict[Sleeve, dict[str, StopLevel]]:
        """The stops of open perp positions, as last saved with `save_books(..., stops=...)`."""
        out: dict[Sleeve, dict[str, StopLevel]] = {}
        with Session(self.engine) as session:
            for p in session.scalars(select(PerpPositionRow).where(PerpPositionRow.stop_price.is_not(None))):
                out.setdefault(Sleeve(p.sleeve), {})[p.symbol] = StopLevel(p.stop_price, p.stop_reason or "")
        return out

    def save_books(self, books: Iterable[SleeveBook], now: datetime, conn: Connection | None = None,
                   stops: Mapping[Sleeve, Mapping[str, StopLevel]] | None = None) -> None:
        """Balances and open perp positions of these sleeves; a position closed since the last save
        loses its row. `stops`: the stops of these sleeves' positions (a position missing from it
        has none); None keeps the stops already stored."""
        if conn is None:
            with self.engine.begin() as conn:
                self._save_books(conn, books, now, stops)
        else:
            self._save_books(conn, books, now, stops)

    @staticmethod
    def _save_books(conn: Connection, books: Iterable[SleeveBook], now: datetime,
                    stops: Mapping[Sleeve, Mapping[str, StopLevel]] | None = None) -> None:
        books = list(books)
        rows, perps = [], []
        if stops is None:     # keep each stored stop, but only for the same position (not a reopened one)
            kept = conn.execute(select(PerpPositionRow.sleeve, PerpPositionRow.symbol, PerpPositionRow.qty,
                                       PerpPositionRow.opened_at, PerpPositionRow.stop_price,
                                       PerpPositionRow.stop_reason).where(
                PerpPositionRow.sleeve.in_([b.sleeve.value for b in books]),
                PerpPositionRow.stop_price.is_not(None))).all()
            stored = {(r.sleeve, r.symbol): r for r in kept}
        for b in books:
            rows.append({"sleeve": b.sleeve.value, "asset": QUOTE, "qty": float(b.cash), "staked": 0.0,
                         "updated_at": now})
            for asset in sorted(set(b.holdings) | set(b.staked)):
                rows.append({"sleeve": b.sleeve.value, "asset": asset, "qty": float(b.holdings.get(asset, 0.0)),
                             "staked": float(b.staked.get(asset, 0.0)), "updated_at": now})
            for sym, p in sorted(b.perps.items()):
                row = {"sleeve": b.sleeve.value, "symbol": sym, "qty": float(p.qty),
                       "entry_price": float(p.entry_price), "margin": float(p.margin),
                       "leverage": float(p.leverage), "opened_at": p.opened_at, "updated_at": now}
                if stops is not None:
                    level = stops.get(b.sleeve, {}).get(sym)
                else:
                    r = stored.get((b.sleeve.value, sym))
                    same = r is not None and r.opened_at == p.opened_at and (r.qty > 0) == (p.qty > 0)
                    level = StopLevel(r.stop_price, r.stop_reason) if same else None
                row |= {"stop_price": None if level is None else float(level.price),
                        "stop_reason": None if level is None else str(level.reason)}
                perps.append(row)
        upsert(conn, BalanceRow.__table__, rows, ["sleeve", "asset"])
        if books:      # positions of these sleeves closed since the last save
            closed = delete(PerpPositionRow).where(PerpPositionRow.sleeve.in_([b.sleeve.value for b in books]))
            if perps:
                closed = closed.where(tuple_(PerpPositionRow.sleeve, PerpPositionRow.symbol).not_in(
                    [(r["sleeve"], r["symbol"]) for r in perps]))
            conn.execute(closed)
        upsert(conn, PerpPositionRow.__table__, perps, ["sleeve", "symbol"])

    # funding ---------------------------------------------------------------------------------
    def save_funding(self, payments: Sequence[FundingPayment], conn: Connection | None = None) -> None:
        """Funding settlements; one per (sleeve, symbol, ts), so saving one again changes nothing."""
        if not payments:
            return
        if conn is None:
            with self.engine.begin() as conn:
                upsert(conn, FundingPaymentRow.__table__, [funding_row(p) for p in payments],
                       ["sleeve", "symbol", "ts"])
        else:
            upsert(conn, FundingPaymentRow.__table__, [funding_row(p) for p in payments],
                   ["sleeve", "symbol", "ts"])

    def load_funding(self, sleeve: Sleeve | None = None, symbol: str | None = None,
                     since: datetime | None = None) -> list[FundingPayment]:
        """Funding settlements in time order (then sleeve, symbol); `since` is exclusive."""
        q = select(FundingPaymentRow).order_by(FundingPaymentRow.ts, FundingPaymentRow.sleeve,
                                               FundingPaymentRow.symbol)
        if sleeve is not None:
            q = q.where(FundingPaymentRow.sleeve == sleeve.value)
        if symbol is not None:
            q = q.where(FundingPaymentRow.symbol == symbol)
        if since is not None:
            q = q.where(FundingPaymentRow.ts > since)
        with Session(self.engine) as session:
            return [FundingPayment(utc(r.ts), Sleeve(r.sleeve), r.symbol, r.qty, r.price, r.rate, r.amount,
                                   r.expected) for r in session.scalars(q)]

    # orders and fills ------------------------------------------------------------------------
    def load_orders(self, client_order_ids: Sequence[str]) -> dict[str, OrderRecord]:
        if not client_order_ids:
            return {}
        with Session(self.engine) as session:
            rows = session.scalars(select(OrderRow).where(
                OrderRow.client_order_id.in_(list(client_order_ids)))).all()
        return {r.client_order_id: _record(r) for r in rows}

    def load_trade_ids(self, client_order_ids: Sequence[str]) -> set[str]:
        if not client_order_ids:
            return set()
        with self.engine.connect() as conn:
            return set(conn.execute(select(FillRow.trade_id).where(
                FillRow.client_order_id.in_(list(client_order_ids)))).scalars())

    def save_execution(self, orders: Sequence[OrderRecord], fills: Sequence[Fill], events: Sequence[Event],
                       books: Iterable[SleeveBook] | None, now: datetime, run_key: str | None = None,
                       conn: Connection | None = None, transfers: Sequence[Transfer] = ()) -> None:
        """Orders, their new fills, transfers, the books they changed and events, in one transaction."""
        if conn is None:
            with self.engine.begin() as conn:
                return self.save_execution(orders, fills, events, books, now, run_key, conn, transfers)
        self.save_transfers(transfers, conn)
        upsert(conn, OrderRow.__table__, [order_row(o) for o in orders], ["client_order_id"])
        if fills:
            upsert(conn, FillRow.__table__, [fill_row(f) for f in fills], ["trade_id"])
        if events:
            conn.execute(insert(EventRow), [event_row(e, run_key) for e in events])
        if books is not None:
            self._save_books(conn, books, now)

    def applied_ops(self, keys: Sequence[str]) -> set[str]:
        """Keys of ledger operations (stakes, rewards) already applied to our books."""
        if not keys:
            return set()
        with self.engine.connect() as conn:
            return set(conn.execute(select(EventRow.message).where(
                EventRow.kind == "ledger_op", EventRow.message.in_(list(keys)))).scalars())

    # states, events, equity ------------------------------------------------------------------
    def load_states(self) -> dict[Sleeve, dict[str, Any]]:
        with Session(self.engine) as session:
            return {Sleeve(r.sleeve): r.state for r in session.scalars(select(EngineStateRow))}

    def save_states(self, states: dict[Sleeve, dict[str, Any]], now: datetime, conn: Connection) -> None:
        upsert(conn, EngineStateRow.__table__, [
            {"sleeve": s.value, "state": _jsonable(st), "updated_at": now} for s, st in states.items()],
            ["sleeve"])

    def append_events(self, events: Sequence[Event], run_key: str | None = None,
                      conn: Connection | None = None) -> None:
        if not events:
            return
        if conn is None:
            with self.engine.begin() as conn:
                conn.execute(insert(EventRow), [event_row(e, run_key) for e in events])
        else:
            conn.execute(insert(EventRow), [event_row(e, run_key) for e in events])

    def save_equity(self, rows: Sequence[dict[str, Any]], conn: Connection) -> None:
        upsert(conn, EquitySnapshotRow.__table__, list(rows), ["day", "sleeve"])

    def save_transfers(self, transfers: Sequence[Transfer], conn: Connection) -> None:
        if transfers:
            # the fields named (dataclasses.asdict deep-copies each one: half of a backfill's save)
            conn.execute(insert(TransferRow), [
                {"ts": t.ts, "from_sleeve": t.from_sleeve.value if t.from_sleeve else None,
                 "to_sleeve": t.to_sleeve.value, "asset": t.asset, "qty": t.qty, "reason": t.reason}
                for t in transfers])

    def capital_in(self) -> dict[Sleeve, float]:
        """USDT each sleeve was given, net, by the transfers recorded (the starting capital too)."""
        out: dict[Sleeve, float] = {}
        with Session(self.engine) as session:
            for t in session.scalars(select(TransferRow).where(TransferRow.asset == QUOTE)):
                out[Sleeve(t.to_sleeve)] = out.get(Sleeve(t.to_sleeve), 0.0) + t.qty
                if t.from_sleeve:
                    out[Sleeve(t.from_sleeve)] = out.get(Sleeve(t.from_sleeve), 0.0) - t.qty
        return out

    def equity_records(self, day: datetime) -> dict[Sleeve, float]:
        """Sleeve -> equity recorded at the close of `day` (empty: none)."""
        with Session(self.engine) as session:
            return {Sleeve(r.sleeve): r.equity for r in
                    session.scalars(select(EquitySnapshotRow).where(EquitySnapshotRow.day == day))}

    def load_allocation_state(self) -> dict[str, Any] | None:
        with Session(self.engine) as session:
            row = session.get(RiskStateRow, ALLOCATION_ROW)
            return row.state if row is not None else None

    def save_allocation_state(self, state: dict[str, Any], now: datetime, conn: Connection) -> None:
        upsert(conn, RiskStateRow.__table__, [{"id": ALLOCATION_ROW, "state": _jsonable(state),
                                               "updated_at": now}], ["id"])

    def deposit_seen(self, reference: str) -> bool:
        with Session(self.engine) as session:
            return session.scalars(select(DepositRow.id).where(DepositRow.note == reference)).first() is not None

    def save_deposit(self, ts: datetime, amount: float, reference: str, conn: Connection) -> None:
        conn.execute(insert(DepositRow), [{"ts": ts, "asset": QUOTE, "amount": amount, "note": reference}])

    def inflows_after(self, seen: int | None) -> tuple[dict[Sleeve, float], int | None]:
        """USDT received by each sleeve in transfers recorded after row `seen` (deposits and other
        sleeves' transfers, to deploy or to account for), and the newest row counted.

        Counted by row, not by time: a transfer stamped with an earlier time but recorded after a
        cycle read the table (a funding settlement booked late) is still counted exactly once."""
        q = select(TransferRow).where(TransferRow.asset == QUOTE).order_by(TransferRow.id)
        if seen is not None:
            q = q.where(TransferRow.id > seen)
        out: dict[Sleeve, float] = {}
        last = seen
        with Session(self.engine) as session:
            for t in session.scalars(q):
                last = t.id
                # the initial allocation is no deposit; an in-cycle allocation was counted by its cycle
                if t.reason.startswith(("initial allocation", IN_CYCLE)):
                    continue
                out[Sleeve(t.to_sleeve)] = out.get(Sleeve(t.to_sleeve), 0.0) + t.qty
                if t.from_sleeve and t.reason.startswith(REBALANCE):      # taken by the rebalance flow
                    out[Sleeve(t.from_sleeve)] = out.get(Sleeve(t.from_sleeve), 0.0) - t.qty
        return out, last

    # runs ------------------------------------------------------------------------------------
    def start_run(self, flow: str, scheduled: datetime, mode: str, now: datetime) -> int:
        with self.engine.begin() as conn:
            return conn.execute(insert(CycleRunRow).returning(CycleRunRow.id), [
                {"flow": flow, "scheduled": scheduled, "mode": mode, "status": "running",
                 "started_at": now, "finished_at": None, "summary": {}}]).scalar_one()

    def finish_run(self, run_id: int, status: str, summary: dict[str, Any], now: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(CycleRunRow.__table__.update().where(CycleRunRow.id == run_id).values(
                status=status, summary=_jsonable(summary), finished_at=now))

    def last_run(self, flow: str | None = None, status: str | None = None) -> CycleRunRow | None:
        q = select(CycleRunRow).order_by(CycleRunRow.id.desc()).limit(1)
        if flow:
            q = q.where(CycleRunRow.flow == flow)
        if status:
            q = q.where(CycleRunRow.status == status)
        with Session(self.engine, expire_on_commit=False) as session:
            return session.scalars(q).first()

    # the paper exchange's own state ----------------------------------------------------------
    def load_exchange_state(self, name: str) -> dict[str, Any] | None:
        with Session(self.engine) as session:
            row = session.scalars(select(ExchangeStateRow).where(ExchangeStateRow.name == name)).first()
        return row.state if row else None

    def save_exchange_state(self, name: str, state: dict[str, Any], now: datetime,
                            conn: Connection | None = None) -> None:
        """`conn`: write inside the caller's transaction (e.g. with our own books, atomically)."""
        row = [{"name": name, "state": _jsonable(state), "updated_at": now}]
        if conn is None:
            with self.engine.begin() as conn:
                upsert(conn, ExchangeStateRow.__table__, row, ["name"])
        else:
            upsert(conn, ExchangeStateRow.__table__, row, ["name"])


def _record(r: OrderRow) -> OrderRecord:
    intent = intent_from_dict({
        "sleeve": r.sleeve, "symbol": r.symbol, "market": r.market, "side": r.side, "qty": r.qty,
        "order_type": r.order_type, "reason": r.reason, "key": r.intent_key, "limit_price": r.limit_price,
        "post_only": r.post_only, "reduce_only": r.reduce_only, "scale_to_cash": r.scale_to_cash})
    return OrderRecord(r.client_order_id, r.flow, utc(r.scheduled), intent, OrderStatus(r.status),
                       r.exchange_order_id, r.filled_qty, r.avg_price, r.fee, r.created_at, r.updated_at,
                       r.error)


__all__ = ["LedgerStore", "OrderIntent"]
