"""Ledger invariants, pure: checked after every driver step (issue 12, "Ledger invariants").

Per sleeve: every amount is a finite number; no coin balance and no perp margin is negative; the
equity recorded at a close equals cash + spot at the close + staked + perp margin + unrealised at
the mark, summed here from the parts (not through `SleeveBook.equity`). Across the portfolio:
every fill belongs to one of our orders or is the venue's own exit (a stop, a liquidation, the
end of a replay); every transfer has two sides (a deposit's outside side is named by its reason).
A broken invariant halts the sleeve; the driver raises it as an alert.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from eternal.models import Fill, Sleeve, SleeveBook, Transfer, base_of

VENUE_EXITS = ("hard_stop", "trailing_stop", "liquidation", "end")
TOLERANCE = 1e-6          # USDT (and coin) amounts below this are noise


def _finite(*values: float) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _sound(book: SleeveBook) -> bool:
    """True when `book_problems` would find nothing, judged by plain comparisons without building
    a message (the driver checks every book at every event); False sends it to the full check
    (an int or any other type, a NaN, which fails every comparison, a negative amount)."""
    inf = math.inf
    if type(book.cash) is not float or not -inf < book.cash < inf:
        return False
    for amounts in (book.holdings, book.staked):
        for qty in amounts.values():
            if type(qty) is not float or not -TOLERANCE <= qty < inf:
                return False
    for pos in book.perps.values():
        if not (type(pos.qty) is type(pos.entry_price) is type(pos.margin) is type(pos.leverage) is float
                and -inf < pos.qty < inf and 0 < pos.entry_price < inf and -TOLERANCE <= pos.margin < inf
                and 0 < pos.leverage < inf):
            return False
    return True


def book_problems(book: SleeveBook) -> list[str]:
    """What is wrong with one sleeve's book on its own (empty: nothing)."""
    if _sound(book):
        return []
    out = []
    if not _finite(book.cash):
        out.append(f"cash is {book.cash!r}")
    for what, amounts in (("free", book.holdings), ("staked", book.staked)):
        for asset, qty in amounts.items():
            if not _finite(qty):
                out.append(f"{asset} {what} is {qty!r}")
            elif qty < -TOLERANCE:
                out.append(f"{asset} {what} is negative ({qty:.10g})")
    for sym, pos in book.perps.items():
        if not _finite(pos.qty, pos.entry_price, pos.margin, pos.leverage):
            out.append(f"{sym} position has a non-finite field (qty {pos.qty!r}, entry {pos.entry_price!r}, "
                       f"margin {pos.margin!r})")
        elif pos.margin < -TOLERANCE or pos.entry_price <= 0 or pos.leverage <= 0:
            out.append(f"{sym} position is impossible (margin {pos.margin:.10g}, entry {pos.entry_price:.10g}, "
                       f"leverage {pos.leverage:g})")
    return out


def equity_from_parts(book: SleeveBook, closes: Mapping[str, float], marks: Mapping[str, float]) -> float:
    """cash + (free + staked) x close + sum(margin + (mark - entry) x qty), USDT."""
    total = book.cash
    for asset in set(book.holdings) | set(book.staked):
        qty = book.holdings.get(asset, 0.0) + book.staked.get(asset, 0.0)
        if qty:
            total += qty * closes[asset]
    for sym, pos in book.perps.items():
        mark = marks.get(sym, closes.get(base_of(sym)))
        total += pos.margin + (mark - pos.entry_price) * pos.qty
    return total


def check(books: Mapping[Sleeve, SleeveBook], *, fills: Iterable[Fill] = (), known_orders: set[str] = frozenset(),
          transfers: Iterable[Transfer] = (), equity: Iterable[dict] = (), closes: Mapping[str, float] | None = None,
          marks: Mapping[str, float] | None = None) -> dict[Sleeve, list[str]]:
    """Sleeve -> what is broken (only sleeves with a problem). `equity`: the rows recorded at a
    close ({"sleeve", "equity", ...}) to check against the parts at `closes` / `marks`."""
    found: dict[Sleeve, list[str]] = {}

    def add(sleeve: Sleeve, problem: str) -> None:
        found.setdefault(sleeve, []).append(problem)

    for sleeve, book in books.items():
        for problem in book_problems(book):
            add(sleeve, problem)
    for f in fills:
        if f.client_order_id not in known_orders and f.reason not in VENUE_EXITS:
            add(f.sleeve, f"fill {f.trade_id} ({f.symbol} {f.side} {f.qty:.8g}) belongs to no order of ours "
                          f"({f.client_order_id})")
    for t in transfers:
        if not (_finite(t.qty) and t.qty > 0):
            add(t.to_sleeve, f"transfer of {t.qty!r} {t.asset} ({t.reason}) is not a positive amount")
        if t.to_sleeve not in books:
            add(t.from_sleeve or t.to_sleeve, f"transfer to {t.to_sleeve}, which has no book ({t.reason})")
        if t.from_sleeve is None and not t.reason.startswith("deposit"):
            add(t.to_sleeve, f"transfer of {t.qty:.8g} {t.asset} into {t.to_sleeve} has no other side "
                             f"(not a deposit: {t.reason})")
        elif t.from_sleeve is not None and t.from_sleeve not in books:
            add(t.to_sleeve, f"transfer from {t.from_sleeve}, which has no book ({t.reason})")
    if closes is not None:
        for row in equity:
            sleeve = Sleeve(row["sleeve"])
            if sleeve in found or sleeve not in books:
                continue
            parts = equity_from_parts(books[sleeve], closes, marks or {})
            if not (_finite(row["equity"]) and math.isclose(row["equity"], parts, rel_tol=1e-9, abs_tol=TOLERANCE)):
                add(sleeve, f"equity recorded {row['equity']!r} USDT, its parts sum to {parts:.8f}")
    return found
