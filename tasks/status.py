"""`eternal status`: the portfolio as the ledger knows it, valued at the ledger's own day.

The books are valued at the close of the last day the ledger processed (its clock), never at the
newest stored candle: spot at that close, perps at that day's mark (`eternal.valuation`, the
function behind the equity records and the daily artifact). When the ledger's clock is that close,
the total is the day's equity record to the cent; a run that went on past it (a funding settlement,
the next open's fills) shows its books as they are now, at the same prices.
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from eternal.allocation import targets_in_force
from eternal.breakers import LEVEL_NAMES
from eternal.config import Settings
from eternal.driver import Due, Portfolio
from eternal.errors import DataError
from eternal.models import SPOT_SYMBOLS, Sleeve, last_closed_day
from eternal.reporting import money, pct, position_rows, sleeve_rows
from eternal.valuation import Valuation, value_portfolio

FLOWS = ("daily-cycle", "funding-collection", "quarterly-rebalance", "deposit-intake", "override")


def day_prices(market, day: datetime, books) -> tuple[dict[str, float], dict[str, float]]:
    """(asset -> spot close, perp symbol -> mark) of `day` for what the books hold."""
    assets = {a for b in books.values() for a in (*b.holdings, *b.staked) if b.qty(a)}
    perps = {sym for b in books.values() for sym in b.perps}
    closes, marks = {}, {}
    for symbol, into, key in ([(SPOT_SYMBOLS.get(a, f"{a}/USDT"), closes, a) for a in sorted(assets)]
                              + [(sym, marks, sym) for sym in sorted(perps)]):
        rows = market.load_candles(symbol, "1d", start=day, end=day + timedelta(days=1))
        if not len(rows):
            raise DataError(f"no {symbol} candle stored for {day:%Y-%m-%d}, the ledger's last close: "
                            "cannot value what it holds (import or download that day)")
        into[key] = float(rows["close"].iloc[-1])
    return closes, marks


def valuation(s: Settings, p: Portfolio, market) -> Valuation:
    """The books now at the close of the ledger's last processed day, with the P&L of that day
    (the day's record, plus what came after the close) and since the start."""
    day = last_closed_day(Due.from_key(p.clock).ts)
    closes, marks = day_prices(market, day, p.books)
    last = p.last_close if p.last_close.get("day") == f"{day:%Y-%m-%d}" else {}
    # the day's P&L is measured from the previous close: its equity is the last close's less that
    # day's P&L (and the capital that came in during the day, counted from the last close's capital)
    previous = ({"equity": {sl: e - last["pnl_today"][sl] for sl, e in last["equity"].items()
                            if sl in last.get("pnl_today", {})},
                 "capital_in": last["capital_in"]} if last.get("pnl_today") else None)
    return value_portfolio(day, p.books, closes, marks,
                           targets_in_force(p.allocation, s.allocation, s.weights.by_sleeve()), p.stops,
                           capital_in=p.capital_in, previous=previous)


def headline(v: Valuation, last_close: dict) -> tuple[float, float | None, float, float, float | None]:
    """(portfolio, P&L today, P&L since start, capital put in, change since the close) in USDT.

    The portfolio is the close's own valuation, the day's equity records, which `eternal run
    daily` reports: a run at 00:05 goes on past the close (a settlement, the next open's fills
    and fees), and valuing those later books at the close's prices gave another total (0.12 USDT
    off on 2025-12-01). That change is returned apart (None when there is none, or when the
    ledger kept no record of that close): the books are shown as they are now."""
    if last_close.get("day") != f"{v.day:%Y-%m-%d}" or not last_close.get("equity"):
        today = math.fsum(v.pnl_today.values()) if v.pnl_today else None
        return v.total, today, math.fsum(v.pnl_since_start.values()), math.fsum(v.capital_in.values()), None
    total = math.fsum(last_close["equity"].values())
    given = math.fsum(last_close.get("capital_in", {}).values())
    today = math.fsum(last_close["pnl_today"].values()) if last_close.get("pnl_today") else None
    after = v.total - total
    return total, today, total - given, given, (after if round(after, 2) else None)


def engine_line(state: dict) -> str:
    """An engine's state machine in a few words: its phase, or each asset's."""
    if "assets" in state:
        parts = []
        for asset, st in state["assets"].items():
            phase = st.get("phase", "?")
            extra = f" {st['side']}" if st.get("side") else ""
            extra += f", stop {money(st['stop'])}" if st.get("stop") else ""
            parts.append(f"{asset} {phase}{extra}")
        return "; ".join(parts)
    line = state.get("phase", "?")
    if "tranches_done" in state:
        line += f", tranches done: {state['tranches_done']}"
    if state.get("lots"):
        line += f" ({len(state['lots'])} lots)"
    return line


def _table(rows: list[dict], left: set[str]) -> list[str]:
    if not rows:
        return []
    head = list(rows[0])
    width = {h: max(len(h), *(len(str(r[h])) for r in rows)) for h in head}
    fmt = lambda r: "  ".join(str(r[h]).ljust(width[h]) if h in left else str(r[h]).rjust(width[h])  # noqa: E731
                              for h in head).rstrip()
    return [fmt({h: h for h in head}), *(fmt(r) for r in rows)]


def status_text(s: Settings, engine) -> str:
    from eternal.data.store import MarketStore
    from eternal.store.driver_store import SqlLedger
    from eternal.store.ledger import LedgerStore
    from eternal.store.models import CycleRunRow

    ledger = LedgerStore(engine)
    lines = [f"mode: {s.mode.value}   database: {s.database_url}"]
    if not ledger.is_initialised():
        return "\n".join([*lines, "no portfolio yet: run `eternal run daily` to start one"])
    p = SqlLedger(engine).load()
    v = valuation(s, p, MarketStore(engine))
    total, today, since, given, after = headline(v, p.last_close)
    lines += [f"clock: {Due.from_key(p.clock)} (the last event processed); valued at the close of "
              f"{v.day:%Y-%m-%d} UTC (spot at the close, perps at the mark)", "",
              f"portfolio {money(total)} USDT   P&L today {money(today, signed=True)} USDT"
              f" ({pct(today / (total - today) if today is not None and total - today else None, signed=True)})"
              f"   since start {money(since, signed=True)} USDT ({pct(since / given if given else None, signed=True)}"
              f" of {money(given)} put in)"]
    if after is not None:
        lines.append(f"since that close: {money(after, signed=True)} USDT (the next open's fills and their fees, "
                     f"funding settled); the books below, now, at that close's prices: {money(v.total)} USDT")
    r = p.risk
    lines.append(f"breaker level: {LEVEL_NAMES[r.level]}   drawdown {pct(r.drawdown)}   kill switch: "
                 + ("not engaged" if r.kill_switch is None else
                    f"ENGAGED by {r.kill_switch.who} at {r.kill_switch.at:%Y-%m-%d %H:%M}: {r.kill_switch.reason}"))
    for sleeve, why in p.halted.items():
        lines.append(f"HALTED {sleeve}: {why}")
    for d in p.deposits:
        lines.append(f"deposit waiting for the next close: {money(d['usdt'])} USDT ({d['reference']})")
    lines += ["", *_table(sleeve_rows(v), {"sleeve"})]
    positions = position_rows(v)
    lines += ["", "positions" + ("" if positions else ": none, cash only")]
    lines += ["  " + x for x in _table(positions, {"sleeve", "position", "stop"})]
    orders = list(p.open_orders.values())
    lines += ["", f"open orders: {len(orders) or 'none'}"]
    lines += [f"  {o.intent.sleeve.value} {o.intent.side.value} {o.intent.qty:.8g} {o.intent.symbol} "
              f"{o.intent.order_type.value}{' @ ' + money(o.intent.limit_price) if o.intent.limit_price else ''} "
              f"({o.status.value}): {o.intent.reason}" for o in orders]
    lines += ["", "engines"]
    for sleeve, state in sorted(ledger.load_states().items(), key=lambda kv: list(Sleeve).index(kv[0])):
        lines.append(f"  {sleeve.value:9} {engine_line(state)}")
    lines += ["", "runs"]
    with Session(engine) as session:
        for flow in FLOWS:
            run = session.scalars(select(CycleRunRow).where(CycleRunRow.flow == flow)
                                  .order_by(CycleRunRow.id.desc()).limit(1)).first()
            if run is not None:
                lines.append(f"  {flow:20} last for {run.scheduled:%Y-%m-%d %H:%M} UTC: {run.status}")
        bad = session.scalars(select(CycleRunRow).where(CycleRunRow.status.in_(("failed", "crashed")))
                              .order_by(CycleRunRow.id.desc()).limit(5)).all()
    for run in bad:
        why = (run.summary or {}).get("error", "")
        lines.append(f"  {run.status.upper()}: {run.flow} for {run.scheduled:%Y-%m-%d %H:%M} UTC"
                     + (f": {why[:160]}" if why else ""))
    if not bad:
        lines.append("  no failed or crashed run")
    return "\n".join(lines)



