"""Reports as plain text/markdown: portfolio by sleeve and asset, decisions, orders. No I/O."""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from eternal.models import Event, OrderRecord, Sleeve, SleeveBook


def portfolio_rows(books: Mapping[Sleeve, SleeveBook], prices: Mapping[str, float]) -> list[dict]:
    rows = []
    for sleeve, book in books.items():
        rows.append({"sleeve": sleeve.value, "asset": "USDT", "qty": book.cash, "value_usdt": book.cash})
        for asset in sorted(set(book.holdings) | set(book.staked)):
            qty = book.qty(asset)
            if qty:
                rows.append({"sleeve": sleeve.value, "asset": asset + (" (staked)" if book.staked.get(asset) else ""),
                             "qty": qty, "value_usdt": qty * prices[asset]})
    return rows


def cycle_markdown(day, books: Mapping[Sleeve, SleeveBook], prices: Mapping[str, float],
                   events: Iterable[Event]) -> str:
    rows = portfolio_rows(books, prices)
    total = sum(r["value_usdt"] for r in rows)
    lines = [f"# Daily cycle, close of {day:%Y-%m-%d} UTC", "",
             f"Portfolio value: **{total:,.2f} USDT**", "",
             "| sleeve | asset | qty | value (USDT) | share |", "|---|---|---:|---:|---:|"]
    for r in rows:
        share = r["value_usdt"] / total if total else 0.0
        lines.append(f"| {r['sleeve']} | {r['asset']} | {r['qty']:.8g} | {r['value_usdt']:,.2f} | {share:.2%} |")
    lines += ["", "## Decisions", ""]
    decisions = [e for e in events]
    if not decisions:
        lines.append("No decision today.")
    for e in decisions:
        lines.append(f"- `{e.kind}` ({e.sleeve.value if e.sleeve else 'portfolio'}): {e.message}")
    return "\n".join(lines) + "\n"


def order_rows(orders: Iterable[OrderRecord]) -> list[dict]:
    return [{"client_order_id": o.client_order_id, "sleeve": o.intent.sleeve.value, "symbol": o.intent.symbol,
             "side": o.intent.side.value, "type": o.intent.order_type.value, "qty": round(o.intent.qty, 8),
             "status": o.status.value, "filled_qty": round(o.filled_qty, 8),
             "avg_price": o.avg_price, "fee": round(o.fee, 8), "reason": o.intent.reason}
            for o in orders]
