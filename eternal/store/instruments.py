"""The stored trading rules (`instruments`): what the venue's instruments-info said when last read.

In an exchange mode every run refreshes the table from the venue's markets (`refresh_instruments`,
one transaction): a symbol new to the table is added, a changed rule (a new quantity step, a new
minimum) is overwritten and reported by an `instrument_rules_changed` event that names the symbol,
the field and both values, written with it; `updated_at` is when the venue last said so. Paper
mode keeps the packaged table and never writes here.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from datetime import datetime

from sqlalchemy import Engine, insert, select

from eternal.instruments import Instrument, Instruments
from eternal.models import Event
from eternal.store.ledger import event_row
from eternal.store.models import EventRow, InstrumentRow
from eternal.store.upsert import upsert

RULE_FIELDS = ("qty_step", "min_qty", "min_notional", "price_tick", "max_leverage")


def load_instruments(engine: Engine) -> dict[str, Instrument]:
    """The stored table (empty before the first run in an exchange mode)."""
    with engine.connect() as conn:
        rows = conn.execute(select(*[getattr(InstrumentRow, c) for c in ("symbol", *RULE_FIELDS)])).all()
    return {r.symbol: Instrument(r.symbol, r.qty_step, r.min_qty, r.min_notional, r.price_tick, r.max_leverage)
            for r in rows}


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)


def rule_changes(stored: Instruments, table: Instruments) -> dict[str, dict[str, tuple]]:
    """symbol -> field -> (stored, new) for every rule of a stored symbol that `table` changes."""
    out: dict[str, dict[str, tuple]] = {}
    for sym, new in table.items():
        old = stored.get(sym)
        if old is None:
            continue
        changed = {f: (getattr(old, f), getattr(new, f)) for f in RULE_FIELDS
                   if not _same(getattr(old, f), getattr(new, f))}
        if changed:
            out[sym] = changed
    return out


def refresh_instruments(engine: Engine, table: Instruments, now: datetime, source: str) -> list[Event]:
    """Upsert `table` (the venue's rules as `eternal.instruments.instruments_from_ccxt_markets`
    builds them) into `instruments`; returns, and stores in the same transaction, one
    `instrument_rules_changed` event per symbol whose stored rules changed."""
    stored = load_instruments(engine)
    changes = rule_changes(stored, table)
    events = [Event(now, "instrument_rules_changed",
                    f"{source}: {sym} trading rules changed: "
                    + ", ".join(f"{f} {_num(a)} -> {_num(b)}" for f, (a, b) in fields.items())
                    + "; orders from now on are rounded to the new rules",
                    None, "warning", {"symbol": sym, "source": source,
                                      "changes": {f: {"old": a, "new": b} for f, (a, b) in fields.items()}})
              for sym, fields in changes.items()]
    rows = [{"symbol": sym, **{f: v for f, v in asdict(inst).items() if f != "symbol"},
             "source": source, "updated_at": now} for sym, inst in table.items()]
    with engine.begin() as conn:
        upsert(conn, InstrumentRow.__table__, rows, ["symbol"])
        if events:
            conn.execute(insert(EventRow), [event_row(e, None) for e in events])
    return events


def _num(x: float | None) -> str:
    return "none" if x is None else f"{x:.12g}"
