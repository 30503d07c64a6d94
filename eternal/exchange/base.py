"""The Exchange port: what execution needs from any venue (paper simulator or Bybit via ccxt)."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from eternal.errors import ExchangeError
from eternal.models import Fill, OrderIntent, OrderStatus, Quote, Sleeve, SleeveBook, StopLevel, Transfer


class OrderRefused(ExchangeError):
    """The venue refused the order by its trading rules (qty off the step, under the minimum
    quantity or notional: Bybit 170136/170140/110094...). Nothing was placed; a retry cannot help."""


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
    """The venue as the driver sees it (issue 10): orders under client order ids, the account
    journal, books, leverage, stops, keyed transfers and stakes. The paper exchange implements it
    (and `on_market`, living through market events, which a real venue does by itself)."""

    name: str
    books: dict[Sleeve, SleeveBook]
    """The venue's own balances and positions per sleeve (sub-account), for reconciliation."""

    def journal_since(self, seq: int) -> list[tuple[int, str, Any]]:
        """Account entries numbered above `seq`, oldest first: ("fill", Fill), ("funding",
        FundingPayment), ("reward", (sleeve, asset, qty)): what our ledger books."""

    def transfer(self, t: Transfer, key: str | None = None) -> None:
        """Move money between sleeves' accounts; a repeated key moves nothing."""

    def on_market(self, key: str, ts: datetime, **market: Any) -> bool:
        """Paper only: live through one market event once (a real venue: a no-op)."""

    def place_order(self, client_order_id: str, intent: OrderIntent, now: datetime) -> ExchangeOrder:
        """Send one order. Raises DuplicateOrder for a reused id, InsufficientFunds, OrderRefused
        (trading rules), ExchangeError."""

    def fetch_order(self, client_order_id: str, sleeve: Sleeve) -> ExchangeOrder | None:
        """The order with this client order id, or None when the exchange never accepted it."""

    def quote(self, symbol: str) -> Quote: ...

    def stake(self, sleeve: Sleeve, asset: str, qty: float) -> float:
        """Stake (qty > 0) or unstake (qty < 0); returns the qty moved."""

    def set_leverage(self, sleeve: Sleeve, symbol: str, leverage: float) -> None:
        """Leverage of a perp symbol for the sleeve's next fills (Bybit: set-leverage), at most 2x;
        setting the same value again is harmless. Raises ExchangeError above 2x, at or below 0, or
        when changing it under an open position (close it first)."""

    def account_books(self) -> list[tuple[tuple[Sleeve, ...], SleeveBook, dict[str, float]]]:
        """Accounts that hold several sleeves (virtual ledgers): (their sleeves, the account's
        book, perp symbol -> mark), reconciled against the sum of those sleeves' books; they are
        not in `books`. Empty on a venue with an account per sleeve."""

    def use_ledger(self, positions: dict[tuple[Sleeve, str], float],
                   stops: dict[tuple[Sleeve, str], StopLevel]) -> None:
        """Our ledger's perp positions and stop levels before a plan is acted on: a venue that
        keeps several sleeves in one account sizes each sleeve's stop order by them."""

    def set_stop(self, sleeve: Sleeve, symbol: str, level: StopLevel | None) -> None:
        """The perp position's one reduce-only stop (Bybit: position trading-stop), replaced on
        every call; None clears it. The venue fills it; its fills come back with reason level.reason."""
