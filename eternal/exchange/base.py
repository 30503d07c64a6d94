"""The Exchange port: what execution needs from any venue (paper simulator or Bybit via ccxt)."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from eternal.models import Fill, OrderIntent, OrderStatus, Quote, Sleeve


@dataclass
class ExchangeOrder:
    """The exchange's view of one order."""

    client_order_id: str
    exchange_order_id: str
    intent: OrderIntent
    status: OrderStatus
    created: datetime
    filled_qty: float = 0.0
    fee: float = 0.0
    fills: list[Fill] = field(default_factory=list)
    error: str | None = None

    @property
    def avg_price(self) -> float | None:
        if not self.filled_qty:
            return None
        return sum(f.qty * f.price for f in self.fills) / self.filled_qty


class Exchange(Protocol):
    name: str

    def place_order(self, client_order_id: str, intent: OrderIntent, now: datetime) -> ExchangeOrder:
        """Send one order. Raises DuplicateOrder for a reused id, InsufficientFunds, ExchangeError."""

    def fetch_order(self, client_order_id: str, sleeve: Sleeve) -> ExchangeOrder | None:
        """The order with this client order id, or None when the exchange never accepted it."""

    def quote(self, symbol: str) -> Quote: ...

    def stake(self, sleeve: Sleeve, asset: str, qty: float) -> float:
        """Stake (qty > 0) or unstake (qty < 0); returns the qty moved."""
