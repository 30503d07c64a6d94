"""Perpetuals on the paper exchange: leverage, position stops, liquidations, funding, close-all.

USDT-margined, one-way, cross margin within a sleeve; leverage per (sleeve, symbol) up to 2x. The
fills that stops, liquidations and `close_all` produce are kept in `events_fills` (unique trade
ids) for our own ledger to book with `ledger.apply_fill`. A mixin of `PaperExchange`: it uses the
exchange's books, fees, quotes and persistence.
"""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from eternal import ledger
from eternal.errors import ExchangeError, InsufficientFunds
from eternal.exchange.base import ExchangeOrder
from eternal.models import (
    PERP_SYMBOLS,
    QUOTE,
    SPOT_SYMBOLS,
    ExitReason,
    Fill,
    FundingPayment,
    Market,
    OrderStatus,
    PerpPosition,
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


class PerpDesk:
    """Perp methods of PaperExchange (which provides books, fees, quotes, leverage, stops, ...)."""

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
        if closing and abs(qty - size) <= _CLOSE_TOLERANCE * size:
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
                # scaled down to the cash (margin + fee) and to the step; never above the cash
                qty = self._scaled_qty(order, book.cash / (price * (1.0 / lev + rate)), price)
                fee = min(qty * price * rate, book.cash - qty * price / lev)
                fill = self._perp_fill(order, qty, price, fee, liquidity, ts, lev)
        self._apply(book, fill)
        self._record_fill(order, fill)

    def _perp_fill(self, order: ExchangeOrder, qty: float, price: float, fee: float, liquidity: str,
                   ts: datetime, leverage: float) -> Fill:
        i = order.intent
        return Fill(order.client_order_id, utc(ts), i.sleeve, i.symbol, Market.PERP, i.side, qty, price, fee,
                    QUOTE, liquidity, trade_id=f"{order.exchange_order_id}-{len(order.fills) + 1}",
                    reason=i.reason, leverage=leverage)

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
            last_ts, paid = last
            if ts == last_ts:
                return list(paid)
            if ts < last_ts:
                raise ExchangeError(f"funding of {symbol} at {ts.isoformat()} is older than the last "
                                    f"settlement ({last_ts.isoformat()}): settle in time order")
        # only positions held at the settlement take part (one opened at 00:05 skips 00:00)
        holders = [s for s, b in self.books.items() if symbol in b.perps]     # most settlements: none or one
        payments = [p for s in sorted(holders)
                    if (pos := self.books[s].perps.get(symbol)) is not None and utc(pos.opened_at) <= ts
                    and (p := ledger.settle_funding(self.books[s], symbol, rate, price, ts)) is not None]
        # kept as objects (made into JSON only when the exchange's state is stored: `to_doc`)
        self.funding_last[symbol] = (ts, tuple(payments))
        for p in payments:
            self._journal("funding", p)
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
        self._journal("fill", fill)
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


def _opens(bars: Mapping[str, Bar]) -> dict[str, float]:
    return {s: bar[0] for s, bar in bars.items()}
