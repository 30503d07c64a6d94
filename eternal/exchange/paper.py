"""The paper exchange: deterministic fills against given prices, one book per sleeve.

Two fill policies, one code path:
* IMMEDIATE (paper mode, like live): a market order fills at the current price; a post-only
  limit fills at its limit price (the touch is assumed to trade).
* NEXT_OPEN (replay): every order rests until `on_bar` hands over the next daily open; limits
  then fill at that open at the maker fee, market orders at the taker fee (spec, replay rules).
Sells fill before buys in a bar, so a rebalance's sales pay for its purchases; perp orders that
reduce or close a position fill before those that open one, so a close frees its margin first.

Perpetuals (USDT-margined, one-way, cross margin within a sleeve): leverage per (sleeve, symbol)
up to 2x, position stops checked against daily bars (`check_stops`), liquidations
(`check_liquidations`), funding settlements (`settle_funding`) and `close_all`. The fills these
produce are kept in `events_fills` (unique trade ids), for our own ledger to book with
`ledger.apply_fill`; in one bar call `on_bar`, then `check_stops`, then `check_liquidations`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

from eternal import ledger
from eternal.config import FeeParams
from eternal.errors import DuplicateOrder, ExchangeError, InsufficientFunds
from eternal.exchange.base import ExchangeOrder
from eternal.models import (
    PERP_SYMBOLS,
    QUOTE,
    SPOT_SYMBOLS,
    ExitReason,
    Fill,
    FundingPayment,
    Market,
    OrderIntent,
    OrderStatus,
    OrderType,
    PerpPosition,
    Quote,
    Side,
    Sleeve,
    SleeveBook,
    StopLevel,
    base_of,
    utc,
)

_DUST = 1e-12
_CLOSE_TOLERANCE = 1e-9      # a closing qty this close (relative) to the position closes it all
MAX_LEVERAGE = 2.0           # the spec's hard cap on any perp position
Bar = tuple[float, float, float]   # (open, high, low) of one daily candle


class FillPolicy(StrEnum):
    IMMEDIATE = "immediate"
    NEXT_OPEN = "next_open"


class PaperExchange:
    name = "paper"

    def __init__(self, fees: FeeParams, policy: FillPolicy = FillPolicy.IMMEDIATE,
                 books: Mapping[Sleeve, SleeveBook] | None = None,
                 on_change: Callable[[PaperExchange], None] | None = None):
        self.fees = fees
        self.policy = policy
        self.books: dict[Sleeve, SleeveBook] = {s: b.copy() for s, b in (books or {}).items()}
        self.orders: dict[str, ExchangeOrder] = {}
        self.quotes: dict[str, Quote] = {}
        self._on_change = on_change   # persists the exchange's own state (survives our crashes)
        self._seq = 0
        self.accrued_through: str | None = None   # staking rewards paid up to this day
        self.stake_ops: dict[str, float] = {}     # keyed stake requests already applied
        # perps: leverage per (sleeve, symbol), default 1x; positions handed over keep theirs
        self.leverage: dict[tuple[Sleeve, str], float] = {
            (s, sym): p.leverage for s, b in self.books.items() for sym, p in b.perps.items()}
        self.stops: dict[tuple[Sleeve, str], StopLevel] = {}
        self.events_fills: list[Fill] = []        # fills of stops, liquidations and close_all
        self.funding_last: dict[str, dict[str, Any]] = {}   # symbol -> last settlement and its payments

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
        self._changed()
        return order

    def fetch_order(self, client_order_id: str, sleeve: Sleeve | None = None) -> ExchangeOrder | None:
        return self.orders.get(client_order_id)

    def open_orders(self) -> list[ExchangeOrder]:
        return [o for o in self.orders.values() if o.status == OrderStatus.OPEN]

    def on_bar(self, ts: datetime, opens: Mapping[str, float]) -> list[ExchangeOrder]:
        """NEXT_OPEN policy: fill resting orders at these opens, spot sells and perp closes first.
        Returns the orders that changed; one the sleeve cannot pay for is rejected with its reason."""
        changed = []
        pending = sorted(self.open_orders(), key=self._opens_exposure)
        for order in pending:
            price = opens.get(order.intent.symbol)
            if price is None:
                continue
            liquidity = "taker" if order.intent.order_type == OrderType.MARKET else "maker"
            try:
                self._fill(order, price, liquidity, ts)
            except InsufficientFunds as exc:
                order.status, order.error = OrderStatus.REJECTED, str(exc)
            changed.append(order)
        if changed:
            self._changed()
        return changed

    def _opens_exposure(self, order: ExchangeOrder) -> bool:
        """Sort key of a bar: False (first) for spot sells and perp orders that reduce or close."""
        i = order.intent
        if i.market != Market.PERP:
            return i.side != Side.SELL
        book = self.books.get(i.sleeve)
        pos = book.perps.get(i.symbol) if book is not None else None
        return not (i.reduce_only or (pos is not None and (pos.qty > 0) != (i.side == Side.BUY)))

    def cancel_open(self, reason: str) -> list[ExchangeOrder]:
        cancelled = self.open_orders()
        for o in cancelled:
            o.status, o.error = OrderStatus.CANCELLED, reason
        if cancelled:
            self._changed()
        return cancelled

    def _fill(self, order: ExchangeOrder, price: float, liquidity: str, ts: datetime) -> None:
        if order.intent.market == Market.PERP:
            return self._fill_perp(order, price, liquidity, ts)
        intent, book = order.intent, self.books[order.intent.sleeve]
        rate = self.fees.spot_maker if liquidity == "maker" else self.fees.spot_taker
        qty, scaled = intent.qty, False
        if intent.side == Side.BUY:
            cost = qty * price * (1.0 + rate)
            if cost > book.cash + _DUST:
                if not intent.scale_to_cash or book.cash <= 0:
                    raise InsufficientFunds(
                        f"{intent.sleeve} cannot buy {qty:.8g} {intent.symbol} at {price:.8g}: needs "
                        f"{cost:.2f} {QUOTE} with fees, has {book.cash:.2f} ({order.client_order_id})")
                qty = book.cash / (price * (1.0 + rate))   # scaled down to the cash, fees included
                scaled = True
        else:
            free = book.holdings.get(base_of(intent.symbol), 0.0)
            if qty > free + _DUST:
                raise InsufficientFunds(
                    f"{intent.sleeve} cannot sell {qty:.8g} {intent.symbol}: holds {free:.8g} free "
                    f"({order.client_order_id})")
            qty = min(qty, free)
        notional = qty * price
        # a scaled buy spends the cash exactly: its fee is the remainder (notional x rate to an ulp),
        # so float rounding can never leave the cash a hair below zero
        fee = book.cash - notional if scaled else notional * rate
        fill = Fill(order.client_order_id, utc(ts), intent.sleeve, intent.symbol, intent.market,
                    intent.side, qty, price, fee, QUOTE, liquidity,
                    trade_id=f"{order.exchange_order_id}-{len(order.fills) + 1}", reason=intent.reason)
        ledger.apply_fill(book, fill)
        self._record_fill(order, fill)

    def _fill_perp(self, order: ExchangeOrder, price: float, liquidity: str, ts: datetime) -> None:
        """A perp fill: reduce-only capped at the position (refused when it would open or add),
        an opening part paid from cash (margin + fee), a crossing order closes then opens."""
        intent, book = order.intent, self.books[order.intent.sleeve]
        rate = self.fees.perp_maker if liquidity == "maker" else self.fees.perp_taker
        pos = book.perps.get(intent.symbol)
        closing = pos is not None and (pos.qty > 0) != (intent.side == Side.BUY)
        size = abs(pos.qty) if closing else 0.0
        qty = intent.qty
        if intent.reduce_only:
            if not closing:
                held = f"holds {pos.qty:+.8g}" if pos is not None else "holds no position"
                order.status = OrderStatus.REJECTED
                order.error = (f"{intent.sleeve} reduce-only {intent.side} {qty:.8g} {intent.symbol} refused: "
                               f"it would open or increase a position ({held}) ({order.client_order_id})")
                return
            qty = min(qty, size)                     # capped at the position (like Bybit)
        elif closing and abs(qty - size) <= _CLOSE_TOLERANCE * size:
            qty = size                               # a close computed in floats leaves no dust flip
        opening = qty - min(qty, size)
        lev = self.leverage.get((intent.sleeve, intent.symbol), 1.0) if opening > 0 else pos.leverage
        fill = self._perp_fill(order, qty, price, qty * price * rate, liquidity, ts, lev)
        if opening > 0:
            trial = book.copy()
            ledger.apply_fill(trial, fill)
            if trial.cash < -_DUST:
                if not (intent.scale_to_cash and not closing and book.cash > 0):
                    need = opening * price / lev + fill.fee
                    raise InsufficientFunds(
                        f"{intent.sleeve} cannot {intent.side} {qty:.8g} {intent.symbol} at {price:.8g} "
                        f"({lev:g}x): needs {need:.2f} {QUOTE} margin with fees, has {trial.cash + need:.2f}"
                        f"{' after closing' if closing else ''} ({order.client_order_id})")
                # scaled down so that margin + fee spend the cash exactly (the fee is the remainder)
                qty = book.cash / (price * (1.0 / lev + rate))
                fee = book.cash - qty * price / lev
                fill = self._perp_fill(order, qty, price, fee, liquidity, ts, lev)
        self._apply(book, fill)
        self._record_fill(order, fill)

    def _perp_fill(self, order: ExchangeOrder, qty: float, price: float, fee: float, liquidity: str,
                   ts: datetime, leverage: float) -> Fill:
        i = order.intent
        return Fill(order.client_order_id, utc(ts), i.sleeve, i.symbol, Market.PERP, i.side, qty, price, fee,
                    QUOTE, liquidity, trade_id=f"{order.exchange_order_id}-{len(order.fills) + 1}",
                    reason=i.reason, leverage=leverage)

    @staticmethod
    def _record_fill(order: ExchangeOrder, fill: Fill) -> None:
        order.fills.append(fill)
        order.filled_qty += fill.qty
        order.fee += fill.fee
        order.status = OrderStatus.FILLED

    def _apply(self, book: SleeveBook, fill: Fill) -> None:
        """Book a perp fill; a position that closes or flips loses its stop."""
        before = book.perps.get(fill.symbol)
        was_long = before is not None and before.qty > 0
        ledger.apply_fill(book, fill)
        after = book.perps.get(fill.symbol)
        if before is not None and (after is None or (after.qty > 0) != was_long):
            self.stops.pop((book.sleeve, fill.symbol), None)

    # perps: leverage, stops, liquidations, funding --------------------------------------------
    def set_leverage(self, sleeve: Sleeve, symbol: str, leverage: float) -> None:
        """Leverage of the sleeve's `symbol` for the fills to come (margin = notional / leverage).
        Capped at 2x; refused while a position is open at another leverage (close it first), so a
        position's margin is always its notional at entry over one leverage."""
        if not 0 < leverage <= MAX_LEVERAGE:
            raise ExchangeError(f"leverage {leverage!r} for {sleeve} {symbol} refused: it must be above 0 "
                                f"and at most {MAX_LEVERAGE:g}x (spec cap)")
        self._check_perp(sleeve, symbol)
        pos = self.books[sleeve].perps.get(symbol)
        if pos is not None and pos.leverage != leverage:
            raise ExchangeError(f"{sleeve} holds {pos.qty:+.8g} {symbol} at {pos.leverage:g}x: close it "
                                f"before setting {leverage:g}x")
        self.leverage[(sleeve, symbol)] = float(leverage)
        self._changed()

    def leverage_of(self, sleeve: Sleeve, symbol: str) -> float:
        return self.leverage.get((sleeve, symbol), 1.0)

    def set_stop(self, sleeve: Sleeve, symbol: str, level: StopLevel | None) -> None:
        """The position's one stop (like Bybit's trading-stop), replaced on every call; None clears
        it. A stop set before its entry fills (NEXT_OPEN) guards the position from that fill on.
        It is dropped when the position closes or flips."""
        self._check_perp(sleeve, symbol)
        if level is None:
            self.stops.pop((sleeve, symbol), None)
        else:
            if not level.price > 0:
                raise ExchangeError(f"stop {level.price!r} for {sleeve} {symbol} refused: it must be positive")
            self.stops[(sleeve, symbol)] = level
        self._changed()

    def check_stops(self, ts: datetime, bars: Mapping[str, Bar],
                    maintenance: float = ledger.MAINTENANCE_MARGIN,
                    prices: Mapping[str, float] | None = None) -> list[Fill]:
        """Stops hit by these daily bars (symbol -> (open, high, low)) exit the whole position at
        the taker fee: a long whose low reaches its stop at min(open, stop), a short whose high
        reaches it at max(open, stop) (a gap through the stop fills at the open). A stop beyond
        the liquidation price is left to `check_liquidations`: the liquidation comes first."""
        fills = []
        for (sleeve, symbol), level in sorted(self.stops.items()):
            book = self.books.get(sleeve)
            pos = book.perps.get(symbol) if book is not None else None
            bar = bars.get(symbol)
            if pos is None or bar is None:
                continue
            open_, high, low = bar
            try:
                liq = ledger.liquidation(book, symbol, _opens(bars), maintenance, self._spot_prices(bars, prices))
            except ValueError:        # another holding has no price: the stop alone decides
                liq = None
            if pos.qty > 0 and low <= level.price:
                if liq is not None and liq[1] and level.price < liq[0]:
                    continue
                price = min(open_, level.price)
            elif pos.qty < 0 and high >= level.price:
                if liq is not None and not liq[1] and level.price > liq[0]:
                    continue
                price = max(open_, level.price)
            else:
                continue
            fills.append(self._exit(book, pos, price, ts, "stop", level.reason))
        if fills:
            self._changed()
        return fills

    def check_liquidations(self, ts: datetime, bars: Mapping[str, Bar],
                           maintenance: float = ledger.MAINTENANCE_MARGIN,
                           prices: Mapping[str, float] | None = None) -> list[Fill]:
        """Positions whose bar crosses their liquidation price (`ledger.liquidation_price`, the
        sleeve's other positions at their bar opens) are closed at that price, or at the open when
        the bar opened beyond it, at the taker fee with reason 'liquidation'. `prices`: asset ->
        spot price of spot holdings (default: the open of the asset's perp bar)."""
        fills = []
        spot = self._spot_prices(bars, prices)
        for sleeve, book in self.books.items():          # validate first: no half-applied bar
            for symbol in book.perps:
                if symbol in bars:
                    try:
                        ledger.liquidation(book, symbol, _opens(bars), maintenance, spot)
                    except ValueError as exc:
                        raise ExchangeError(f"cannot check {sleeve} {symbol} for liquidation: {exc}") from None
        for sleeve in sorted(self.books):
            book = self.books[sleeve]
            for symbol in sorted(book.perps):
                pos, bar = book.perps[symbol], bars.get(symbol)
                if bar is None:
                    continue
                open_, high, low = bar
                liq = ledger.liquidation(book, symbol, _opens(bars), maintenance, spot)
                if liq is None:
                    continue
                price, falling = liq
                if falling and low <= price:
                    fills.append(self._exit(book, pos, min(open_, price), ts, "liq", ExitReason.LIQUIDATION))
                elif not falling and high >= price:
                    fills.append(self._exit(book, pos, max(open_, price), ts, "liq", ExitReason.LIQUIDATION))
        if fills:
            self._changed()
        return fills

    def close_all(self, ts: datetime, prices: Mapping[str, float],
                  reason: str = ExitReason.END) -> list[Fill]:
        """Close every perp position of every sleeve at `prices` (perp symbol -> price), taker fee
        (a backfill's end). Refused, changing nothing, when a held symbol has no price."""
        missing = sorted({s for b in self.books.values() for s in b.perps if s not in prices})
        if missing:
            raise ExchangeError(f"close_all needs a price for every open perp, missing {missing}")
        fills = [self._exit(self.books[s], self.books[s].perps[sym], prices[sym], ts, "end", reason)
                 for s in sorted(self.books) for sym in sorted(self.books[s].perps)]
        if fills:
            self._changed()
        return fills

    def settle_funding(self, ts: datetime, symbol: str, rate: float, price: float) -> list[FundingPayment]:
        """One funding settlement for every sleeve holding `symbol` (a long pays rate x qty x price,
        a short receives it). Settlements go in time order; repeating the last one pays nothing
        again and returns its payments (a retried task), an older one is refused."""
        ts = utc(ts)
        last = self.funding_last.get(symbol)
        if last is not None:
            last_ts = utc(last["ts"])
            if ts == last_ts:
                return [_payment_from_dict(p) for p in last["payments"]]
            if ts < last_ts:
                raise ExchangeError(f"funding of {symbol} at {ts.isoformat()} is older than the last "
                                    f"settlement ({last_ts.isoformat()}): settle in time order")
        payments = [p for s in sorted(self.books)
                    if (p := ledger.settle_funding(self.books[s], symbol, rate, price, ts)) is not None]
        self.funding_last[symbol] = {"ts": ts.isoformat(), "payments": [_payment_to_dict(p) for p in payments]}
        self._changed()
        return payments

    def _exit(self, book: SleeveBook, pos: PerpPosition, price: float, ts: datetime, kind: str,
              reason: str) -> Fill:
        """Close a whole position outside any order of ours (stop, liquidation, end)."""
        self._seq += 1
        ts = utc(ts)
        qty = abs(pos.qty)
        fill = Fill(f"{kind}-{book.sleeve.value}-{base_of(pos.symbol)}-{ts:%y%m%d%H%M}", ts, book.sleeve,
                    pos.symbol, Market.PERP, Side.SELL if pos.qty > 0 else Side.BUY, qty, price,
                    qty * price * self.fees.perp_taker, QUOTE, "taker", trade_id=f"paper-{self._seq}-1",
                    reason=str(reason), leverage=pos.leverage)
        self._apply(book, fill)
        self.events_fills.append(fill)
        return fill

    def _check_perp(self, sleeve: Sleeve, symbol: str) -> None:
        if sleeve not in self.books:
            raise ExchangeError(f"paper exchange has no account for sleeve {sleeve}")
        if symbol not in PERP_SYMBOLS.values():
            raise ExchangeError(f"paper exchange has no perpetual {symbol} "
                                f"(trades {', '.join(PERP_SYMBOLS.values())})")

    def _spot_prices(self, bars: Mapping[str, Bar], prices: Mapping[str, float] | None) -> dict[str, float]:
        """asset -> price for valuing spot holdings: given prices, else the perp bar's open, else
        the last spot quote."""
        out = {a: q.last for a, s in SPOT_SYMBOLS.items() if (q := self.quotes.get(s)) is not None}
        out |= {base_of(s): bar[0] for s, bar in bars.items()}
        return out | dict(prices or {})

    # staking ---------------------------------------------------------------------------------
    def stake(self, sleeve: Sleeve, asset: str, qty: float, key: str | None = None) -> float:
        """Stake (qty > 0) or unstake; a keyed request is applied once, a repeat returns the
        qty moved the first time (like an order's client id)."""
        if key is not None and key in self.stake_ops:
            return self.stake_ops[key]
        moved = ledger.stake(self.books[sleeve], asset, qty)
        if key is not None:
            self.stake_ops[key] = moved
        self._changed()
        return moved

    def persist_now(self) -> None:
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self)

    # persistence -----------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        return {
            "seq": self._seq,
            "accrued_through": self.accrued_through,
            "stake_ops": dict(self.stake_ops),
            "books": {s.value: {"cash": b.cash, "holdings": dict(b.holdings), "staked": dict(b.staked),
                                "perps": {sym: _position_to_dict(p) for sym, p in b.perps.items()}}
                      for s, b in self.books.items()},
            "orders": {cid: _order_to_dict(o) for cid, o in self.orders.items()},
            "leverage": [[s.value, sym, lev] for (s, sym), lev in self.leverage.items()],
            "stops": [[s.value, sym, lv.price, lv.reason] for (s, sym), lv in self.stops.items()],
            "events_fills": [_fill_to_dict(f) for f in self.events_fills],
            "funding_last": {sym: dict(v) for sym, v in self.funding_last.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], fees: FeeParams, policy: FillPolicy,
                   on_change: Callable[[PaperExchange], None] | None = None) -> PaperExchange:
        books = {Sleeve(s): SleeveBook(Sleeve(s), b["cash"], dict(b["holdings"]), dict(b["staked"]),
                                       {sym: _position_from_dict(sym, p) for sym, p in b.get("perps", {}).items()})
                 for s, b in state.get("books", {}).items()}
        ex = cls(fees, policy, books, on_change)
        ex._seq = state.get("seq", 0)
        ex.accrued_through = state.get("accrued_through")
        ex.stake_ops = dict(state.get("stake_ops", {}))
        ex.orders = {cid: _order_from_dict(cid, d) for cid, d in state.get("orders", {}).items()}
        ex.leverage |= {(Sleeve(s), sym): lev for s, sym, lev in state.get("leverage", [])}
        ex.stops = {(Sleeve(s), sym): StopLevel(price, reason) for s, sym, price, reason in state.get("stops", [])}
        ex.events_fills = [_fill_from_dict(f) for f in state.get("events_fills", [])]
        ex.funding_last = {sym: dict(v) for sym, v in state.get("funding_last", {}).items()}
        return ex


def _opens(bars: Mapping[str, Bar]) -> dict[str, float]:
    return {s: bar[0] for s, bar in bars.items()}


def _position_to_dict(p: PerpPosition) -> dict[str, Any]:
    return {"qty": p.qty, "entry_price": p.entry_price, "margin": p.margin, "leverage": p.leverage,
            "opened_at": p.opened_at.isoformat()}


def _position_from_dict(symbol: str, d: dict[str, Any]) -> PerpPosition:
    return PerpPosition(symbol, d["qty"], d["entry_price"], d["margin"], d["leverage"], utc(d["opened_at"]))


def _fill_to_dict(f: Fill) -> dict[str, Any]:
    return {"client_order_id": f.client_order_id, "ts": f.ts.isoformat(), "sleeve": f.sleeve.value,
            "symbol": f.symbol, "market": f.market.value, "side": f.side.value, "qty": f.qty, "price": f.price,
            "fee": f.fee, "fee_asset": f.fee_asset, "liquidity": f.liquidity, "trade_id": f.trade_id,
            "reason": f.reason, "leverage": f.leverage}


def _fill_from_dict(d: dict[str, Any]) -> Fill:
    return Fill(d["client_order_id"], utc(d["ts"]), Sleeve(d["sleeve"]), d["symbol"], Market(d["market"]),
                Side(d["side"]), d["qty"], d["price"], d["fee"], d["fee_asset"], d["liquidity"], d["trade_id"],
                d["reason"], d["leverage"])


def _payment_to_dict(p: FundingPayment) -> dict[str, Any]:
    return {"ts": p.ts.isoformat(), "sleeve": p.sleeve.value, "symbol": p.symbol, "qty": p.qty,
            "price": p.price, "rate": p.rate, "amount": p.amount, "expected": p.expected}


def _payment_from_dict(d: dict[str, Any]) -> FundingPayment:
    return FundingPayment(utc(d["ts"]), Sleeve(d["sleeve"]), d["symbol"], d["qty"], d["price"], d["rate"],
                          d["amount"], d["expected"])


def _intent_to_dict(i: OrderIntent) -> dict[str, Any]:
    return {"sleeve": i.sleeve.value, "symbol": i.symbol, "market": i.market.value, "side": i.side.value,
            "qty": i.qty, "order_type": i.order_type.value, "reason": i.reason, "key": i.key,
            "limit_price": i.limit_price, "post_only": i.post_only, "reduce_only": i.reduce_only,
            "scale_to_cash": i.scale_to_cash}


def intent_from_dict(d: dict[str, Any]) -> OrderIntent:
    return OrderIntent(Sleeve(d["sleeve"]), d["symbol"], Market(d["market"]), Side(d["side"]),
                       d["qty"], OrderType(d["order_type"]), d["reason"], d["key"], d["limit_price"],
                       d["post_only"], d["reduce_only"], d["scale_to_cash"])


def _order_to_dict(o: ExchangeOrder) -> dict[str, Any]:
    return {"exchange_order_id": o.exchange_order_id, "intent": _intent_to_dict(o.intent),
            "status": o.status.value, "created": o.created.isoformat(), "filled_qty": o.filled_qty,
            "fee": o.fee, "error": o.error,
            "fills": [{"ts": f.ts.isoformat(), "qty": f.qty, "price": f.price, "fee": f.fee,
                       "fee_asset": f.fee_asset, "liquidity": f.liquidity, "trade_id": f.trade_id,
                       "leverage": f.leverage}
                      for f in o.fills]}


def _order_from_dict(cid: str, d: dict[str, Any]) -> ExchangeOrder:
    i = intent_from_dict(d["intent"])
    fills = [Fill(cid, utc(f["ts"]), i.sleeve, i.symbol, i.market, i.side, f["qty"], f["price"],
                  f["fee"], f["fee_asset"], f["liquidity"], f["trade_id"], i.reason, f.get("leverage", 1.0))
             for f in d["fills"]]
    return ExchangeOrder(cid, d["exchange_order_id"], i, OrderStatus(d["status"]), utc(d["created"]),
                         d["filled_qty"], d["fee"], fills, d["error"])
