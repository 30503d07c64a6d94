"""Reports as plain text/markdown: the valuation by sleeve and position, decisions, orders. No I/O."""
from __future__ import annotations

from collections.abc import Iterable

from eternal.models import Event, OrderRecord
from eternal.valuation import Valuation


def money(x: float | None, signed: bool = False) -> str:
    """USDT with thousands separators and cents; '-' for unknown."""
    return "-" if x is None else (f"{x:+,.2f}" if signed else f"{x:,.2f}")


def pct(x: float | None, signed: bool = False) -> str:
    """A fraction as a percentage with two decimals; '-' for unknown."""
    return "-" if x is None else (f"{x:+.2%}" if signed else f"{x:.2%}")


def sleeve_rows(v: Valuation) -> list[dict]:
    """Per sleeve: equity, cash, weight against its target, P&L of the day and since the start
    (formatted for people; the numbers are the valuation's)."""
    out = []
    for sl, sv in v.sleeves.items():
        target = v.targets.get(sl)
        out.append({"sleeve": sl.value, "equity": money(sv.equity), "cash": money(sv.cash),
                    "weight": pct(v.weight(sl)), "target": pct(target),
                    "off target": pct(v.weight(sl) - target, signed=True) if target is not None else "-",
                    "P&L today": money(v.pnl_today.get(sl), signed=True),
                    "P&L since start": money(v.pnl_since_start.get(sl), signed=True)})
    return out


def position_rows(v: Valuation) -> list[dict]:
    """Every holding but cash: coins at the close, perps at the mark with margin, P&L and stop."""
    out = []
    for sl, sv in v.sleeves.items():
        for s in sv.spot:
            out.append({"sleeve": sl.value, "position": s.asset + (" (staked)" if s.staked and not s.free else
                                                                    f" ({s.staked:.8g} staked)" if s.staked else ""),
                        "qty": f"{s.qty:.8g}", "price": money(s.price), "value": money(s.value_usdt),
                        "entry": "", "notional": money(s.value_usdt), "margin": "", "unrealised": "", "stop": ""})
        for p in sv.perps:
            out.append({"sleeve": sl.value, "position": f"{p.symbol} {'long' if p.qty > 0 else 'short'} "
                                                        f"{p.leverage:g}x",
                        "qty": f"{p.qty:+.8g}", "price": money(p.mark), "value": money(p.value_usdt),
                        "entry": money(p.entry_price), "notional": money(p.notional_usdt),
                        "margin": money(p.margin), "unrealised": money(p.unrealised, signed=True),
                        "stop": f"{money(p.stop.price)} ({p.stop.reason})" if p.stop else "none"})
    return out


def _table(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    head = list(rows[0])
    right = {"equity", "cash", "weight", "target", "off target", "P&L today", "P&L since start", "qty", "price",
             "value", "entry", "notional", "margin", "unrealised"}
    return (["| " + " | ".join(head) + " |", "|" + "|".join("---:" if h in right else "---" for h in head) + "|"]
            + ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows])


def cycle_markdown(v: Valuation, events: Iterable[Event], orders: Iterable[OrderRecord] = ()) -> str:
    """The daily artifact: the portfolio at the close (the equity records' numbers), the day's
    P&L, each sleeve against its target, positions with stops, the run's orders and decisions."""
    total = v.total
    today = sum(v.pnl_today.values()) if v.pnl_today else None
    before = total - today if today is not None else None
    since = sum(v.pnl_since_start.values()) if v.pnl_since_start else None
    given = sum(v.capital_in.values()) if v.capital_in else None
    lines = [f"# Daily cycle, close of {v.day:%Y-%m-%d} UTC", "",
             f"Portfolio value: **{money(total)} USDT**, P&L today {money(today, signed=True)} USDT"
             f" ({pct(today / before if today is not None and before else None, signed=True)}), since the start "
             f"{money(since, signed=True)} USDT ({pct(since / given if since is not None and given else None, signed=True)}"
             f" of {money(given)} USDT put in)", "",
             "Spot and staked coins at the day's close, perps at their mark (margin plus unrealised P&L).", "",
             "## Sleeves", "", *_table(sleeve_rows(v)), "", "## Positions", ""]
    lines += _table(position_rows(v)) or ["No position: cash only."]
    orders = list(orders)
    lines += ["", "## Orders", ""]
    if orders:
        lines += _table([{"sleeve": o.intent.sleeve.value, "symbol": o.intent.symbol, "side": o.intent.side.value,
                          "qty": f"{o.intent.qty:.8g}", "status": o.status.value,
                          "price": money(o.avg_price) if o.avg_price else "", "reason": o.intent.reason}
                         for o in {o.client_order_id: o for o in orders}.values()])
    else:
        lines.append("No order in this run.")
    lines += ["", "## Events", ""]
    events = list(events)
    if not events:
        lines.append("No decision today.")
    for e in events:
        lines.append(f"- `{e.kind}` ({e.sleeve.value if e.sleeve else 'portfolio'}): {e.message}")
    return "\n".join(lines) + "\n"


def order_rows(orders: Iterable[OrderRecord]) -> list[dict]:
    return [{"client_order_id": o.client_order_id, "sleeve": o.intent.sleeve.value, "symbol": o.intent.symbol,
             "side": o.intent.side.value, "type": o.intent.order_type.value, "qty": round(o.intent.qty, 8),
             "status": o.status.value, "filled_qty": round(o.filled_qty, 8),
             "avg_price": o.avg_price, "fee": round(o.fee, 8), "reason": o.intent.reason}
            for o in orders]
