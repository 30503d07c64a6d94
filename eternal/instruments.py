"""Exchange trading rules per symbol: quantity step, minimum quantity, minimum notional, price tick.

Bybit refuses an order whose quantity is not a multiple of the instrument's step or that is under
its minimum quantity or minimum notional (spot `minOrderAmt`, linear perp `minNotionalValue`). The
driver applies the same rules to every intent before it is sent (`apply_rules`, once, for the live
flows and the replay alike): the quantity is rounded down to the step, and an intent then under a
minimum is dropped with an event that names the rule and the numbers. The paper exchange refuses
what slips through (`violation`), as Bybit would.

The table is package data (`eternal/exchange/instruments.json`, with its source), the paper
exchange's; in the exchange modes the Bybit adapter's `rules` are the venue's, built from ccxt's
`load_markets()` with `instruments_from_ccxt_markets`, and every run stores them
(`eternal.store.instruments`). The engines' `tradable_qty` still reads the packaged table. Pure
apart from reading that file once.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Any

from eternal.models import PERP_SYMBOLS, SPOT_SYMBOLS, Event, OrderIntent

SYMBOLS = (*SPOT_SYMBOLS.values(), *PERP_SYMBOLS.values())
"""The symbols the portfolio trades: the table must cover them."""

_STEP_TOLERANCE = 1e-9     # qty / step this close to an integer is on the step (float noise)


@cache
def _decimals(step: float) -> int:
    """Decimal places of a step (0.001 -> 3), once per step: every intent is rounded with it."""
    exponent = Decimal(repr(step)).normalize().as_tuple().exponent
    return max(0, -int(exponent))


@dataclass(frozen=True)
class Instrument:
    """One symbol's trading rules, in base units and USDT (Bybit instruments-info)."""

    symbol: str
    qty_step: float                  # every order quantity is a multiple of it
    min_qty: float                   # smallest order quantity
    min_notional: float              # smallest qty x price in USDT (0: no minimum)
    price_tick: float                # every limit price is a multiple of it
    max_leverage: float | None = None   # perps only

    def floor_qty(self, qty: float) -> float:
        """`qty` rounded down to the step (a hair under a step counts as on it: float noise)."""
        steps = math.floor(qty / self.qty_step + _STEP_TOLERANCE)
        return round(steps * self.qty_step, _decimals(self.qty_step))

    def on_step(self, qty: float) -> bool:
        steps = qty / self.qty_step
        return abs(steps - round(steps)) <= _STEP_TOLERANCE * max(1.0, steps)

    def smallest_order(self, price: float) -> float:
        """The smallest valid quantity at `price`: at least the minimum quantity and notional."""
        need = max(self.min_qty, self.min_notional / price if price > 0 else math.inf)
        steps = math.ceil(need / self.qty_step - _STEP_TOLERANCE)
        return round(steps * self.qty_step, _decimals(self.qty_step))

    def violation(self, qty: float, price: float | None) -> str | None:
        """Why Bybit would refuse `qty` at `price` (None: it would accept it). No price: the
        minimum notional is not checked."""
        if not self.on_step(qty):
            return f"qty {qty:.12g} is not a multiple of the step {self.qty_step:g}"
        if qty < self.min_qty * (1 - _STEP_TOLERANCE):
            return f"qty {qty:.12g} is under the minimum quantity {self.min_qty:g}"
        if price is not None and self.min_notional and qty * price < self.min_notional:
            return (f"notional {qty * price:.4f} USDT ({qty:.12g} x {price:.8g}) is under the minimum "
                    f"{self.min_notional:g} USDT")
        return None


Instruments = Mapping[str, Instrument]


def from_json(doc: Mapping[str, Any]) -> dict[str, Instrument]:
    return {sym: Instrument(sym, float(r["qty_step"]), float(r["min_qty"]), float(r["min_notional"] or 0.0),
                            float(r["price_tick"]),
                            float(r["max_leverage"]) if r.get("max_leverage") is not None else None)
            for sym, r in doc["instruments"].items()}


def to_json(table: Instruments, source: str) -> dict[str, Any]:
    return {"source": source, "instruments": {s: {k: v for k, v in asdict(i).items() if k != "symbol"}
                                              for s, i in table.items()}}


@cache
def default() -> dict[str, Instrument]:
    """The packaged table (eternal/exchange/instruments.json)."""
    text = resources.files("eternal.exchange").joinpath("instruments.json").read_text()
    return from_json(json.loads(text))


def tradable_qty(symbol: str, qty: float, price: float, table: Instruments | None = None) -> float:
    """`qty` of `symbol` as an order would carry it (down to the step), or 0.0 when the exchange
    would refuse it (under a minimum at `price`): what an engine can actually trade now."""
    inst = (default() if table is None else table).get(symbol)
    if inst is None:
        return qty
    floored = inst.floor_qty(qty)
    return floored if floored > 0 and inst.violation(floored, price) is None else 0.0


def instruments_from_ccxt_markets(markets: Mapping[str, Mapping[str, Any]],
                                  symbols: Iterable[str] = SYMBOLS) -> dict[str, Instrument]:
    """The table from ccxt's `load_markets()` for Bybit (precision mode TICK_SIZE: `precision`
    holds the step and the tick). A linear perp's minimum notional is not in ccxt's
    `limits.cost.min`: it is Bybit's `lotSizeFilter.minNotionalValue` in `info`. A symbol missing
    from `markets` is refused: trading it without its rules is how orders get rejected."""
    missing = [s for s in symbols if s not in markets]
    if missing:
        raise KeyError(f"markets have no {', '.join(missing)}: cannot build their trading rules")
    out = {}
    for sym in symbols:
        m = markets[sym]
        limits, precision = m.get("limits") or {}, m.get("precision") or {}
        min_cost = (limits.get("cost") or {}).get("min")
        if min_cost is None:
            lot = ((m.get("info") or {}).get("lotSizeFilter") or {})
            raw = lot.get("minNotionalValue") or lot.get("minOrderAmt")
            min_cost = float(raw) if raw not in (None, "") else 0.0
        out[sym] = Instrument(sym, float(precision["amount"]), float((limits.get("amount") or {})["min"]),
                              float(min_cost), float(precision["price"]),
                              (limits.get("leverage") or {}).get("max"))
    return out


def apply_rules(intents: Iterable[OrderIntent], prices: Mapping[str, float], ts: datetime,
                table: Instruments | None = None) -> tuple[list[OrderIntent], list[Event]]:
    """Each intent as Bybit would take it: its quantity rounded down to the step; one then under
    the minimum quantity or notional (at its limit price, else at `prices[symbol]`, the price it
    was decided at) is dropped with an `order_below_minimum` event. A symbol without rules passes
    unchanged (the venue decides)."""
    table = default() if table is None else table
    kept, events = [], []
    for intent in intents:
        inst = table.get(intent.symbol)
        if inst is None:
            kept.append(intent)
            continue
        qty = inst.floor_qty(intent.qty)
        price = intent.limit_price or prices.get(intent.symbol)
        why = (f"qty {intent.qty:.12g} rounds down to 0 at the step {inst.qty_step:g}" if qty <= 0
               else inst.violation(qty, price))
        if why is None:
            kept.append(intent if qty == intent.qty else replace(intent, qty=qty))
            continue
        events.append(Event(ts, "order_below_minimum",
                            f"{intent.key}: {intent.side} {intent.qty:.8g} {intent.symbol} not sent: {why}",
                            intent.sleeve, "info",
                            {"intent": intent.key, "symbol": intent.symbol, "qty": intent.qty, "rounded_qty": qty,
                             "price": price, "qty_step": inst.qty_step, "min_qty": inst.min_qty,
                             "min_notional": inst.min_notional}))
    return kept, events
