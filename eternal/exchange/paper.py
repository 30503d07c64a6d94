"""The paper exchange: deterministic fills against given prices, one book per sleeve.

Two fill policies, one code path:
* IMMEDIATE (paper mode, like live): a market order fills at the current price; a post-only
  limit fills at its limit price (the touch is assumed to trade).
* NEXT_OPEN (replay): every order rests until `on_bar` hands over the next daily open; limits
  then fill at that open at the maker fee, market orders at the taker fee (spec, replay rules).
Spot fees as Bybit charges them: a buy's (qty x rate) in the coin bought, so it pays qty x price
USDT and receives qty - fee coins (a buy scaled to the cash needs only its notional); a sell's
in USDT. Sells fill before buys in a bar, so a rebalance's sales pay for its purchases; perp orders that
reduce or close a position fill before those that open one, so a close frees its margin first.

Perpetuals (USDT-margined, one-way, cross margin within a sleeve): leverage per (sleeve, symbol)
up to 2x, position stops checked against daily bars (`check_stops`), liquidations
(`check_liquidations`), funding settlements (`settle_funding`) and `close_all`. The fills these
produce are kept in `events_fills` (unique trade ids), for our own ledger to book with
`ledger.apply_fill`; in one bar call `on_bar`, then `check_stops`, then `check_liquidations`.
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping
from datetime import datetime
from enum import StrEnum
from operator import itemgetter
from typing import Any

from eternal import instruments, ledger
from eternal.config import FeeParams
from eternal.errors import DuplicateOrder, ExchangeError, InsufficientFunds
from eternal.exchange.base import ExchangeOrder, OrderRefused
from eternal.exchange.paper_perps import (  # noqa: F401
    _CLOSE_TOLERANCE,
    _DUST,
    MAX_LEVERAGE,
    Bar,
    PerpDesk,
    _opens,
)
from eternal.exchange.paper_state import (  # noqa: F401  (intent_from_dict is re-exported)
    _fill_from_dict,
    _fill_to_dict,
    _order_from_dict,
    _order_to_dict,
    _payment_from_dict,
    _payment_to_dict,
    _position_from_dict,
    _position_to_dict,
    intent_from_dict,
)
from eternal.models import (
    PERP_SYMBOLS,
    QUOTE,
    Fill,
    FundingPayment,
    Market,
    OrderIntent,
    OrderStatus,
    OrderType,
    Quote,
    Side,
    Sleeve,
    SleeveBook,
    StopLevel,
    Transfer,
    base_of,
    utc,
)


class FillPolicy(StrEnum):
    IMMEDIATE = "immediate"
    NEXT_OPEN = "next_open"


class PaperExchange(PerpDesk):
    name = "paper"

    def __init__(self, fees: FeeParams, policy: FillPolicy = FillPolicy.IMMEDIATE,
                 books: Mapping[Sleeve, SleeveBook] | None = None,
                 on_change: Callable[[PaperExchange], None] | None = None,
                 rules: instruments.Instruments | None = None):
        self.fees = fees
        # Bybit's trading rules per symbol: an order off the step or under a minimum is refused
        self.rules = instruments.default() if rules is None else rules
        self.last_prices: dict[str, float] = {}   # the venue's last price per symbol (min notional)
        self.policy = policy
        self.books: dict[Sleeve, SleeveBook] = {s: b.copy() for s, b in (books or {}).items()}
        self.orders: dict[str, ExchangeOrder] = {}
        self.quotes: dict[str, Quote] = {}
        self._on_change = on_change   # persists the exchange's own state (survives our crashes)
        self._seq = 0
        self.stake_ops: dict[str, float] = {}     # keyed stake requests already applied
        # perps: leverage per (sleeve, symbol), default 1x; positions handed over keep theirs
        self.leverage: dict[tuple[Sleeve, str], float] = {
            (s, sym): p.leverage for s, b in self.books.items() for sym, p in b.perps.items()}
        self.stops: dict[tuple[Sleeve, str], StopLevel] = {}
        self.events_fills: list[Fill] = []        # fills of stops, liquidations and close_all
        # symbol -> (time, payments) of its last settlement: a repeat of it pays nothing again
        self.funding_last: dict[str, tuple[datetime, tuple[FundingPayment, ...]]] = {}
        # The account journal: every change the venue made to a book by itself or by a fill, in
        # order (kind "fill", "funding" or "reward"), numbered from 1. Our ledger books it from a
        # cursor (`journal_since`), as it would read a real venue's transaction log.
        self.journal: list[tuple[int, str, Any]] = []
        self.journal_seq = 0
        self.market_clock: str | None = None      # last market event this venue has lived through
        # assets whose withdrawals the venue reports suspended (Bybit: ccxt fetch_currencies); a
        # simulated venue never suspends by itself: tests and drills set it
        self.suspended: list[str] = []
        self._open: dict[str, ExchangeOrder] = {}     # resting orders, by client order id
        self._dirty_orders: set[str] = set()          # changed since the last save (row persistence)
        self._new_keys: dict[str, float] = {}
        self._lookup: Callable[[str], ExchangeOrder | None] | None = None   # orders not in memory
        self._journal_loader: Callable[[int, int], list[tuple[int, str, Any]]] | None = None

    # one account per sleeve ----------------------------------------------------------------------
    def account_books(self) -> list:
        """No account holds two sleeves here (the port's: Bybit's virtual sleeves)."""
        return []

    def use_ledger(self, positions, stops) -> None:
        """Nothing to size: each paper sleeve's stop covers its own position (the port's)."""

    # prices ----------------------------------------------------------------------------------
    def set_quotes(self, quotes: Mapping[str, Quote]) -> None:
        self.quotes.update(quotes)

    def quote(self, symbol: str) -> Quote:
        try:
            return self.quotes[symbol]
        except KeyError:
            raise ExchangeError(f"paper exchange has no price for {symbol}") from None

    # orders ----------------------------------------------------------------------------------
    def place_order(self, client_order_id: str, intent: OrderIntent, now: datetime) -> ExchangeOrder:
        if client_order_id in self.orders:
            raise DuplicateOrder(f"orderLinkId {client_order_id} already exists (paper, like Bybit 110072)")
        if intent.market == Market.PERP and intent.symbol not in PERP_SYMBOLS.values():
            raise ExchangeError(f"paper exchange has no perpetual {intent.symbol} "
                                f"(trades {', '.join(PERP_SYMBOLS.values())})")
        if intent.market not in (Market.SPOT, Market.PERP):
            raise ExchangeError(f"paper exchange does not trade {intent.market} ({intent.symbol})")
        if intent.sleeve not in self.books:
            raise ExchangeError(f"paper exchange has no account for sleeve {intent.sleeve}")
        self._check_rules(client_order_id, intent)
        self._seq += 1
        order = ExchangeOrder(client_order_id, f"paper-{self._seq}", intent, OrderStatus.OPEN, utc(now))
        if self.policy == FillPolicy.IMMEDIATE:
            q = self.quote(intent.symbol)
            if intent.order_type == OrderType.MARKET:
                price, liquidity = (q.ask if intent.side == Side.BUY else q.bid), "taker"
            else:
                price, liquidity = intent.limit_price, "maker"
            self._fill(order, price, liquidity, now)   # raises InsufficientFunds: nothing recorded
        self.orders[client_order_id] = order
        if order.status == OrderStatus.OPEN:
            self._open[client_order_id] = order
        self._dirty_orders.add(client_order_id)
        self._changed()
        return order

    def last_price(self, symbol: str) -> float | None:
        if symbol in self.quotes:
            return self.quotes[symbol].last
        return self.last_prices.get(symbol)

    def _check_rules(self, client_order_id: str, intent: OrderIntent) -> None:
        """Like Bybit: the qty must be on the step and at least the minimum quantity and notional
        (at the limit price, else at the last price)."""
        rules = self.rules.get(intent.symbol)
        if rules is None:
            return
        why = rules.violation(intent.qty, intent.limit_price or self.last_price(intent.symbol))
        if why is not None:
            raise OrderRefused(f"{intent.sleeve} {intent.side} {intent.qty:.12g} {intent.symbol} refused by the "
                               f"trading rules: {why} ({client_order_id})")

    def fetch_order(self, client_order_id: str, sleeve: Sleeve | None = None) -> ExchangeOrder | None:
        order = self.orders.get(client_order_id)
        if order is None and self._lookup is not None:
            order = self._lookup(client_order_id)
        return order

    def open_orders(self) -> list[ExchangeOrder]:
        """Resting orders in the order they were placed (kept apart: no scan of the history)."""
        return list(self._open.values())

    def journal_since(self, seq: int) -> list[tuple[int, str, Any]]:
        """Journal entries numbered above `seq`, oldest first: ("fill", Fill), ("funding",
        FundingPayment) or ("reward", (sleeve, asset, qty))."""
        if seq >= self.journal_seq:             # most syncs: nothing new
            return []
        first = self.journal[0][0] if self.journal else self.journal_seq + 1
        older = self._journal_loader(seq, first) if self._journal_loader and seq + 1 < first else []
        # numbered in order: a binary search, not a scan of every entry at every sync (a full
        # backfill syncs about 31,000 times: the scan was its largest cost)
        return older + self.journal[bisect.bisect_right(self.journal, seq, key=itemgetter(0)):]

    def _journal(self, kind: str, item: Any) -> None:
        self.journal_seq += 1
        self.journal.append((self.journal_seq, kind, item))

    def on_bar(self, ts: datetime, opens: Mapping[str, float],
               only: set[str] | None = None) -> list[ExchangeOrder]:
        """NEXT_OPEN policy: fill resting orders at these opens, spot sells and perp closes first
        (`only`: those client order ids). Returns the orders that changed; one the sleeve cannot
        pay for is rejected with its reason."""
        changed = []
        pending = sorted((o for o in self.open_orders() if only is None or o.client_order_id in only),
                         key=self._opens_exposure)
        for order in pending:
            price = opens.get(order.intent.symbol)
            if price is None:
                continue
            liquidity = "taker" if order.intent.order_type == OrderType.MARKET else "maker"
            try:
                self._fill(order, price, liquidity, ts)
            except InsufficientFunds as exc:
                order.status, order.error = OrderStatus.REJECTED, str(exc)
            if order.status != OrderStatus.OPEN:
                self._open.pop(order.client_order_id, None)
            self._dirty_orders.add(order.client_order_id)
            changed.append(order)
        if changed:
            self._changed()
        return changed

    def fill_at_once(self, ts: datetime, prices: Mapping[str, float], client_order_ids: set[str]) -> None:
        """NEXT_OPEN policy: these resting orders fill now at `prices`, as a venue fills a market
        order when it is sent. A funding settlement's orders: decided at the price the settlement
        is paid at (the day's open, the last price the daily data knows then), they fill there at
        once, as on Bybit, so the position holds from the settlement on and earns the next one."""
        if self.policy == FillPolicy.NEXT_OPEN and client_order_ids:
            self.on_bar(ts, prices, only=set(client_order_ids))

    def _opens_exposure(self, order: ExchangeOrder) -> bool:
        """Sort key of a bar: False (first) for spot sells and perp orders that reduce or close."""
        i = order.intent
        if i.market != Market.PERP:
            return i.side != Side.SELL
        book = self.books.get(i.sleeve)
        pos = book.perps.get(i.symbol) if book is not None else None
        return not (i.reduce_only or (pos is not None and (pos.qty > 0) != (i.side == Side.BUY)))

    def withdrawals_suspended(self) -> list[str]:
        """Assets whose withdrawals are suspended at the venue now (spec 2.4: a halt)."""
        return list(self.suspended)

    def cancel_order(self, client_order_id: str, sleeve: Sleeve | None = None,
                     reason: str = "cancelled") -> ExchangeOrder | None:
        """Cancel one resting order by client order id; the order as it is now (None: unknown).
        An order already filled or cancelled is returned unchanged."""
        order = self._open.pop(client_order_id, None)
        if order is None:
            return self.fetch_order(client_order_id, sleeve)
        order.status, order.error = OrderStatus.CANCELLED, reason
        self._dirty_orders.add(client_order_id)
        self._changed()
        return order

    def cancel_open(self, reason: str) -> list[ExchangeOrder]:
        cancelled = self.open_orders()
        for o in cancelled:
            o.status, o.error = OrderStatus.CANCELLED, reason
            self._open.pop(o.client_order_id, None)
            self._dirty_orders.add(o.client_order_id)
        if cancelled:
            self._changed()
        return cancelled

    def _fill(self, order: ExchangeOrder, price: float, liquidity: str, ts: datetime) -> None:
        """Fill a spot order as Bybit does: a buy pays qty x price USDT and its fee (qty x rate) in
        the coin bought, so the book receives qty - fee coins; a sell's fee is in USDT."""
        if order.intent.market == Market.PERP:
            return self._fill_perp(order, price, liquidity, ts)
        intent, book = order.intent, self.books[order.intent.sleeve]
        rate = self.fees.spot_maker if liquidity == "maker" else self.fees.spot_taker
        qty = intent.qty
        if intent.side == Side.BUY:
            cost = qty * price
            if cost > book.cash + _DUST:
                if not intent.scale_to_cash or book.cash <= 0:
                    raise InsufficientFunds(
                        f"{intent.sleeve} cannot buy {qty:.8g} {intent.symbol} at {price:.8g}: needs "
                        f"{cost:.2f} {QUOTE}, has {book.cash:.2f} ({order.client_order_id})")
                # scaled down to the cash (the fee is paid in the coin) and down to the step
                qty = self._scaled_qty(order, book.cash / price, price)
                if qty * price > book.cash:   # an exact fit rounded up in floats: one step less
                    rules = self.rules.get(intent.symbol)
                    qty = (self._scaled_qty(order, qty - rules.qty_step, price) if rules is not None
                           else math.nextafter(qty, 0.0))
            fee, fee_asset = qty * rate, base_of(intent.symbol)
        else:
            free = book.holdings.get(base_of(intent.symbol), 0.0)
            if qty > free + _DUST:
                raise InsufficientFunds(
                    f"{intent.sleeve} cannot sell {qty:.8g} {intent.symbol}: holds {free:.8g} free "
                    f"({order.client_order_id})")
            if qty > free:
                qty = self._scaled_qty(order, free, price)
            fee, fee_asset = qty * price * rate, QUOTE
        fill = Fill(order.client_order_id, utc(ts), intent.sleeve, intent.symbol, intent.market,
                    intent.side, qty, price, fee, fee_asset, liquidity,
                    trade_id=f"{order.exchange_order_id}-{len(order.fills) + 1}", reason=intent.reason)
        ledger.apply_fill(book, fill)
        self._record_fill(order, fill)

    def _scaled_qty(self, order: ExchangeOrder, qty: float, price: float) -> float:
        """`qty` (what the cash or the holding allows) down to the step; InsufficientFunds when
        that is under the symbol's minimum (Bybit would refuse the order for the balance)."""
        rules = self.rules.get(order.intent.symbol)
        if rules is None:
            return qty
        floored = rules.floor_qty(qty)
        # under one step there is nothing to judge: `why` must exist for the message either way
        why = rules.violation(floored, price) if floored > 0 else None
        if floored <= 0 or why is not None:
            i = order.intent
            raise InsufficientFunds(f"{i.sleeve} {i.side} {i.qty:.8g} {i.symbol}: the balance covers only "
                                    f"{qty:.8g} at {price:.8g}, under the trading rules "
                                    f"({why or 'under one step'}) ({order.client_order_id})")
        return floored

    def _record_fill(self, order: ExchangeOrder, fill: Fill) -> None:
        order.fills.append(fill)
        order.filled_qty += fill.qty
        order.fee += fill.fee
        order.status = OrderStatus.FILLED
        self._journal("fill", fill)

    def _apply(self, book: SleeveBook, fill: Fill) -> None:
        """Book a perp fill; a position that closes or flips loses its stop."""
        before = book.perps.get(fill.symbol)
        was_long = before is not None and before.qty > 0
        ledger.apply_fill(book, fill)
        after = book.perps.get(fill.symbol)
        if before is not None and (after is None or (after.qty > 0) != was_long):
            self.stops.pop((book.sleeve, fill.symbol), None)

    # perps: leverage, stops, liquidations, funding --------------------------------------------
    # staking ---------------------------------------------------------------------------------
    def stake(self, sleeve: Sleeve, asset: str, qty: float, key: str | None = None) -> float:
        """Stake (qty > 0) or unstake; a keyed request is applied once, a repeat returns the
        qty moved the first time (like an order's client id)."""
        if key is not None and key in self.stake_ops:
            return self.stake_ops[key]
        moved = ledger.stake(self.books[sleeve], asset, qty)
        if key is not None:
            self.stake_ops[key] = moved
            self._new_keys[key] = moved
        self._changed()
        return moved

    def transfer(self, t: Transfer, key: str | None = None) -> None:
        """Move money between two sleeves' accounts (a sub-account transfer on a real venue); a
        keyed transfer is made once, a repeat of the key is a no-op."""
        if key is not None:
            if key in self.stake_ops:
                return
            self.stake_ops[key] = t.qty
            self._new_keys[key] = t.qty
        for sleeve in (t.from_sleeve, t.to_sleeve):
            if sleeve is not None:
                self.books.setdefault(sleeve, SleeveBook(sleeve))
        ledger.apply_transfer(self.books, t)
        self._changed()

    # the venue living through time (paper only: a real venue does this by itself) -------------
    def on_market(self, key: str, ts: datetime, *, opens: Mapping[str, float] | None = None,
                  bars: Mapping[str, Bar] | None = None,
                  settlements: Mapping[str, tuple[float, float]] | None = None,
                  staking_apy: float | None = None, prices: Mapping[str, float] | None = None) -> bool:
        """Live through one market event, once: `key` orders events (ISO time | rank) and one at or
        before `market_clock` changes nothing (returns False: a re-run after a crash).
        `opens` (symbol -> open): resting orders fill there (`on_bar`). `bars` (perp symbol ->
        (open, high, low)) of a day that closed: stops, then liquidations, then a day of staking
        rewards at `staking_apy`. `settlements` (perp symbol -> (rate, price)): funding paid.
        `prices` (symbol -> price): the last prices from this event on (minimum notionals)."""
        if self.market_clock is not None and key <= self.market_clock:
            return False
        self.last_prices.update(prices or {})
        if opens:
            self.on_bar(ts, opens)
        if bars:
            self.check_stops(ts, bars)
            self.check_liquidations(ts, bars)
        if staking_apy:
            for sleeve, book in sorted(self.books.items()):
                if book.staked.get("ETH"):
                    self._journal("reward", (sleeve, "ETH", ledger.accrue_staking(book, "ETH", staking_apy)))
        for symbol, (rate, price) in sorted((settlements or {}).items()):
            self.settle_funding(ts, symbol, rate, price)
        self.market_clock = key
        self._changed()
        return True

    def persist_now(self) -> None:
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self)

    # persistence -----------------------------------------------------------------------------
    def to_doc(self) -> dict[str, Any]:
        """The exchange's small state (books, leverage, stops, counters), without the growing
        parts (orders, keyed operations, fills), which a store keeps in rows."""
        return {
            "seq": self._seq,
            "books": {s.value: {"cash": b.cash, "holdings": dict(b.holdings), "staked": dict(b.staked),
                                "perps": {sym: _position_to_dict(p) for sym, p in b.perps.items()}}
                      for s, b in self.books.items()},
            "leverage": [[s.value, sym, lev] for (s, sym), lev in self.leverage.items()],
            "stops": [[s.value, sym, lv.price, lv.reason] for (s, sym), lv in self.stops.items()],
            "funding_last": {sym: {"ts": ts.isoformat(), "payments": [_payment_to_dict(p) for p in paid]}
                             for sym, (ts, paid) in self.funding_last.items()},
            "journal_seq": self.journal_seq,
            "market_clock": self.market_clock,
            "last_prices": dict(self.last_prices),
            "suspended": list(self.suspended),
        }

    def to_state(self) -> dict[str, Any]:
        return {**self.to_doc(), "stake_ops": dict(self.stake_ops),
                "orders": {cid: _order_to_dict(o) for cid, o in self.orders.items()},
                "events_fills": [_fill_to_dict(f) for f in self.events_fills]}

    @classmethod
    def from_state(cls, state: dict[str, Any], fees: FeeParams, policy: FillPolicy,
                   on_change: Callable[[PaperExchange], None] | None = None) -> PaperExchange:
        books = {Sleeve(s): SleeveBook(Sleeve(s), b["cash"], dict(b["holdings"]), dict(b["staked"]),
                                       {sym: _position_from_dict(sym, p) for sym, p in b.get("perps", {}).items()})
                 for s, b in state.get("books", {}).items()}
        ex = cls(fees, policy, books, on_change)
        ex._seq = state.get("seq", 0)
        ex.stake_ops = dict(state.get("stake_ops", {}))
        ex.orders = {cid: _order_from_dict(cid, d) for cid, d in state.get("orders", {}).items()}
        ex.leverage |= {(Sleeve(s), sym): lev for s, sym, lev in state.get("leverage", [])}
        ex.stops = {(Sleeve(s), sym): StopLevel(price, reason) for s, sym, price, reason in state.get("stops", [])}
        ex.events_fills = [_fill_from_dict(f) for f in state.get("events_fills", [])]
        ex.funding_last = {sym: (utc(v["ts"]), tuple(_payment_from_dict(p) for p in v["payments"]))
                           for sym, v in state.get("funding_last", {}).items()}
        ex.journal_seq = state.get("journal_seq", 0)
        ex.market_clock = state.get("market_clock")
        ex.last_prices = dict(state.get("last_prices", {}))
        ex.suspended = list(state.get("suspended", []))
        ex._open = {cid: o for cid, o in ex.orders.items() if o.status == OrderStatus.OPEN}
        return ex
