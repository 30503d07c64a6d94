"""SQLAlchemy 2 models. Schema changes go through Alembic (eternal/store/migrations)."""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC on the way in and out, on SQLite (which keeps no zone) and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} refused: store timezone-aware UTC")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    pass


class SleeveRow(Base):
    __tablename__ = "sleeves"
    name: Mapped[str] = mapped_column(String(16), primary_key=True)
    weight: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class BalanceRow(Base):
    """Holdings per sleeve and asset (USDT is the sleeve's cash). `qty` is free, `staked` is locked
    in staking; both are stored as they are, so nothing is re-derived (and rounded) on load."""

    __tablename__ = "balances"
    sleeve: Mapped[str] = mapped_column(String(16), primary_key=True)
    asset: Mapped[str] = mapped_column(String(16), primary_key=True)
    qty: Mapped[float] = mapped_column(Float)
    staked: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class OrderRow(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    client_order_id: Mapped[str] = mapped_column(String(36), unique=True)
    flow: Mapped[str] = mapped_column(String(64))
    scheduled: Mapped[datetime] = mapped_column(UTCDateTime)
    sleeve: Mapped[str] = mapped_column(String(16), index=True)
    symbol: Mapped[str] = mapped_column(String(32))
    market: Mapped[str] = mapped_column(String(8))
    side: Mapped[str] = mapped_column(String(4))
    order_type: Mapped[str] = mapped_column(String(8))
    qty: Mapped[float] = mapped_column(Float)
    limit_price: Mapped[float | None] = mapped_column(Float, nullable=True)
    post_only: Mapped[bool] = mapped_column(Boolean, default=False)
    reduce_only: Mapped[bool] = mapped_column(Boolean, default=False)
    scale_to_cash: Mapped[bool] = mapped_column(Boolean, default=False)
    intent_key: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20))
    exchange_order_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    filled_qty: Mapped[float] = mapped_column(Float, default=0.0)
    avg_price: Mapped[float | None] = mapped_column(Float, nullable=True)
    fee: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class FillRow(Base):
    __tablename__ = "fills"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trade_id: Mapped[str] = mapped_column(String(64), unique=True)
    client_order_id: Mapped[str] = mapped_column(String(36), index=True)
    ts: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    sleeve: Mapped[str] = mapped_column(String(16))
    symbol: Mapped[str] = mapped_column(String(32))
    market: Mapped[str] = mapped_column(String(8))
    side: Mapped[str] = mapped_column(String(4))
    qty: Mapped[float] = mapped_column(Float)
    price: Mapped[float] = mapped_column(Float)
    fee: Mapped[float] = mapped_column(Float)
    fee_asset: Mapped[str] = mapped_column(String(16))
    liquidity: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(Text, default="")
    leverage: Mapped[float] = mapped_column(Float, default=1.0)   # perps: margin = notional / leverage


class PerpPositionRow(Base):
    """Open perpetual positions per sleeve (one-way: one row per symbol), with the position's stop.
    A closed position has no row. Amounts are stored as they are, nothing is re-derived on load."""

    __tablename__ = "perp_positions"
    sleeve: Mapped[str] = mapped_column(String(16), primary_key=True)
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    qty: Mapped[float] = mapped_column(Float)                 # signed: + long, - short
    entry_price: Mapped[float] = mapped_column(Float)
    margin: Mapped[float] = mapped_column(Float)              # USDT, out of the sleeve's cash
    leverage: Mapped[float] = mapped_column(Float)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime)
    stop_price: Mapped[float | None] = mapped_column(Float, nullable=True)
    stop_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class FundingPaymentRow(Base):
    """One funding settlement of one position: amount > 0 received, < 0 paid (USDT)."""

    __tablename__ = "funding_payments"
    __table_args__ = (UniqueConstraint("sleeve", "symbol", "ts", name="uq_funding_payments_sleeve_symbol_ts"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    sleeve: Mapped[str] = mapped_column(String(16))
    symbol: Mapped[str] = mapped_column(String(32))
    qty: Mapped[float] = mapped_column(Float)                 # signed position qty at the settlement
    price: Mapped[float] = mapped_column(Float)
    rate: Mapped[float] = mapped_column(Float)                # fraction per settlement
    amount: Mapped[float] = mapped_column(Float)              # booked
    expected: Mapped[float] = mapped_column(Float)            # rate x qty x price, signed like amount


class TransferRow(Base):
    __tablename__ = "transfers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(UTCDateTime)
    from_sleeve: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_sleeve: Mapped[str] = mapped_column(String(16))
    asset: Mapped[str] = mapped_column(String(16))
    qty: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text)


class DepositRow(Base):
    __tablename__ = "deposits"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(UTCDateTime)
    asset: Mapped[str] = mapped_column(String(16))
    amount: Mapped[float] = mapped_column(Float)
    note: Mapped[str] = mapped_column(Text, default="")


class EngineStateRow(Base):
    __tablename__ = "engine_states"
    sleeve: Mapped[str] = mapped_column(String(16), primary_key=True)
    state: Mapped[dict] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RiskStateRow(Base):
    __tablename__ = "risk_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[dict] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class EventRow(Base):
    """Append-only audit log: every decision and incident, with its reason."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    level: Mapped[str] = mapped_column(String(16))
    sleeve: Mapped[str | None] = mapped_column(String(16), nullable=True)
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict] = mapped_column(JSON)
    run_key: Mapped[str | None] = mapped_column(String(64), nullable=True)


class EquitySnapshotRow(Base):
    __tablename__ = "equity_snapshots"
    day: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    sleeve: Mapped[str] = mapped_column(String(16), primary_key=True)
    equity: Mapped[float] = mapped_column(Float)
    cash: Mapped[float] = mapped_column(Float)


class CycleRunRow(Base):
    """One run of a flow over one scheduled time (the key of its client order ids)."""

    __tablename__ = "cycle_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    flow: Mapped[str] = mapped_column(String(64))
    scheduled: Mapped[datetime] = mapped_column(UTCDateTime)
    mode: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    summary: Mapped[dict] = mapped_column(JSON)


class ExchangeStateRow(Base):
    """The paper exchange's own book (its side of the world), kept apart from our ledger."""

    __tablename__ = "paper_exchange"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[dict] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CandleRow(Base):
    __tablename__ = "candles"
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    timeframe: Mapped[str] = mapped_column(String(8), primary_key=True)
    ts: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    open: Mapped[float] = mapped_column(Float)
    high: Mapped[float] = mapped_column(Float)
    low: Mapped[float] = mapped_column(Float)
    close: Mapped[float] = mapped_column(Float)
    volume: Mapped[float] = mapped_column(Float)


class FundingRateRow(Base):
    __tablename__ = "funding_rates"
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    ts: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    funding_rate: Mapped[float] = mapped_column(Float)


class FearGreedRow(Base):
    __tablename__ = "fear_greed"
    ts: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    value: Mapped[int] = mapped_column(Integer)
    classification: Mapped[str] = mapped_column(String(32))


Index("ix_orders_scheduled", OrderRow.flow, OrderRow.scheduled)


class DriverStateRow(Base):
    """The driver's small state: its clock (last event processed), journal cursor, pending deposits."""

    __tablename__ = "driver_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    doc: Mapped[dict] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class PlanRow(Base):
    """A decision stored before anything of it is sent (write-ahead); `done` once committed."""

    __tablename__ = "plans"
    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    payload: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class PaperOrderRow(Base):
    """The paper exchange's orders, one row each (only changed rows are written)."""

    __tablename__ = "paper_orders"
    client_order_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)           # the number in its exchange order id
    status: Mapped[str] = mapped_column(String(16), index=True)
    payload: Mapped[dict] = mapped_column(JSON)


class PaperJournalRow(Base):
    """The paper exchange's account journal: fills, funding payments, staking rewards, in order."""

    __tablename__ = "paper_journal"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict] = mapped_column(JSON)


class PaperKeyRow(Base):
    """Keyed transfers and stakes the paper exchange has made (a repeat of a key is a no-op)."""

    __tablename__ = "paper_keys"
    key: Mapped[str] = mapped_column(String(160), primary_key=True)
    value: Mapped[float] = mapped_column(Float)


class InstrumentRow(Base):
    """The venue's trading rules per symbol as last read (Bybit instruments-info through ccxt's
    `load_markets`), refreshed by every run in an exchange mode; `eternal.instruments.Instrument`."""

    __tablename__ = "instruments"
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    qty_step: Mapped[float] = mapped_column(Float)
    min_qty: Mapped[float] = mapped_column(Float)
    min_notional: Mapped[float] = mapped_column(Float)        # USDT (0: no minimum)
    price_tick: Mapped[float] = mapped_column(Float)
    max_leverage: Mapped[float | None] = mapped_column(Float, nullable=True)   # perps only
    source: Mapped[str] = mapped_column(String(32))           # the venue it was read from, e.g. "bybit demo"
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

