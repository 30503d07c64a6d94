"""Record: what a driver run did, as Prefect artifacts, a short report and alerts (the ledger already holds it)."""
from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from eternal.driver import Kind
from eternal.reporting import cycle_markdown, order_rows
from eternal.models import base_of


def record_run(d, flow: str) -> dict:
    """Artifacts of the run: the portfolio and decisions at the last close processed, the orders
    and the funding settled; returns the run's report (one line, equity by sleeve)."""
    r, view, p = d.report, d.view, d.portfolio
    closes_done = [e for e in r.processed if e.kind == Kind.CLOSE]
    report = {"line": r.line(), "clock": r.clock, "events": len(r.processed),
              "orders": len({o.client_order_id for o in r.orders}),
              "payments": len(r.payments), "finished_plan": r.finished_plan, "adopted": len(r.adopted),
              "halted": dict(p.halted), "closes": [f"{e.day:%Y-%m-%d}" for e in closes_done],
              "decisions": [e.message for e in r.events if e.kind not in ("staking_reward",)]}
    if r.differences:
        rows = [{"sleeve": sl, "difference": line} for sl, lines in r.differences.items() for line in lines]
        create_table_artifact(rows, key="reconciliation", description="ledger vs exchange: sleeves halted")
    if closes_done and r.closing is not None:
        # the books as they were at the close (the run may go on past it: a settlement, the next
        # open's fills): the very numbers of the day's equity records
        v = r.closing
        equity = {sl.value: sv.equity for sl, sv in v.sleeves.items()}
        report |= {"day": f"{v.day:%Y-%m-%d}", "equity": equity, "total_equity": v.total}
        key = f"{flow}-{v.day:%Y-%m-%d}"
        create_markdown_artifact(cycle_markdown(v, r.events, r.orders), key=key,
                                 description="the portfolio at the close (spot at the close, perps at the mark), "
                                 "P&L, weights against targets, positions with stops, orders, decisions")
    if flow == "quarterly-rebalance" and "equity" in report:
        from eternal import allocation

        state = allocation.AllocationState.model_validate(p.allocation or {})
        targets = allocation.targets(state.active or allocation.Regime.BASE, d.settings.allocation,
                                     d.settings.weights.by_sleeve())
        total = report["total_equity"]
        create_table_artifact([{"sleeve": sl, "target": round(targets.get(allocation.Sleeve(sl), 0.0), 6),
                                "actual": round(v / total, 6) if total else None}
                               for sl, v in report["equity"].items()], key="quarterly-rebalance-weights",
                              description=f"{state.active or 'base'} targets vs actual weights after the run")
        report["regime"] = state.active.value if state.active else None
    if r.orders:
        create_table_artifact(order_rows(r.orders), key=f"{flow}-orders", description="orders of this run")
    if r.payments:
        create_table_artifact([{"ts": x.ts.isoformat(), "sleeve": x.sleeve.value, "asset": base_of(x.symbol),
                                "qty": x.qty, "price": x.price, "rate": x.rate, "realised": x.amount,
                                "expected": x.expected} for x in r.payments],
                              key=f"{flow}-funding", description="funding settled: realised vs expected")
    send_alerts(d, flow, report)
    return report


def daily_summary(report: dict) -> str:
    """The P3 daily summary of a run's report: the day, total equity, equity by sleeve (USDT),
    orders, halted sleeves; one short text."""
    by_sleeve = ", ".join(f"{sl} {v:,.2f}" for sl, v in report["equity"].items())
    halted = ", ".join(f"{sl} ({why})" for sl, why in report["halted"].items()) or "none"
    return (f"Close of {report['day']}: equity {report['total_equity']:,.2f} USDT ({by_sleeve}); "
            f"{report['orders']} orders; halted: {halted}")


def send_alerts(d, flow: str, report: dict) -> list:
    """The run's alertable events, and after a daily-cycle close the daily summary, out through
    ETERNAL_ALERT_URLS; returns the `alert_failed` events (stored in the ledger). Never raises:
    an alert channel does not fail the run."""
    import logging
    from datetime import datetime

    from eternal.alerts import alert_urls, summary_alert
    from eternal.models import UTC

    try:
        from prefect import get_run_logger
        log = get_run_logger()
    except Exception:
        log = logging.getLogger(__name__)
    try:
        if not alert_urls(d.settings):
            return []
        from tasks.context import stores
        from tasks.notify import send

        now = datetime.now(UTC)
        events = list(d.report.events)
        if flow == "daily-cycle" and "day" in report:
            events.append(summary_alert(daily_summary(report), now))
        failed = send(d.settings, events, stores(d.settings)[1], now=now)
        for e in failed:
            log.warning(e.message)
        return failed
    except Exception as exc:
        from eternal.secrets import scrub

        log.warning("alerts not sent: %s", scrub(f"{type(exc).__name__}: {exc}"))
        return []
