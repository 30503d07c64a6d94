"""The human override (issue 12): an operator's halt and resume, and the risk state they act on.

The imperative shell around `Driver.override` (rules in `eternal.breakers`): under the driver lock,
so an override never interleaves with a run; the override and its events (who, why, when) are
committed at once, then sent as alerts. `halt` engages the kill switch (resting orders cancelled
at the venue); `resume` lifts breakers and the kill switch by the rules, raising
`eternal.breakers.ResumeRefused` (one line) when they refuse.
"""
from __future__ import annotations

from datetime import datetime

from eternal import breakers
from eternal.config import Settings
from eternal.driver import Driver, Due, Portfolio
from eternal.errors import EternalError
from eternal.models import Event, Sleeve, utc
from eternal.store.driver_store import DRIVER_LOCK, SqlLedger
from eternal.store.locks import exclusive
from tasks.context import stores
from tasks.drive import active_sleeves, require_paper
from tasks.exchange_limit import exchange_slot
from tasks.notify import send


def _portfolio(s: Settings, ledger: SqlLedger) -> Portfolio:
    p = ledger.load()
    if p is None:
        raise EternalError(f"no portfolio in {s.database_url}: run the daily cycle first "
                           "(`eternal run daily`)")
    if p.mode not in ("", s.mode.value):    # the kill switch must reach the venue the ledger trades on
        from eternal.errors import ConfigError

        raise ConfigError(f"this ledger trades in {p.mode} mode and ETERNAL_MODE={s.mode.value!r}: set "
                          f"ETERNAL_MODE={p.mode} so the override reaches the {p.mode} venue")
    return p


def _override(s: Settings, action: str, reason: str, who: str, now: datetime, confirm_kill_switch: bool) -> dict:
    require_paper(s)
    now = utc(now)
    _, store = stores(s)
    engine = store.engine
    if action == "halt":
        if not reason.strip() or not who.strip():
            raise breakers.ResumeRefused("a halt needs a reason and who engages it (neither may be blank)")
        if not store.is_initialised():
            _portfolio(s, SqlLedger(engine))
        # a run holding the lock reads this before its next event: the halt does not wait for it
        SqlLedger(engine).request_halt(reason, who, now)
    # exchange modes: a `bybit-api` slot; a halt goes on without it when Prefect cannot be reached
    with exclusive(engine, DRIVER_LOCK), exchange_slot(s, required=action != "halt", engine=engine):
        ledger = SqlLedger(engine)
        p = _portfolio(s, ledger)
        sleeves = active_sleeves(s)
        from tasks.exchange import open_exchange

        driver = Driver(None, open_exchange(s, engine), ledger, s, sleeves,
                        orchestrated=set(sleeves) == set(Sleeve))
        ks = p.risk.kill_switch
        by_the_run = (action == "halt" and ks is not None and (ks.who, ks.reason, ks.at) == (who, reason, now))
        events = driver.override(p, action, now, who, reason, confirm_kill_switch=confirm_kill_switch)
        ledger.clear_halt_request()      # taken (or, on a resume, overruled by the operator)
        status = _status(s, p)
    if by_the_run:
        from sqlalchemy import select

        from eternal.store.models import EventRow

        with engine.connect() as conn:
            engaged = conn.execute(select(EventRow.ts, EventRow.kind, EventRow.message, EventRow.level, EventRow.data)
                                   .where(EventRow.kind == "kill_switch_engaged")
                                   .order_by(EventRow.id.desc()).limit(1)).first()
        events = [Event(utc(engaged.ts), engaged.kind, engaged.message + " (taken by the run in progress at "
                        "its next event)", None, engaged.level, engaged.data or {})]
        return {"action": action, "who": who, "reason": reason, "at": now.isoformat(),
                "events": [_event_dict(e) for e in events], "status": status}
    send(s, events, store, now=now)
    return {"action": action, "who": who, "reason": reason, "at": now.isoformat(),
            "events": [_event_dict(e) for e in events], "status": status}


def halt(s: Settings, reason: str, who: str, now: datetime) -> dict:
    """Engage the kill switch: no order of any kind leaves until a confirmed resume; resting orders
    are cancelled now. Funding, reconciliation and reports go on. Engaging it again changes nothing
    (the first reason stays). Returns who, why, when, the events and the risk status after."""
    return _override(s, "halt", reason, who, now, False)


def resume(s: Settings, reason: str, who: str, now: datetime, *, confirm_kill_switch: bool = False) -> dict:
    """Resume after a breaker (L2 only at a drawdown of 10 % or less) or lift the kill switch (only
    with `confirm_kill_switch`). Raises `eternal.breakers.ResumeRefused` when the rules refuse;
    nothing changes then."""
    return _override(s, "resume", reason, who, now, confirm_kill_switch)


def risk_status(s: Settings) -> dict:
    """What an operator reads before a resume: breaker level, drawdown, unit value, high-water
    mark, the kill switch, halted sleeves and every sleeve's positions (read under the driver
    lock, so never half a run)."""
    _, store = stores(s)
    with exclusive(store.engine, DRIVER_LOCK):
        p = _portfolio(s, SqlLedger(store.engine))
    return _status(s, p)


def _status(s: Settings, p: Portfolio) -> dict:
    r = p.risk
    ks = r.kill_switch
    return {
        "level": r.level, "level_name": breakers.LEVEL_NAMES[r.level],
        "drawdown": r.drawdown, "unit_value": r.unit_value, "high_water_mark": r.hwm, "nav_usdt": r.nav,
        "engaged_at": r.engaged_at.isoformat() if r.engaged_at else None,
        "kill_switch": None if ks is None else {"reason": ks.reason, "who": ks.who, "at": ks.at.isoformat(),
                                               "level": ks.level},
        "halted_sleeves": dict(p.halted),
        "clock": str(Due.from_key(p.clock)) if p.clock else None,
        "open_orders": len(p.open_orders),
        "positions": {sl.value: {"cash_usdt": b.cash,
                                 "coins": {a: b.qty(a) for a in sorted(set(b.holdings) | set(b.staked)) if b.qty(a)},
                                 "perps": {sym: {"qty": pos.qty, "entry_price": pos.entry_price, "margin": pos.margin}
                                           for sym, pos in sorted(b.perps.items()) if pos.qty}}
                      for sl, b in sorted(p.books.items(), key=lambda kv: list(Sleeve).index(kv[0]))},
    }


def _event_dict(e: Event) -> dict:
    return {"ts": e.ts.isoformat(), "kind": e.kind, "message": e.message, "level": e.level,
            "sleeve": e.sleeve.value if e.sleeve is not None else None, "data": e.data}


def status_markdown(status: dict) -> str:
    """The risk status as markdown: the resume form's description and the flow's artifact."""
    ks = status["kill_switch"]
    lines = [f"**Breaker level:** {status['level_name']} (level {status['level']})",
             f"**Drawdown:** {status['drawdown']:.2%} (unit value {status['unit_value']:.4f}, "
             f"high-water mark {status['high_water_mark']:.4f}, NAV {status['nav_usdt']:,.2f} USDT)",
             "**Kill switch:** " + ("not engaged" if ks is None else
                                    f"ENGAGED by {ks['who']} at {ks['at']}: {ks['reason']}")]
    if status["halted_sleeves"]:
        lines.append("**Halted sleeves:** " + "; ".join(f"{k}: {v}" for k, v in status["halted_sleeves"].items()))
    if status["clock"]:
        lines.append(f"**Ledger clock:** {status['clock']}; {status['open_orders']} open order(s)")
    lines += ["", "| sleeve | cash USDT | coins | perps |", "|---|---:|---|---|"]
    for sleeve, pos in status["positions"].items():
        coins = ", ".join(f"{a} {q:.8g}" for a, q in pos["coins"].items()) or "-"
        perps = ", ".join(f"{sym} {v['qty']:+.8g} @ {v['entry_price']:,.2f}" for sym, v in pos["perps"].items()) or "-"
        lines.append(f"| {sleeve} | {pos['cash_usdt']:,.2f} | {coins} | {perps} |")
    return "\n".join(lines)
