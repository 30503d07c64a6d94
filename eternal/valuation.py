"""The one valuation of the portfolio: what every number an operator reads is computed from.

A sleeve is worth its cash, its spot coins (free and staked) at the day's close, and each perp
position at its mark: the margin it holds plus its unrealised P&L. `SleeveBook.equity`, the
driver's equity records, the breakers' NAV, the daily artifact and `eternal status` all go through
`value_book`, so they agree to the cent. A perp without a mark is refused, never valued at the
spot close of its coin (a basis of a few tenths of a percent on a hedged FUNDING book is most of
its P&L). Pure: no I/O, no clock.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from eternal.errors import EternalError
from eternal.models import Sleeve, SleeveBook, StopLevel


class ValuationError(EternalError):
    """A holding that cannot be valued: no price or mark for it."""


@dataclass(frozen=True, slots=True)
class SpotLine:
    asset: str
    free: float
    staked: float
    price: float                    # the day's close (USDT)

    @property
    def qty(self) -> float:
        return self.free + self.staked

    @property
    def value_usdt(self) -> float:
        return self.qty * self.price


@dataclass(frozen=True, slots=True)
class PerpLine:
    symbol: str
    qty: float                      # signed: + long, - short
    entry_price: float
    mark: float
    margin: float                   # USDT held as initial margin
    leverage: float
    stop: StopLevel | None = None   # the resting stop kept for it, if any

    @property
    def notional_usdt(self) -> float:
        return abs(self.qty) * self.mark

    @property
    def unrealised(self) -> float:
        return (self.mark - self.entry_price) * self.qty

    @property
    def value_usdt(self) -> float:
        """What the position adds to the sleeve's equity: its margin and its unrealised P&L."""
        return self.margin + self.unrealised


@dataclass(frozen=True, slots=True)
class SleeveValue:
    """One sleeve's lines; `spot_usdt` (its coins) and `equity` (cash + coins + each perp's margin
    and unrealised P&L), USDT, are summed once, with it (a close reads them several times)."""

    sleeve: Sleeve
    cash: float
    spot: tuple[SpotLine, ...]
    perps: tuple[PerpLine, ...]
    spot_usdt: float = field(init=False, repr=False, compare=False)
    equity: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        spot_usdt = sum(line.value_usdt for line in self.spot)
        value = self.cash + spot_usdt
        for line in self.perps:
            value += line.value_usdt
        object.__setattr__(self, "spot_usdt", spot_usdt)
        object.__setattr__(self, "equity", value)


@dataclass(frozen=True)
class Valuation:
    """The portfolio at one close: per sleeve its lines, and each sleeve's weight against its target."""

    day: datetime
    sleeves: dict[Sleeve, SleeveValue]
    targets: dict[Sleeve, float]
    pnl_today: dict[Sleeve, float] = field(default_factory=dict)    # none: no close before this one
    pnl_since_start: dict[Sleeve, float] = field(default_factory=dict)
    capital_in: dict[Sleeve, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return math.fsum(v.equity for v in self.sleeves.values())

    def equity(self, sleeve: Sleeve) -> float:
        return self.sleeves[sleeve].equity

    def weight(self, sleeve: Sleeve) -> float:
        total = self.total
        return self.sleeves[sleeve].equity / total if total else 0.0

    def close_doc(self) -> dict:
        """What the ledger keeps of its last close (JSON): the day, equity, capital in and P&L by sleeve."""
        return {"day": f"{self.day:%Y-%m-%d}",
                "equity": {sl.value: v.equity for sl, v in self.sleeves.items()},
                "capital_in": {sl.value: self.capital_in.get(sl, 0.0) for sl in self.sleeves},
                "pnl_today": {sl.value: x for sl, x in self.pnl_today.items()},
                "pnl_since_start": {sl.value: x for sl, x in self.pnl_since_start.items()}}

    def equity_rows(self) -> list[dict]:
        """The equity records of the day: one row per sleeve (equity and cash, USDT)."""
        return [{"day": self.day, "sleeve": sl.value, "equity": v.equity, "cash": v.cash}
                for sl, v in self.sleeves.items()]

    def rows(self) -> list[dict]:
        """One row per holding: cash, each coin (free and staked), each perp (its margin plus
        unrealised P&L is its value); `value_usdt` sums to `total`."""
        out = []
        for sl, v in self.sleeves.items():
            out.append({"sleeve": sl.value, "asset": "USDT", "qty": v.cash, "price": 1.0, "value_usdt": v.cash})
            for s in v.spot:
                out.append({"sleeve": sl.value, "asset": s.asset + (" (staked)" if s.staked else ""),
                            "qty": s.qty, "price": s.price, "value_usdt": s.value_usdt})
            for p in v.perps:
                out.append({"sleeve": sl.value, "asset": f"{p.symbol} {'long' if p.qty > 0 else 'short'}",
                            "qty": p.qty, "price": p.mark, "value_usdt": p.value_usdt, "entry": p.entry_price,
                            "notional_usdt": p.notional_usdt, "margin": p.margin, "unrealised": p.unrealised,
                            "stop": p.stop.price if p.stop else None})
        return out


def value_book(book: SleeveBook, closes: Mapping[str, float], marks: Mapping[str, float] | None = None,
               stops: Mapping[str, StopLevel] | None = None) -> SleeveValue:
    """One sleeve at `closes` (asset -> spot close) and `marks` (perp symbol -> mark)."""
    spot = []
    for asset in sorted(set(book.holdings) | set(book.staked)):
        if not book.qty(asset):
            continue
        if asset not in closes:
            raise ValuationError(f"no price for {asset}: {book.sleeve.value} holds {book.qty(asset):.8g} of it")
        spot.append(SpotLine(asset, book.holdings.get(asset, 0.0), book.staked.get(asset, 0.0), closes[asset]))
    perps = []
    for sym, pos in book.perps.items():
        if not marks or sym not in marks:
            raise ValuationError(f"no mark for {sym}: {book.sleeve.value} holds {pos.qty:+.8g} of it "
                                 "(a perp is valued at its mark, never at the spot close)")
        perps.append(PerpLine(sym, pos.qty, pos.entry_price, marks[sym], pos.margin, pos.leverage,
                              (stops or {}).get(sym)))
    return SleeveValue(book.sleeve, book.cash, tuple(spot), tuple(perps))


def book_equity(book: SleeveBook, closes: Mapping[str, float], marks: Mapping[str, float] | None = None) -> float:
    """`value_book(book, closes, marks).equity` (USDT), to the last bit, without building the lines:
    the same sums in the same order (the loop values every book several times per event). Raises
    ValuationError as value_book does."""
    spot = 0
    held, staked = book.holdings, book.staked
    for asset in sorted(held.keys() | staked.keys()) if staked else sorted(held):
        qty = held.get(asset, 0.0) + staked.get(asset, 0.0)
        if not qty:
            continue
        price = closes.get(asset)
        if price is None:
            raise ValuationError(f"no price for {asset}: {book.sleeve.value} holds {qty:.8g} of it")
        spot += qty * price
    value = book.cash + spot
    for sym, pos in book.perps.items():
        if not marks or sym not in marks:
            raise ValuationError(f"no mark for {sym}: {book.sleeve.value} holds {pos.qty:+.8g} of it "
                                 "(a perp is valued at its mark, never at the spot close)")
        value += pos.margin + (marks[sym] - pos.entry_price) * pos.qty
    return value


def value_portfolio(day: datetime, books: Mapping[Sleeve, SleeveBook], closes: Mapping[str, float],
                    marks: Mapping[str, float], targets: Mapping[Sleeve, float] | None = None,
                    stops: Mapping[Sleeve, Mapping[str, StopLevel]] | None = None, *,
                    capital_in: Mapping[Sleeve, float] | None = None, previous: Mapping | None = None) -> Valuation:
    """Every sleeve at the close of `day`; `targets`: sleeve -> target weight (fraction).

    With `capital_in` (sleeve -> USDT given to it, net) the P&L since the start is the equity less
    it; with `previous` (the last close's `close_doc`) the P&L of the day is the change in equity
    less the capital that came in since: deposits and transfers between sleeves are no gain."""
    sleeves = {sl: value_book(b, closes, marks, (stops or {}).get(sl)) for sl, b in books.items()}
    capital = {sl: (capital_in or {}).get(sl, 0.0) for sl in sleeves}
    since_start = {sl: v.equity - capital[sl] for sl, v in sleeves.items()} if capital_in is not None else {}
    today = {}
    if previous:
        before, given = previous.get("equity", {}), previous.get("capital_in", {})
        today = {sl: v.equity - before[sl.value] - (capital[sl] - given.get(sl.value, 0.0))
                 for sl, v in sleeves.items() if sl.value in before}
    return Valuation(day, sleeves, dict(targets or {}), today, since_start, capital)
