"""Domain types shared by the pure core and the shell. No I/O here."""
from __future__ import annotations

import functools
import math

from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from datetime import date, datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

UTC = timezone.utc


class Sleeve(StrEnum):
    CORE = "core"
    TREND_1 = "trend-1"
    TREND_2 = "trend-2"
    FUNDING = "funding"
    TACTICAL = "tactical"

    @property
    def weight_field(self) -> str:
        return self.value.replace("-", "_")


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class Market(StrEnum):
    SPOT = "spot"
    PERP = "perp"


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"


class ExitReason(StrEnum):
    """Why a TREND position closed (the `reason` column of trades.csv)."""

    SMA_EXIT = "sma_exit"
    HARD_STOP = "hard_stop"
    TRAILING_STOP = "trailing_stop"
    TIME_STOP = "time_stop"
    FUNDING_EXIT = "funding_exit"
    LIQUIDATION = "liquidation"
    END = "end"


class OrderStatus(StrEnum):
    CREATED = "created"
    SUBMITTED = "submitted"
    OPEN = "open"
    FILLED = "filled"
    PARTIALLY_FILLED = "partially_filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @property
    def is_final(self) -> bool:
        return self in (OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED)


QUOTE = "USDT"
MAX_USDT = 1e12
"""The largest capital or deposit taken (USDT): larger amounts are a typo, a float64 keeps about 16
digits (above a trillion USDT no cent of a fee), and their quantities overflow the step arithmetic."""
SPOT_SYMBOLS = {"BTC": "BTC/USDT", "ETH": "ETH/USDT", "SOL": "SOL/USDT"}
PERP_SYMBOLS = {"BTC": "BTC/USDT:USDT", "ETH": "ETH/USDT:USDT", "SOL": "SOL/USDT:USDT"}


def base_of(symbol: str) -> str:
    """'BTC/USDT' -> 'BTC'; 'BTC/USDT:USDT' -> 'BTC'."""
    return symbol.split("/")[0]


def utc(value: datetime | date | str) -> datetime:
    """A timezone-aware UTC datetime; naive input is refused rather than guessed."""
    if type(value) is datetime and value.tzinfo is UTC:      # most calls: already one, returned as is
        return value
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
    elif isinstance(value, date) and not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: pass a timezone-aware UTC datetime")
    return value.astimezone(UTC)


def minute_stamp(ts: datetime) -> str:
    """`ts` as YYYYMMDDHHMM (f"{ts:%Y%m%d%H%M}" for years 1000-9999, a fifth of its cost: the
    client order ids of every decision carry one)."""
    return "%04d%02d%02d%02d%02d" % (ts.year, ts.month, ts.day, ts.hour, ts.minute)


@functools.lru_cache(maxsize=4096)
def utc_cached(value: str | datetime) -> datetime:
    """`utc` of a stored time, parsed once: the loop reads the same stored times back at every
    event (a pending deposit's, the last funding settlement's)."""
    return utc(value)


def end_before_start(start: datetime, end: datetime) -> str:
    """The refusal of a window whose (exclusive) end is not after its start."""
    return (f"--end {end:%Y-%m-%d} is not after --start {start:%Y-%m-%d} (the end is exclusive): "
            "give an end at least one day after the start")


def last_closed_day(asof: datetime) -> datetime:
    """Open time of the last daily candle that has closed at `asof` (UTC)."""
    asof = utc(asof)
    today = asof.replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=1)


@dataclass(frozen=True, slots=True)
class OrderIntent:
    """What an engine wants done; the executor turns it into one exchange order."""

    sleeve: Sleeve
    symbol: str
    market: Market
    side: Side
    qty: float
    order_type: OrderType
    reason: str                      # why, for the audit trail and trades.csv
    key: str                         # stable name of the intent inside its cycle (for the id)
    limit_price: float | None = None
    post_only: bool = False
    reduce_only: bool = False
    scale_to_cash: bool = False      # a buy the cash cannot cover is scaled down, not refused
    leverage: float | None = None    # perps: leverage to set for the symbol before an opening order

    def __post_init__(self) -> None:
        if not self.qty > 0:
            raise ValueError(f"order qty must be positive, got {self.qty} for {self.key}")
        if self.order_type == OrderType.LIMIT and not (self.limit_price and self.limit_price > 0):
            raise ValueError(f"limit order {self.key} needs a positive limit price")


@dataclass(frozen=True, slots=True)
class Fill:
    client_order_id: str
    ts: datetime
    sleeve: Sleeve
    symbol: str
    market: Market
    side: Side
    qty: float
    price: float
    fee: float                      # in the fee asset
    fee_asset: str
    liquidity: str                  # "maker" | "taker"
    trade_id: str                   # unique per fill at the exchange (re-syncs never double count)
    reason: str = ""
    leverage: float = 1.0           # perps: the symbol's leverage when filled (margin = notional / it)


@dataclass(slots=True)
class OrderRecord:
    """Our ledger's view of one order, keyed by its client order id."""

    client_order_id: str
    flow: str
    scheduled: datetime
    intent: OrderIntent
    status: OrderStatus = OrderStatus.CREATED
    exchange_order_id: str | None = None
    filled_qty: float = 0.0
    avg_price: float | None = None
    fee: float = 0.0
    created_at: datetime | None = None
    updated_at: datetime | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """One line of the append-only audit log: a decision or incident with its reason."""

    ts: datetime
    kind: str
    message: str
    sleeve: Sleeve | None = None
    level: str = "info"             # info | warning | alert
    data: dict[str, Any] = field(default_factory=dict)


TRANSFER_DECIMALS = 8
"""A venue moves money between accounts in 8 decimals (Bybit's universal transfer amount)."""


def transfer_qty(qty: float) -> float:
    """`qty` down to TRANSFER_DECIMALS: what a venue can move, never more than a balance holds
    (rounded to the nearest, a transfer of a sleeve's whole cash, 27.93946374608 USDT, was sent as
    27.93946375 and refused by Bybit for insufficient balance at every later run). Not finite: as is."""
    if not math.isfinite(qty):
        return qty
    return float(Decimal(repr(qty)).quantize(Decimal(1).scaleb(-TRANSFER_DECIMALS), rounding=ROUND_DOWN))


def split_transfer_qty(total: float, parts: dict[Any, float]) -> dict[Any, float]:
    """`parts` of `total` (a deposit's shares), each in the transfers' precision (`transfer_qty`),
    the remainder to the largest: they add up to `total` in that precision, so no deposit is booked
    short by its rounding."""
    held = {k: transfer_qty(v) for k, v in parts.items()}
    if not held or not math.isfinite(total):
        return held
    largest = max(held, key=held.__getitem__)
    rest = Decimal(repr(transfer_qty(total))) - sum(Decimal(repr(v)) for v in held.values())
    held[largest] = float(Decimal(repr(held[largest])) + rest)
    return held


@dataclass(frozen=True, slots=True)
class Transfer:
    """Money or coins moved between sleeves, or in from outside; `qty` is held to the venue's
    precision (`transfer_qty`: 8 decimals, down), so the ledger books what the venue moves."""

    ts: datetime
    from_sleeve: Sleeve | None       # None: from outside (a deposit)
    to_sleeve: Sleeve
    asset: str
    qty: float
    reason: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "qty", transfer_qty(self.qty))


@dataclass(slots=True)
class PerpPosition:
    """One-way USDT-margined perpetual position of a sleeve (cross margin within the sleeve)."""

    symbol: str                     # 'BTC/USDT:USDT'
    qty: float                      # signed base quantity: + long, - short
    entry_price: float              # average entry
    margin: float                   # USDT locked as initial margin (notional at entry / leverage)
    leverage: float
    opened_at: datetime             # time of the first fill

    @property
    def side(self) -> Side:
        return Side.BUY if self.qty > 0 else Side.SELL

    def unrealised(self, mark: float) -> float:
        return (mark - self.entry_price) * self.qty

    def notional(self, mark: float) -> float:
        return abs(self.qty) * mark

    def copy(self) -> PerpPosition:
        return PerpPosition(self.symbol, self.qty, self.entry_price, self.margin, self.leverage, self.opened_at)


@dataclass(slots=True)
class SleeveBook:
    """Cash and holdings of one sleeve. `staked` is held too, but locked in staking; `perps` are
    perpetual positions whose margin has left `cash` (equity = cash + margin + unrealised + spot)."""

    sleeve: Sleeve
    cash: float = 0.0
    holdings: dict[str, float] = field(default_factory=dict)
    staked: dict[str, float] = field(default_factory=dict)
    perps: dict[str, PerpPosition] = field(default_factory=dict)

    def qty(self, asset: str) -> float:
        return self.holdings.get(asset, 0.0) + self.staked.get(asset, 0.0)

    def equity(self, prices: dict[str, float], marks: dict[str, float] | None = None) -> float:
        """Mark to market (`eternal.valuation`): spot at `prices` (asset -> price), perps at
        `marks` (perp symbol -> mark; a perp without one is refused, not valued at the spot)."""
        from eternal.valuation import book_equity

        return book_equity(self, prices, marks)

    def copy(self) -> SleeveBook:
        return SleeveBook(self.sleeve, self.cash, dict(self.holdings), dict(self.staked),
                          {s: p.copy() for s, p in self.perps.items()})


@dataclass(frozen=True, slots=True)
class StopLevel:
    """A reduce-only stop for a perp position, kept in step with the engine's level each cycle."""

    price: float
    reason: str                     # ExitReason.HARD_STOP or ExitReason.TRAILING_STOP


@dataclass(frozen=True, slots=True)
class FundingPayment:
    """One funding settlement of one position: amount > 0 received, < 0 paid (USDT)."""

    ts: datetime
    sleeve: Sleeve
    symbol: str
    qty: float                      # signed position qty at the settlement
    price: float                    # price the payment was computed at
    rate: float                     # funding rate of the settlement (fraction per settlement)
    amount: float                   # realised: what the ledger booked (> 0 received)
    expected: float                 # -rate x signed qty x price, same sign convention, to compare


@dataclass(frozen=True, slots=True)
class Quote:
    bid: float
    ask: float
    last: float


@dataclass(frozen=True)
class Snapshot:
    """Everything a decision may look at, gathered before deciding; immutable by convention.

    `day` is the open time of the last closed daily candle (decisions are on its close);
    `asof` is when the cycle runs (normally day + 1 at 00:05 UTC).
    """

    asof: datetime
    day: datetime
    closes: dict[str, float]                 # asset -> close of `day` (spot)
    ath: dict[str, float]                    # asset -> highest daily close up to and including `day`
    quotes: dict[str, Quote]                 # asset -> best bid/ask now (replay: the close)
    books: dict[Sleeve, SleeveBook]
    states: dict[Sleeve, dict[str, Any]]     # persisted engine states (JSON)
    inflows: dict[Sleeve, float] = field(default_factory=dict)  # USDT received since the last cycle
    perps: dict[str, Any] = field(default_factory=dict)        # asset -> PerpMarket (indicators)
    perp_index: dict[str, int] = field(default_factory=dict)   # asset -> position of `day` in it
    marks: dict[str, float] = field(default_factory=dict)      # perp symbol -> close of `day`
    btc_eth_correlation: float | None = None   # 30-day correlation of daily perp returns at `day`
    fear_greed: int | None = None              # Fear & Greed index of `day`; None: missing (no signal)
    volatility: dict[str, float] = field(default_factory=dict)  # asset -> 30-day realised vol, annualised
    recent_funding: dict[str, tuple[float, ...]] = field(default_factory=dict)
    """asset -> perp funding rates settled in the last days up to `day`'s close, oldest first"""
    regime_inputs: Any = None                  # allocation.MarketRegimeInputs of BTC on `day`
    cash_requests: dict[Sleeve, float] = field(default_factory=dict)
    """USDT the allocation still needs a sleeve to free for a rebalance (a sleeve sells by its rules)"""
    entries_refused: frozenset = frozenset()
    """Sleeves the risk step allows no new entry now (breaker level, halted sleeve): they do not try"""


@dataclass
class EngineDecision:
    intents: list[OrderIntent]
    state: dict[str, Any]
    events: list[Event]
    stake: dict[str, float] = field(default_factory=dict)  # asset -> qty to stake (+) / unstake (-)
    stops: dict[str, StopLevel] = field(default_factory=dict)  # perp symbol -> stop to keep
    transfers: list[Transfer] = field(default_factory=list)    # money sent to other sleeves


@dataclass(frozen=True)
class FundingTick:
    """What is known at one funding settlement: the FUNDING engine decides on these (spec ch. 4).

    Prices are the latest the caller has at `ts` (live: tickers; replay: the day's open). The
    predicted rate is the exchange's next-funding estimate live, the latest settled rate in replay.
    """

    ts: datetime
    spot: dict[str, float]                       # asset -> spot price
    perp: dict[str, float]                       # asset -> perp price
    predicted: dict[str, float | None]           # asset -> predicted next rate per settlement
    settled: dict[str, tuple[float, ...]]        # asset -> latest settled rates, oldest first
    books: dict[Sleeve, SleeveBook]
    state: dict[str, Any] | None
    received: dict[str, float] = field(default_factory=dict)   # asset -> funding booked at `ts`
    fills_deferred: bool = False      # replay: orders rest until the next daily open; live: fill now
    entries_refused: bool = False     # the risk step allows FUNDING no new entry now: it does not try


@dataclass
class Plan:
    """Output of one pure cycle: what to send, what to remember, and why."""

    asof: datetime
    day: datetime
    intents: list[OrderIntent]
    states: dict[Sleeve, dict[str, Any]]
    events: list[Event]
    stakes: dict[Sleeve, dict[str, float]] = field(default_factory=dict)
    stops: dict[Sleeve, dict[str, StopLevel]] = field(default_factory=dict)
    transfers: list[Transfer] = field(default_factory=list)
