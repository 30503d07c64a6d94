"""The Exchange port: what execution needs from any venue (paper simulator or Bybit via ccxt)."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from eternal.models import Fill, OrderIntent, OrderStatus, Quote, Sleeve, StopLevel


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

    def set_leverage(self, sleeve: Sleeve, symbol: str, leverage: float) -> None:
        """Leverage of a perp symbol for the sleeve's next fills (Bybit: set-leverage), at most 2x;
        setting the same value again is harmless. Raises ExchangeError above 2x, at or below 0, or
        when changing it under an open position (close it first)."""

    def set_stop(self, sleeve: Sleeve, symbol: str, level: StopLevel | None) -> None:
        """The perp position's one reduce-only stop (Bybit: position trading-stop), replaced on
        every call; None clears it. The venue fills it; its fills come back with reason level.reason."""
