"""The emulator's trading state: one Unified account per API key, orders, fills, positions.

No HTTP here. Every mutation happens under the emulator's state lock. Rules follow Bybit V5 for a
Unified Trading Account in one-way mode: spot fees 0.1 % charged in the coin received, linear
taker 0.055 % / maker 0.02 % in USDT, realised PnL booked to the USDT wallet on reducing fills.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

SPOT_FEE = 0.001
LINEAR_TAKER_FEE = 0.00055
LINEAR_MAKER_FEE = 0.0002
QUOTE = "USDT"
_ids = itertools.count(1_000_000_001)
_seq = itertools.count(50_000_001)


def new_id(prefix: str = "") -> str:
    return f"{prefix}{next(_ids)}"


class Reject(Exception):
    """A Bybit business error: retCode and retMsg as Bybit sends them."""

    def __init__(self, code: int, msg: str):
        super().__init__(msg)
        self.code, self.msg = code, msg


@dataclass
class Order:
    order_id: str
    link_id: str
    category: str
    symbol: str
    side: str                 # "Buy" | "Sell"
    order_type: str           # "Market" | "Limit"
    qty: float                # in base coin (spot quote-unit market buys are converted on entry)
    price: float | None
    time_in_force: str
    reduce_only: bool
    created_ms: int
    last_price_on_created: float
    market_unit: str = ""
    status: str = "New"
    cum_qty: float = 0.0
    cum_value: float = 0.0
    cum_fee: float = 0.0
    updated_ms: int = 0
    reject_reason: str = "EC_NoError"
    cancel_type: str = "UNKNOWN"
    stop_order_type: str = ""
    create_type: str = "CreateByUser"
    trigger_price: float | None = None     # a conditional order: Untriggered until the price crosses it
    trigger_direction: int = 0             # 1: when the price rises to it, 2: when it falls to it
    stop_loss: float | None = None         # an entry's stopLoss: the position's stop from its fill on

    @property
    def is_open(self) -> bool:
        return self.status in ("New", "PartiallyFilled", "Untriggered")

    @property
    def is_conditional(self) -> bool:
        return self.trigger_price is not None


@dataclass
class Position:
    leverage: float = 10.0
    size: float = 0.0          # signed: + long, - short (one-way mode)
    entry_price: float = 0.0
    cum_realised: float = 0.0
    stop_loss: float | None = None
    created_ms: int = 0
    updated_ms: int = 0
    seq: int = 0


@dataclass
class Account:
    api_key: str
    secret: str
    uid: int
    balances: dict[str, float] = field(default_factory=dict)
    orders: dict[str, Order] = field(default_factory=dict)       # by orderId, in creation order
    link_ids: set[str] = field(default_factory=set)
    executions: list[dict] = field(default_factory=list)
    ledger: list[dict] = field(default_factory=list)
    positions: dict[str, Position] = field(default_factory=dict)
    transfers: dict[str, dict] = field(default_factory=dict)
    deposits: list[dict] = field(default_factory=list)
    cum_realised: dict[str, float] = field(default_factory=dict)
    is_master: bool = False                                         # the master UID (universal transfers)
    fund: dict[str, float] = field(default_factory=dict)            # the Funding wallet: where deposits land
    universal: dict[str, dict] = field(default_factory=dict)        # universal transfers made with this key

    def position(self, symbol: str) -> Position:
        return self.positions.setdefault(symbol, Position())

    def order_by(self, order_id: str | None, link_id: str | None) -> Order | None:
        if order_id:
            return self.orders.get(order_id)
        if link_id:
            return next((o for o in reversed(self.orders.values()) if o.link_id == link_id), None)
        return None

    def book(self, coin: str, change: float) -> None:
        self.balances[coin] = self.balances.get(coin, 0.0) + change


def base_of(symbol: str) -> str:
    return symbol[: -len(QUOTE)] if symbol.endswith(QUOTE) else symbol


def fill(acct: Account, o: Order, qty: float, price: float, *, maker: bool, mark: float, now_ms: int) -> dict:
    """Execute `qty` of `o` at `price`: balances/position, fee, execution and ledger rows."""
    value = qty * price
    base = base_of(o.symbol)
    sign = 1.0 if o.side == "Buy" else -1.0
    closed = 0.0
    if o.category == "spot":
        cash = -value if o.side == "Buy" else value * (1 - SPOT_FEE)
        rate = SPOT_FEE
        if o.side == "Buy":  # fee in the coin received
            fee, fee_coin = qty * rate, base
            acct.book(base, qty - fee)
            acct.book(QUOTE, -value)
        else:
            fee, fee_coin = value * rate, QUOTE
            acct.book(base, -qty)
            acct.book(QUOTE, value - fee)
    else:
        rate = LINEAR_MAKER_FEE if maker else LINEAR_TAKER_FEE
        fee, fee_coin = value * rate, QUOTE
        p = acct.position(o.symbol)
        pnl = 0.0
        if p.size and (p.size > 0) != (sign > 0):  # reducing (maybe flipping)
            closed = min(abs(p.size), qty)
            pnl = closed * (price - p.entry_price) * (1.0 if p.size > 0 else -1.0)
            p.size += sign * closed
            rest = qty - closed
            if abs(p.size) < 1e-12:
                p.size, p.entry_price, p.stop_loss = 0.0, 0.0, None
            if rest > 1e-12:
                p.size, p.entry_price = sign * rest, price
                p.stop_loss = o.stop_loss or None
        else:
            new_size = p.size + sign * qty
            p.entry_price = (abs(p.size) * p.entry_price + qty * price) / abs(new_size)
            p.size = new_size
            if o.stop_loss:            # Bybit: an order's stopLoss (tpslMode Full) becomes the position's
                p.stop_loss = o.stop_loss
            if not p.created_ms:
                p.created_ms = now_ms
        p.cum_realised += pnl - fee
        p.updated_ms, p.seq = now_ms, next(_seq)
        acct.book(QUOTE, pnl - fee)
        cash = pnl - fee
        acct.cum_realised[QUOTE] = acct.cum_realised.get(QUOTE, 0.0) + pnl - fee
    o.cum_qty += qty
    o.cum_value += value
    o.cum_fee += fee
    o.status = "Filled" if o.qty - o.cum_qty < 1e-12 else "PartiallyFilled"
    o.updated_ms = now_ms
    exec_id = new_id("e")
    execution = {
        "category": o.category, "symbol": o.symbol, "orderType": o.order_type, "orderLinkId": o.link_id,
        "orderId": o.order_id, "stopOrderType": o.stop_order_type or ("" if o.category == "spot" else "UNKNOWN"),
        "execTime": now_ms, "feeCurrency": fee_coin if o.category == "spot" else "", "feeRate": rate,
        "markPrice": mark, "execPrice": price, "orderQty": o.qty, "orderPrice": o.price or price,
        "execValue": value, "closedSize": closed, "execType": "Trade", "seq": next(_seq), "side": o.side,
        "leavesQty": max(o.qty - o.cum_qty, 0.0), "isMaker": maker, "execFee": fee, "execId": exec_id,
        "execQty": qty, "marketUnit": o.market_unit,
    }
    acct.executions.append(execution)
    acct.ledger.append({
        "symbol": o.symbol, "side": o.side, "funding": 0.0, "orderLinkId": o.link_id, "orderId": o.order_id,
        "fee": fee, "change": cash, "cashFlow": -sign * value if o.category == "spot" else 0.0,
        "transactionTime": now_ms, "type": "TRADE", "feeRate": rate, "size": acct.position(o.symbol).size
        if o.category == "linear" else acct.balances.get(base, 0.0), "qty": qty,
        "cashBalance": acct.balances.get(QUOTE, 0.0), "currency": QUOTE, "id": new_id("l"),
        "category": o.category, "tradePrice": price, "tradeId": exec_id,
    })
    return execution


def settle_funding(acct: Account, symbol: str, rate: float, mark: float, now_ms: int) -> dict | None:
    """Funding on a linear position: longs pay a positive rate, shorts receive it."""
    p = acct.positions.get(symbol)
    if p is None or not p.size:
        return None
    value = abs(p.size) * mark
    paid = p.size * mark * rate            # > 0: the account pays
    acct.book(QUOTE, -paid)
    p.cum_realised -= paid
    side = "Buy" if p.size > 0 else "Sell"
    exec_id = new_id("f")
    acct.executions.append({
        "category": "linear", "symbol": symbol, "orderType": "UNKNOWN", "orderLinkId": "",
        "orderId": new_id("fo"), "stopOrderType": "UNKNOWN", "execTime": now_ms, "feeCurrency": "",
        "feeRate": rate, "markPrice": mark, "execPrice": mark, "orderQty": 0.0, "orderPrice": 0.0,
        "execValue": value, "closedSize": 0.0, "execType": "Funding", "seq": next(_seq), "side": side,
        "leavesQty": 0.0, "isMaker": False, "execFee": paid, "execId": exec_id, "execQty": abs(p.size),
        "createType": "",
    })
    row = {
        "symbol": symbol, "side": side, "funding": -paid, "orderLinkId": "", "orderId": "", "fee": 0.0,
        "change": -paid, "cashFlow": 0.0, "transactionTime": now_ms, "type": "SETTLEMENT", "feeRate": rate,
        "size": abs(p.size), "qty": abs(p.size), "cashBalance": acct.balances.get(QUOTE, 0.0),
        "currency": QUOTE, "id": new_id("l"), "category": "linear", "tradePrice": mark, "tradeId": exec_id,
    }
    acct.ledger.append(row)
    return row
