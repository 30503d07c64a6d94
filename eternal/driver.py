"""The one cycle driver: advances the portfolio through time-ordered market events, live and in replay.

Time is a schedule of events (`Due`), ordered by (time, kind):

* ``CLOSE`` of day D at D+1 00:00: the venue checks D's range against the resting stops and
  liquidation prices and pays a day of staking; we book what it did, then the orchestration layer
  (regime, deposits, band and quarterly rebalancing) and the daily engines decide on D's close;
* ``SETTLEMENT`` at each funding time in the data (irregular ones too): the venue pays funding on
  the positions held, we book it, FUNDING decides;
* ``OPEN`` of day D at D 00:00: orders decided before it fill at D's open (the first price after
  their decision), spot sells and perp closes first.

A run processes every event due since the ledger's clock, in order, so a missed run is caught up
by the next run of any flow and a run for an older slot does nothing. Each decision is stored
before anything is sent (write-ahead); a run first finishes a stored, unfinished plan (every
transfer and stake is keyed, every order resolved by its client order id before it is sent), then
reconciles the ledger with the venue per sleeve, then decides anew. Our books change only from the
venue's journal (fills, funding, staking rewards) and from the plan's keyed transfers and stakes.

The driver does no I/O of its own: the market view, the exchange and the ledger are ports (in
memory for a backfill, the database for the flows). The decisions are `eternal.cycle`'s, pure.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import IntEnum
from typing import Any, Protocol

from eternal import breakers, cycle, invariants, risk
from eternal import ledger as books
from eternal.instruments import apply_rules
from eternal.allocation import targets_in_force
from eternal.config import Settings
from eternal.errors import EternalError
from eternal.execution import execute, scaled_event, sync_record
from eternal.market import MarketView
from eternal.plans import plan_from_json, plan_to_json
from eternal.valuation import Valuation, value_portfolio
from eternal.models import (
    QUOTE,
    Event,
    Fill,
    FundingPayment,
    FundingTick,
    OrderRecord,
    OrderType,
    Plan,
    Sleeve,
    SleeveBook,
    StopLevel,
    Transfer,
    base_of,
    utc,
    utc_cached,
)


_KILL_AT = os.environ.get("ETERNAL_TEST_KILL_AT", "")
"""Read once: the crash tests set it in the environment of the process they start (a lookup at
every boundary was 1.6 % of a backfill's loop)."""


def _crash_point(name: str) -> None:
    """Fault injection for the crash tests: ETERNAL_TEST_KILL_AT=name[:n] in this process's
    environment at its start makes it kill itself with SIGKILL the n-th time (default 1st) it
    passes the boundary `name`. Unset: nothing."""
    if not _KILL_AT:
        return
    want, _, nth = _KILL_AT.partition(":")
    if want != name:
        return
    _CRASH_COUNT[name] = _CRASH_COUNT.get(name, 0) + 1
    if _CRASH_COUNT[name] == int(nth or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


_CRASH_COUNT: dict[str, int] = {}


class ClockError(EternalError):
    """A run asked to act at a time the ledger has already passed."""


class Kind(IntEnum):
    CLOSE = 0
    SETTLEMENT = 1
    OPEN = 2


FLOW_OF = {Kind.CLOSE: "daily-close", Kind.SETTLEMENT: "funding", Kind.OPEN: "open"}
"""Names the decisions of each kind in client order ids (with the event's time)."""


@dataclass(frozen=True, order=True)
class Due:
    """One event of the schedule; `key` orders events as text (stored as the ledger's clock);
    `day`: the candle the event reads: the day that closed (CLOSE), that opens (OPEN), of the
    settlement. Both are made with the event (each is read several times per event)."""

    ts: datetime
    kind: Kind
    key: str = field(init=False, compare=False, repr=False)
    day: datetime = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        ts = self.ts            # f"{ts:%Y-%m-%dT%H:%M:%S}|{kind}", without strftime: a sixth of its cost
        object.__setattr__(self, "key", "%04d-%02d-%02dT%02d:%02d:%02d|%d" % (
            ts.year, ts.month, ts.day, ts.hour, ts.minute, ts.second, self.kind))
        midnight = ts.replace(hour=0, minute=0, second=0, microsecond=0)
        object.__setattr__(self, "day", midnight - timedelta(days=1) if self.kind == Kind.CLOSE else midnight)

    @classmethod
    def from_key(cls, key: str) -> Due:
        ts, kind = key.split("|")
        return cls(utc(ts), Kind(int(kind)))

    def __str__(self) -> str:
        what = {Kind.CLOSE: f"close of {self.day:%Y-%m-%d}", Kind.OPEN: f"open of {self.day:%Y-%m-%d}",
                Kind.SETTLEMENT: f"funding settlement {self.ts:%Y-%m-%d %H:%M}Z"}
        return what[self.kind]


def clock_before(start: datetime) -> str:
    """The clock of a portfolio that starts on day `start`: its first event is that day's close
    (its first decision), then the next day's settlements and open. A live portfolio starts on the
    last day closed at its first run, so nothing is ever decided in hindsight."""
    return Due(utc(start) + timedelta(days=1) - timedelta(seconds=1), Kind.OPEN).key


def due_events(view: MarketView, after: str, until: str) -> list[Due]:
    """Every event with after < key <= until that the data can serve, in order."""
    start = Due.from_key(after).ts
    end = Due.from_key(until).ts
    if view.first_day is None:
        return []
    first = max(view.first_day, start.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1))
    out: list[Due] = []
    day = first
    while day <= view.last_day and day <= end:
        out += [Due(day, Kind.OPEN), Due(day + timedelta(days=1), Kind.CLOSE)]
        day += timedelta(days=1)
    # a settlement is paid at its day's open: only days the data has (the next one waits)
    out += [Due(ts, Kind.SETTLEMENT) for ts in view.settlements_in(max(start, view.first_day),
                                                                   min(end + timedelta(seconds=1),
                                                                       view.last_day + timedelta(days=1)))]
    # their keys compared (time to the second, kind) without formatting one per event
    lo, hi = Due.from_key(after), Due.from_key(until)
    return sorted((d for d in out if (lo.ts, lo.kind) < (d.ts.replace(microsecond=0), d.kind) <= (hi.ts, hi.kind)),
                  key=lambda d: (d.ts, d.kind))


@dataclass
class Portfolio:
    """Our side of the world, as the driver changes it; the ledger port persists it."""

    books: dict[Sleeve, SleeveBook]
    states: dict[Sleeve, dict] = field(default_factory=dict)
    allocation: dict | None = None
    clock: str = ""                                     # key of the last event fully processed
    journal_seq: int = 0                                # the venue's journal booked up to here
    received: dict[Sleeve, float] = field(default_factory=dict)   # USDT in since the last close
    # FUNDING's settlements booked but not yet seen by a tick's decision (asset -> USDT): on a
    # real venue a settlement is often booked at a run's reconciliation, before its tick
    funding_unclaimed: dict[str, float] = field(default_factory=dict)
    halted: dict[str, str] = field(default_factory=dict)          # sleeve -> why (reconciliation)
    deposits: list[dict] = field(default_factory=list)            # waiting for the next close
    open_orders: dict[str, OrderRecord] = field(default_factory=dict)
    stops: dict[Sleeve, dict[str, StopLevel]] = field(default_factory=dict)
    risk: breakers.RiskState = field(default_factory=breakers.RiskState)   # unit value, breakers, kill switch
    mode: str = ""                                      # the venue it trades on (paper, demo, testnet, live)
    # USDT each sleeve was given, net (starting capital, deposits, transfers in less out; coins at
    # the price they moved at): its P&L since the start is its equity less this
    capital_in: dict[Sleeve, float] = field(default_factory=dict)
    last_close: dict[str, Any] = field(default_factory=dict)   # the last close's equity and P&L by sleeve

    def doc(self) -> dict[str, Any]:
        """The small part persisted as one document (books, states and orders have their tables)."""
        return {"clock": self.clock, "journal_seq": self.journal_seq,
                "received": {s.value: v for s, v in self.received.items()}, "halted": dict(self.halted),
                "funding_unclaimed": dict(self.funding_unclaimed),
                "deposits": list(self.deposits),
                "stops": {s.value: {sym: [lv.price, lv.reason] for sym, lv in lv_.items()}
                          for s, lv_ in self.stops.items()},
                "risk": breakers.dump(self.risk), "mode": self.mode,
                "capital_in": {s.value: v for s, v in self.capital_in.items()}, "last_close": dict(self.last_close)}

    def load_doc(self, doc: dict[str, Any]) -> None:
        self.clock = doc.get("clock", "")
        self.journal_seq = doc.get("journal_seq", 0)
        self.received = {Sleeve(s): v for s, v in doc.get("received", {}).items()}
        self.halted = dict(doc.get("halted", {}))
        self.funding_unclaimed = dict(doc.get("funding_unclaimed", {}))
        self.deposits = list(doc.get("deposits", []))
        self.stops = {Sleeve(s): {sym: StopLevel(p, r) for sym, (p, r) in lv.items()}
                      for s, lv in doc.get("stops", {}).items()}
        self.risk = breakers.load(doc.get("risk"))
        self.mode = doc.get("mode", "")
        if "capital_in" in doc:                 # a ledger from before it: SqlLedger.load sums its transfers
            self.capital_in = {Sleeve(s): v for s, v in doc["capital_in"].items()}
        self.last_close = dict(doc.get("last_close", {}))


@dataclass
class Batch:
    """What one event changed, written by the ledger in one transaction with the new clock."""

    due: Due | None
    orders: list[OrderRecord] = field(default_factory=list)
    fills: list[Fill] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    transfers: list[Transfer] = field(default_factory=list)
    payments: list[FundingPayment] = field(default_factory=list)
    equity: list[dict] = field(default_factory=list)
    plan_key: str | None = None
    deposits_taken: list[dict] = field(default_factory=list)
    label: str | None = None            # names a batch without an event ("reconcile", "override")


class Ledger(Protocol):
    """Where the portfolio lives between runs (memory in a backfill, the database in flows)."""

    def load(self) -> Portfolio | None: ...
    def initialise(self, portfolio: Portfolio, capital: float, shares: dict[Sleeve, float], ts: datetime) -> None: ...
    def pending_plan(self) -> tuple[str, dict] | None: ...
    def store_plan(self, key: str, plan: dict) -> None: ...
    def commit(self, portfolio: Portfolio, batch: Batch) -> None: ...


@dataclass
class RunReport:
    processed: list[Due] = field(default_factory=list)
    finished_plan: str | None = None
    adopted: list[Fill] = field(default_factory=list)
    differences: dict[str, list[str]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    orders: list[OrderRecord] = field(default_factory=list)
    payments: list[FundingPayment] = field(default_factory=list)
    clock: str = ""
    closing: Valuation | None = None     # the portfolio at the last close processed (its equity records)

    def line(self) -> str:
        if not self.processed:
            return f"nothing due: the ledger is at {Due.from_key(self.clock) if self.clock else 'its start'}"
        return (f"{len(self.processed)} events from the {self.processed[0]} to the {self.processed[-1]}: "
                f"{len({o.client_order_id for o in self.orders})} orders, {len(self.payments)} funding payments")


def equity_rows(day: datetime, books: dict[Sleeve, SleeveBook], closes: dict[str, float],
                marks: dict[str, float]) -> list[dict]:
    """One row per sleeve at a close: equity marked to market (spot at the close, perps at the
    mark) and cash, in USDT (`eternal.valuation`)."""
    return value_portfolio(day, books, closes, marks).equity_rows()


# reconciliation --------------------------------------------------------------------------------
def book_differences(ours: SleeveBook, theirs: SleeveBook | None, tolerance: float = 1e-6) -> list[str]:
    """What differs between our book of a sleeve and the venue's, one line per item (empty: equal)."""
    theirs = theirs or SleeveBook(ours.sleeve)

    def differ(a: float, b: float) -> bool:
        return not math.isclose(a, b, rel_tol=1e-9, abs_tol=tolerance)

    out = []
    if differ(ours.cash, theirs.cash):
        out.append(f"cash: ledger {ours.cash:.8f} USDT, exchange {theirs.cash:.8f}")
    for asset in sorted(set(ours.holdings) | set(theirs.holdings) | set(ours.staked) | set(theirs.staked)):
        for what, a, b in (("free", ours.holdings.get(asset, 0.0), theirs.holdings.get(asset, 0.0)),
                           ("staked", ours.staked.get(asset, 0.0), theirs.staked.get(asset, 0.0))):
            if differ(a, b):
                out.append(f"{asset} {what}: ledger {a:.10g}, exchange {b:.10g}")
    for sym in sorted(set(ours.perps) | set(theirs.perps)):
        a, b = ours.perps.get(sym), theirs.perps.get(sym)
        qa, qb = (a.qty if a else 0.0), (b.qty if b else 0.0)
        if differ(qa, qb):
            out.append(f"{sym} position: ledger {qa:+.10g}, exchange {qb:+.10g}")
    return out


def account_differences(ours: list[SleeveBook], theirs: SleeveBook, marks: dict[str, float],
                        tolerance: float = 1e-6) -> list[str]:
    """What differs between one venue account that holds several (virtual) sleeves and the sum of
    their books: each coin, each perp's net qty, and the USDT equity at the venue's `marks`
    (cash + margin + unrealised P&L). Equity, not cash: a sleeve's exit that crosses another's
    position realises P&L at the venue on the net position, in our ledger on the sleeve's, and the
    two differ by exactly the unrealised P&L that remains. Empty: equal."""
    def differ(a: float, b: float, scale: float = 0.0) -> bool:
        return not math.isclose(a, b, rel_tol=1e-9, abs_tol=tolerance + 1e-12 * scale)

    out = []
    for asset in sorted({a for b in [*ours, theirs] for a in (*b.holdings, *b.staked)}):
        for what, field_ in (("free", "holdings"), ("staked", "staked")):
            a = math.fsum(getattr(b, field_).get(asset, 0.0) for b in ours)
            t = getattr(theirs, field_).get(asset, 0.0)
            if differ(a, t):
                out.append(f"{asset} {what}: ledger {a:.10g}, exchange {t:.10g}")
    gross = 0.0
    for sym in sorted({s for b in [*ours, theirs] for s in b.perps}):
        a = math.fsum(b.perps[sym].qty for b in ours if sym in b.perps)
        t = theirs.perps[sym].qty if sym in theirs.perps else 0.0
        if differ(a, t):
            out.append(f"{sym} position: ledger {a:+.10g}, exchange {t:+.10g}")
        if sym in theirs.perps or a:
            gross += abs(t) * marks.get(sym, 0.0)

    def equity(b: SleeveBook) -> float:
        return b.cash + math.fsum(p.margin + (marks.get(s, p.entry_price) - p.entry_price) * p.qty
                                  for s, p in b.perps.items())

    a, t = math.fsum(equity(b) for b in ours), equity(theirs)
    if differ(a, t, gross):
        out.append(f"USDT equity at the marks: ledger {a:.8f}, exchange {t:.8f}")
    return out


# the driver ------------------------------------------------------------------------------------
class Driver:
    """One portfolio, one market view, one exchange, one ledger; `run` advances them together."""

    def __init__(self, view: MarketView, exchange, ledger: Ledger, settings: Settings,
                 sleeves: Iterable[Sleeve], *, orchestrated: bool,
                 on_close: Callable[[datetime, Portfolio, dict, dict], None] | None = None,
                 deposit_shares: dict[Sleeve, float] | None = None, simulate_resume: bool = False,
                 breakers_on: bool = True):
        """`deposit_shares`: how a deposit is split when the orchestration layer is off (a partial
        backfill: the selected sleeves' weights); with it on, the allocation rules split it.
        `simulate_resume`: a replay's stand-in operator resumes the breakers by
        `RiskParams.replay_resume_days` (live, only `eternal resume` does). `breakers_on`: False for
        a partial backfill, which has no portfolio for the portfolio circuit breakers to guard."""
        self.view, self.exchange, self.ledger, self.settings = view, exchange, ledger, settings
        self.sleeves = tuple(sleeves)
        self.daily_sleeves = tuple(s for s in self.sleeves if s in cycle.ENGINES)
        self.funding_active = Sleeve.FUNDING in self.sleeves
        self.tick_sleeves = (Sleeve.FUNDING,)       # whose held caps a settlement's risk step checks
        self.orchestrated = orchestrated
        self.on_close = on_close
        self.deposit_shares = dict(deposit_shares or {})
        self.simulate_resume = simulate_resume
        self.until: datetime | None = None          # the run's last event time (set by `run`)
        self.weights = settings.weights.by_sleeve()      # the sleeves' weights, read at every close
        self.risk_params = (settings.risk if breakers_on or not settings.risk.breakers_enabled
                            else settings.risk.model_copy(update={"breakers_enabled": False}))

    # the run -----------------------------------------------------------------------------------
    def open(self, capital: float, shares: dict[Sleeve, float], start: datetime) -> Portfolio:
        """The stored portfolio, or a new one with `capital` split by `shares` from `start` on."""
        p = self.ledger.load()
        if p is None:
            p = Portfolio({s: SleeveBook(s, capital * w) for s, w in shares.items()}, clock=clock_before(start),
                          capital_in={s: capital * w for s, w in shares.items()})
            self.ledger.initialise(p, capital, shares, utc(start))
        return p

    def run(self, p: Portfolio, until: str) -> RunReport:
        """Finish any stored plan, reconcile, then process every event due up to the key `until`."""
        report = RunReport()
        self.until = Due.from_key(until).ts
        pending = self.ledger.pending_plan()
        if pending is not None:
            key, stored = pending
            self.process(p, Due.from_key(key), report, stored=stored)
            report.finished_plan = key
        self.reconcile(p, report)
        for due in due_events(self.view, p.clock, until):
            self.process(p, due, report)
        report.clock = p.clock
        return report

    def reconcile(self, p: Portfolio, report: RunReport) -> None:
        """Spec 7.3: book what the venue did that our ledger missed (a fill of one of our orders,
        a settlement, a reward: adopted with an event), then compare every sleeve's book; a sleeve
        that still differs is halted (no new orders for it) with an alert holding both sides."""
        batch = Batch(None)
        adopted = self.sync(p, batch)
        for f in adopted:
            batch.events.append(Event(f.ts, "fill_adopted", f"{f.client_order_id}: {f.symbol} {f.side} {f.qty:.8g} "
                                      f"at {f.price:.2f} was filled by {self.exchange.name} while our ledger "
                                      "was not running; booked now", f.sleeve, "warning",
                                      {"trade_id": f.trade_id}))
        report.adopted += adopted
        now = utc(Due.from_key(p.clock).ts)
        self.check_invariants(p, batch, now)           # a broken book is named as such, then compared
        # each venue account against what our ledger holds in it: a sleeve's own account against its
        # book; an account of virtual sleeves against their sum (all of them halted when it differs)
        shared = self.exchange.account_books()
        compared = [((sleeve,), book_differences(book, self.exchange.books.get(sleeve)))
                    for sleeve, book in p.books.items() if not any(sleeve in sls for sls, _, _ in shared)]
        compared += [(sls, account_differences([p.books[s] for s in sls if s in p.books], theirs, marks))
                     for sls, theirs, marks in shared]
        for sleeves, diff in compared:
            for sleeve in sleeves:
                if not diff or sleeve.value in p.halted:
                    continue
                whose = str(sleeve) if len(sleeves) == 1 else f"{sleeve} (one Bybit account with {', '.join(map(str, sleeves))})"
                p.halted[sleeve.value] = "; ".join(diff)
                batch.events.append(Event(utc(Due.from_key(p.clock).ts), "reconciliation_failed",
                                          f"{whose}: ledger and exchange differ ({'; '.join(diff)}): sleeve "
                                          "halted, no new orders until an operator resolves it", sleeve,
                                          "alert", {"differences": diff}))
                report.differences[sleeve.value] = diff
        self.check_exchange_health(p, batch, now)
        self.check_halt_request(p, batch)
        if p.risk.halted:
            self.cancel_open_orders(p, batch, now, f"kill switch engaged ({p.risk.kill_switch.reason})")
        if batch.events or batch.fills or batch.orders or batch.payments:
            self.ledger.commit(p, batch)
            report.events += batch.events

    def process(self, p: Portfolio, due: Due, report: RunReport, stored: dict | None = None) -> None:
        """One event: the venue lives through it, we book what it did, decide, store, act, commit."""
        view, ex, s = self.view, self.exchange, self.settings
        i = view.index(due.day)
        if i is None:
            raise EternalError(f"no market data for the {due}: it cannot be processed")
        batch = Batch(due)
        prices = self.decision_prices(due, i)
        if due.kind == Kind.OPEN:
            ex.on_market(due.key, due.day, opens=view.opens(i))
            _crash_point("filled_not_booked")
        elif due.kind == Kind.CLOSE:
            apy = s.core.staking_apy if s.core.staking_apy >= s.core.staking_min_apy else None
            ex.on_market(due.key, due.day, bars=view.perp_bars(i), staking_apy=apy, prices=prices)
        else:
            opens = view.opens(i)
            ex.on_market(due.key, due.ts, settlements={sym: (rate, opens[sym]) for sym, rate in
                                                      view.settlement_rates[due.ts].items() if sym in opens},
                         prices=prices)
        self.sync(p, batch)
        plan, state = None, p.risk
        if stored is not None and (due.kind == Kind.CLOSE or self.funding_active):
            plan, received, allocation, deposits = plan_from_json(stored)
            state = breakers.load(stored["risk"]) if "risk" in stored else p.risk
        elif due.kind == Kind.CLOSE:
            closes, marks = view.closes(i), view.marks(i)
            nav = math.fsum(b.equity(closes, marks) for b in p.books.values())
            state, risk_events = breakers.observe(p.risk, nav, due.ts, self.risk_params,
                                                  simulate_resume=self.simulate_resume)
            if state.halted:        # nothing is decided under the kill switch (deposits wait for the resume)
                plan, received, allocation, deposits = Plan(due.ts, due.day, [], {}, []), dict(p.received), None, []
            else:
                plan, received, allocation, deposits = self.decide_close(p, due, i, self.refused(p, state, due.ts))
            plan.events[:0] = risk_events
            if state.halted or state.level >= 3:      # L3 and L4: resting entries do not fill either
                self.cancel_open_orders(p, batch, due.ts, f"circuit breaker L{state.level}" if not state.halted
                                        else f"kill switch engaged ({state.kill_switch.reason})",
                                        entries_only=not state.halted)
            state = breakers.issue_units(state, math.fsum(d["usdt"] for d in deposits))
            self.approve(p, due, i, plan, state)
        elif due.kind == Kind.SETTLEMENT and self.funding_active and not state.halted:
            plan, received, allocation, deposits = self.decide_tick(p, due, i, batch,
                                                                    bool(self.refused(p, state, due.ts, (Sleeve.FUNDING,))))
            self.approve(p, due, i, plan, state)
        if plan is not None:
            seen_funding = dict(p.funding_unclaimed)
            if stored is None and getattr(self.ledger, "keeps_plans", True):   # a backfill's ledger does not
                self.ledger.store_plan(due.key, {**plan_to_json(plan, received, allocation, deposits),
                                                 "risk": breakers.dump(state), "funding_seen": seen_funding})
                _crash_point("plan_stored")
            p.risk = state
            if plan.intents or plan.transfers:      # an operator's halt since the run began stops them
                self.check_halt_request(p, batch)
            self.act(p, due, plan, batch, prices, fresh=stored is None)
            if due.kind == Kind.SETTLEMENT:
                # a settlement's orders fill at once (on paper at its price, as on a venue): booked
                # with it, so the positions hold from the settlement on
                if hasattr(ex, "fill_at_once"):
                    ex.fill_at_once(due.ts, view.opens(i), {o.client_order_id for o in batch.orders
                                                            if not o.status.is_final})
                self.sync(p, batch)
                batch.orders = list({o.client_order_id: o for o in batch.orders}.values())
            p.received, p.allocation = received, allocation if allocation is not None else p.allocation
            if due.kind == Kind.SETTLEMENT:     # the tick's decision saw them (a stored plan: before it was stored)
                seen = stored.get("funding_seen", p.funding_unclaimed) if stored is not None else seen_funding
                p.funding_unclaimed = {a: v - seen.get(a, 0.0) for a, v in p.funding_unclaimed.items()
                                       if abs(v - seen.get(a, 0.0)) > 1e-12}
            if deposits:        # most events take none (a backfill's pending deposits are many)
                taken = {d["reference"] for d in deposits}
                p.deposits = [d for d in p.deposits if d["reference"] not in taken]
            batch.deposits_taken, batch.plan_key = deposits, due.key
        if due.kind == Kind.CLOSE:
            closes, marks = view.closes(i), view.marks(i)
            report.closing = self.valuation(p, due.day, closes, marks)
            batch.equity = report.closing.equity_rows()
            if self.on_close is not None:
                self.on_close(due.day, p, closes, marks)
        if (due.kind == Kind.CLOSE or batch.fills or batch.payments or batch.transfers
                or (plan is not None and plan.stakes)):
            # only what changed a book can break one: the books change only through what the
            # batch holds (the venue's fills, payments and rewards, our transfers and stakes);
            # a close checks its equity rows too
            self.check_invariants(p, batch, due.ts, *((closes, marks) if due.kind == Kind.CLOSE else ()))
        p.clock = due.key
        _crash_point("before_record")
        self.ledger.commit(p, batch)
        report.processed.append(due)
        report.events += batch.events
        report.orders += batch.orders
        report.payments += batch.payments

    def valuation(self, p: Portfolio, day: datetime, closes: dict[str, float],
                  marks: dict[str, float]) -> Valuation:
        """The portfolio at the close of `day`, with the targets in force, the stops kept and the
        P&L of the day and since the start; remembered as the ledger's last close."""
        s = self.settings
        v = value_portfolio(day, p.books, closes, marks,
                            targets_in_force(p.allocation, s.allocation, self.weights), p.stops,
                            capital_in=p.capital_in, previous=p.last_close or None)
        p.last_close = v.close_doc()
        return v

    # what the venue did ------------------------------------------------------------------------
    def sync(self, p: Portfolio, batch: Batch) -> list[Fill]:
        """Book the venue's journal since our cursor and refresh our open orders from it; returns
        the fills booked."""
        fills = []
        rereads = hasattr(self.exchange, "journal_and_late") and hasattr(self.ledger, "known_trades")
        if rereads:
            # a venue that lists a fill late (Bybit) gives the recent fills behind our cursor too:
            # each booked unless its trade is; an entry above the cursor whose trade is booked
            # (its rank moved when a late one came in at its ms) is not booked again
            journal, late = self.exchange.journal_and_late(p.journal_seq)
            journal = late + journal
            trades = {item.trade_id for _, kind, item in journal if kind == "fill"}
            booked = (self.ledger.known_trades(trades) if trades else set()) | {f.trade_id for f in batch.fills}
        else:
            journal, booked = self.exchange.journal_since(p.journal_seq), set()
        for seq, kind, item in journal:
            if kind == "fill" and item.trade_id in booked:
                p.journal_seq = max(p.journal_seq, seq)
                continue
            if kind == "fill":
                booked.add(item.trade_id)
                books.apply_fill(p.books[item.sleeve], item)
                fills.append(item)
                if item.reason in ("hard_stop", "trailing_stop", "liquidation"):
                    batch.events.append(Event(item.ts, "liquidation" if item.reason == "liquidation" else "stop_filled",
                                              f"{item.symbol} {item.side} {item.qty:.8g} at {item.price:.2f} "
                                              f"({item.reason})", item.sleeve,
                                              "alert" if item.reason == "liquidation" else "warning",
                                              {"trade_id": item.trade_id, "qty": item.qty}))
            elif kind in ("funding", "account_funding"):
                # an account of virtual sleeves is paid on its net position: split by our positions
                for pay in [item] if kind == "funding" else books.split_funding(p.books, *item):
                    books.apply_funding(p.books[pay.sleeve], pay)
                    batch.payments.append(pay)
                    if pay.sleeve == Sleeve.FUNDING:
                        asset = base_of(pay.symbol)
                        p.funding_unclaimed[asset] = p.funding_unclaimed.get(asset, 0.0) + pay.amount
            else:
                sleeve, asset, reward = item
                book = p.books[sleeve]
                book.staked[asset] = book.staked.get(asset, 0.0) + reward
                if reward:
                    when = batch.due.ts if batch.due is not None else Due.from_key(p.clock).ts
                    batch.events.append(Event(when, "staking_reward", f"{reward:.8f} {asset} staking reward", sleeve,
                                              data={"asset": asset, "qty": reward}))
            p.journal_seq = max(p.journal_seq, seq)
        batch.fills += fills
        for cid in list(p.open_orders):
            rec = p.open_orders[cid]
            order = self.exchange.fetch_order(cid, rec.intent.sleeve)
            if (order is not None and not order.status.is_final and rec.intent.order_type == OrderType.MARKET
                    and getattr(self.exchange, "immediate_market_orders", False)):
                # on a venue where a market order is immediate (Bybit), a rest still open is one a
                # dead run did not follow to its end: cancelled now, the engines plan the rest again
                # (the paper exchange fills market orders at the next open: they rest until then)
                order = self.exchange.cancel_order(cid, rec.intent.sleeve, "rest of a partial fill") or order
            if order is None or order.status == rec.status:
                continue
            sync_record(rec, order, set())
            rec.updated_at = order.fills[-1].ts if order.fills else rec.updated_at
            batch.orders.append(rec)
            if (scaled := scaled_event(rec, rec.updated_at)) is not None:
                batch.events.append(scaled)
            if order.error:
                batch.events.append(Event(rec.updated_at, "order_rejected", order.error, rec.intent.sleeve,
                                          "alert", {"client_order_id": cid}))
            if rec.status.is_final:
                del p.open_orders[cid]
        return fills

    def decision_prices(self, due: Due, i: int) -> dict[str, float]:
        """Symbol -> the price an event's decisions are made at (a close: spot closes and perp
        marks; a settlement: the opens): the venue's last price when their orders are placed, so a
        minimum notional is judged at it on both sides."""
        from eternal.models import SPOT_SYMBOLS

        if due.kind == Kind.CLOSE:
            return {SPOT_SYMBOLS[a]: c for a, c in self.view.closes(i).items()} | self.view.marks(i)
        return self.view.opens(i)

    # decisions (pure, in eternal.cycle) -----------------------------------------------------------
    def refused(self, p: Portfolio, state: breakers.RiskState, now: datetime,
                sleeves: Iterable[Sleeve] = (Sleeve.TREND_1, Sleeve.TREND_2, Sleeve.FUNDING, Sleeve.TACTICAL)
                ) -> frozenset:
        """Those of `sleeves` whose new entries the risk step would refuse now: they are told not to try."""
        return frozenset(sl for sl in sleeves
                         if sl.value in p.halted or breakers.size_factor(state, sl.value, now, self.risk_params) == 0)

    def decide_close(self, p: Portfolio, due: Due, i: int, refused: frozenset = frozenset()):
        deposits = [d for d in p.deposits if utc_cached(d["ts"]) <= due.ts]
        usdt = math.fsum(d["usdt"] for d in deposits)
        snap = self.view.snapshot(i, p.books, p.states, p.received, entries_refused=refused)
        plan, received, allocation = cycle.at_close(snap, self.settings, self.daily_sleeves, p.allocation, usdt,
                                                    self.orchestrated, self.deposit_shares)
        return plan, received, allocation, deposits

    def decide_tick(self, p: Portfolio, due: Due, i: int, batch: Batch, refused: bool = False):
        view = self.view
        opens = view.opens(i)
        assets = [a for a in ("BTC", "ETH", "SOL") if a in view.perp_assets and a in view.spot_assets]
        received = dict(p.funding_unclaimed)        # every FUNDING settlement booked since the last tick
        from eternal.models import PERP_SYMBOLS, SPOT_SYMBOLS

        predicted = {a: view.latest_rate(a, due.ts) for a in assets}
        # the settlement a live run is at: the venue's own prediction of the next rate (a tick
        # caught up from the past keeps the last settled one, as a backfill does)
        if (hasattr(self.exchange, "predicted_funding_rate") and self.until is not None
                and self.until - due.ts < timedelta(hours=8)):
            for a in assets:
                rate = self.exchange.predicted_funding_rate(PERP_SYMBOLS[a])
                predicted[a] = rate if rate is not None else predicted[a]
        tick = FundingTick(due.ts, {a: opens[SPOT_SYMBOLS[a]] for a in assets},
                           {a: opens[PERP_SYMBOLS[a]] for a in assets},
                           predicted,
                           {a: view.recent_rates(a, due.ts) for a in assets},
                           p.books, p.states.get(Sleeve.FUNDING), received,
                           fills_deferred=False,      # a tick's orders fill at once everywhere (`process`)
                           entries_refused=refused)
        plan = cycle.funding_tick(tick, self.settings)
        carried = dict(p.received)
        for t in plan.transfers:
            if t.asset == QUOTE:
                carried[t.to_sleeve] = carried.get(t.to_sleeve, 0.0) + t.qty
        return plan, carried, None, []

    # acting -------------------------------------------------------------------------------------
    def act(self, p: Portfolio, due: Due, plan: Plan, batch: Batch, prices: dict[str, float] | None = None,
            fresh: bool = False) -> None:
        """The plan at the venue and in our books: transfers and stakes under keys, stops, orders
        under client order ids. Safe to repeat after a crash: a plan read back from the ledger
        (`fresh` False) has each order looked up before it is sent; one this run has just decided
        and stored (`fresh`) cannot have been sent by an earlier run, and is sent without.
        Every intent first meets the exchange's trading rules (its `rules`: the venue's as last
        read on Bybit, the packaged `eternal.instruments` table on paper; at the decision `prices`):
        its qty rounded down to the step; one under a minimum is dropped with an event and its
        engine sees, at its next decision, that nothing was filled."""
        ex = self.exchange
        for n, t in enumerate(plan.transfers):
            if t.qty <= 0:          # under the venue's precision (`models.transfer_qty`): nothing moves
                continue
            ex.transfer(t, f"transfer|{due.key}|{n}")
            _crash_point("transfer_sent")
            books.apply_transfer(p.books, t)
            batch.transfers.append(t)
            worth = t.qty if t.asset == QUOTE else t.qty * (prices or {}).get(t.asset, 0.0)
            for sleeve, sign in ((t.from_sleeve, -1.0), (t.to_sleeve, 1.0)):
                if sleeve is not None:
                    p.capital_in[sleeve] = p.capital_in.get(sleeve, 0.0) + sign * worth
        for sleeve, moves in plan.stakes.items():
            for asset, qty in moves.items():
                moved = ex.stake(sleeve, asset, qty, f"stake|{due.key}|{sleeve.value}|{asset}")
                books.stake(p.books[sleeve], asset, moved)
        # what a venue keeping several sleeves in one account sizes their stop orders by (Bybit's
        # virtual sleeves); a venue with an account per sleeve knows it itself
        ex.use_ledger({(s, sym): pos.qty for s, b in p.books.items() for sym, pos in b.perps.items()},
                      {(s, sym): lv for s, levels in p.stops.items() for sym, lv in levels.items() if lv})
        for sleeve, levels in plan.stops.items():
            for symbol, level in levels.items():
                ex.set_stop(sleeve, symbol, level)
                _crash_point("stop_set")
            p.stops[sleeve] = dict(levels)
        intents = []
        if prices and hasattr(ex, "use_decision_prices"):     # a real venue's slippage guard (spec 8.1)
            ex.use_decision_prices(prices)
        valid, dropped = apply_rules(plan.intents, prices or {}, due.ts, getattr(ex, "rules", None))
        batch.events += dropped
        for intent in valid:      # approved before the plan was stored; halts since then still hold
            why = (f"kill switch engaged ({p.risk.kill_switch.reason})" if p.risk.halted
                   and intent.reason not in risk.BREAKER_REASONS else
                   f"{intent.sleeve} is halted ({p.halted[intent.sleeve.value]})" if intent.sleeve.value in p.halted
                   else None)
            if why is not None:
                batch.events.append(Event(due.ts, "order_blocked", f"{why}: {intent.key} not sent",
                                          intent.sleeve, "alert", {"intent": intent.key}))
            else:
                intents.append(intent)
        result = execute(intents, ex, flow=FLOW_OF[due.kind], scheduled=due.ts, now=due.ts, known={},
                         known_trades=set(), fresh=fresh)
        p.states.update(plan.states)
        batch.events += plan.events + result.events
        for rec in result.orders:
            batch.orders.append(rec)
            if not rec.status.is_final:
                p.open_orders[rec.client_order_id] = rec

    # governance (eternal.risk, eternal.breakers, eternal.invariants) ------------------------------
    def risk_prices(self, due: Due, i: int) -> tuple[dict[str, float], dict[str, float]]:
        """(asset -> spot price, perp symbol -> mark) at an event's decision."""
        from eternal.models import PERP_SYMBOLS, SPOT_SYMBOLS

        if due.kind == Kind.CLOSE:
            return self.view.closes(i), self.view.marks(i)
        opens = self.view.opens(i)
        return ({a: opens[sym] for a, sym in SPOT_SYMBOLS.items() if sym in opens},
                {sym: opens[sym] for sym in PERP_SYMBOLS.values() if sym in opens})

    def approve(self, p: Portfolio, due: Due, i: int, plan: Plan, state: breakers.RiskState) -> None:
        """The risk step on a decided plan, in place: the breakers' closing orders and the held
        caps' trims join the engines' intents, then every intent is approved, reduced or refused
        (`eternal.risk`), on the books as the plan's transfers and stakes leave them."""
        if (due.kind != Kind.CLOSE and not plan.intents and not plan.transfers and not plan.stakes
                and not any(p.books[sl].perps for sl in self.tick_sleeves)):
            return      # a tick with nothing to weigh and no position a held cap could trim (most ticks)
        # the risk step reads these books and never changes them: copied only when the plan moves money
        after = {sl: b.copy() for sl, b in p.books.items()} if plan.transfers or plan.stakes else p.books
        for t in plan.transfers:
            books.apply_transfer(after, t)
        for sleeve, moves in plan.stakes.items():
            for asset, qty in moves.items():
                books.stake(after[sleeve], asset, qty)
        prices, marks = self.risk_prices(due, i)
        view = risk.RiskView(due.ts, after, prices, marks, state, self.risk_params, self.settings.fees,
                             dict(p.halted), list(p.open_orders.values()), portfolio_wide=self.orchestrated)
        extra: list = []
        if due.kind == Kind.CLOSE:
            closing, unstake = risk.breaker_orders(view)
            for sleeve, moves in unstake.items():
                for asset, qty in moves.items():
                    plan.stakes.setdefault(sleeve, {})[asset] = plan.stakes.get(sleeve, {}).get(asset, 0.0) + qty
            trims, trim_events = risk.held_limits(view, self.daily_sleeves, portfolio_wide=self.orchestrated)
            extra = closing + trims
        else:
            trims, trim_events = risk.held_limits(view, self.tick_sleeves, portfolio_wide=False)
            extra = trims
        approved, events = risk.approve(plan.intents + extra, view)
        plan.intents = approved
        plan.events += trim_events + events

    def check_invariants(self, p: Portfolio, batch: Batch, now: datetime, closes: dict | None = None,
                         marks: dict | None = None) -> None:
        """`eternal.invariants` on the books and on what this step booked; a sleeve with a broken
        invariant is halted (no new orders) with an alert."""
        known = {o.client_order_id for o in batch.orders} | set(p.open_orders)
        asked = {f.client_order_id for f in batch.fills} - known
        if asked and hasattr(self.ledger, "known_orders"):     # an order of an earlier event, filled since
            known |= self.ledger.known_orders(asked)
        found = invariants.check(p.books, fills=batch.fills, known_orders=known, transfers=batch.transfers,
                                 equity=batch.equity if closes is not None else (), closes=closes, marks=marks)
        for sleeve, problems in found.items():
            if sleeve.value in p.halted:
                continue
            p.halted[sleeve.value] = "invariant: " + "; ".join(problems)
            batch.events.append(Event(now, "invariant_broken", f"{sleeve}: ledger invariant broken ("
                                      f"{'; '.join(problems)}): sleeve halted, no new orders until an operator "
                                      "resolves it", sleeve, "alert", {"problems": problems}))

    def check_exchange_health(self, p: Portfolio, batch: Batch, now: datetime) -> None:
        """Spec 2.4: withdrawals of USDT, BTC or ETH suspended at the exchange halt all activity."""
        suspended = getattr(self.exchange, "withdrawals_suspended", lambda: [])()
        watched = sorted(set(suspended) & {"USDT", "BTC", "ETH"})
        if not watched or p.risk.halted:
            return
        reason = f"{self.exchange.name} reports withdrawals of {', '.join(watched)} suspended"
        p.risk, events = breakers.halt(p.risk, now, "exchange health", reason)
        batch.events.append(Event(now, "exchange_unhealthy", reason + ": all activity halted", None, "alert",
                                  {"assets": watched}))
        batch.events += events

    def check_halt_request(self, p: Portfolio, batch: Batch) -> None:
        """`eternal halt` asked for the kill switch while this run holds the lock: engage it now
        (stamped with the request's time), so nothing more is sent from this event on."""
        request = getattr(self.ledger, "halt_request", lambda: None)()
        if not request or p.risk.halted:
            return
        p.risk, events = breakers.halt(p.risk, utc(request["at"]), request["who"], request["reason"])
        batch.events += events
        self.cancel_open_orders(p, batch, utc(request["at"]), f"kill switch engaged by {request['who']}")

    def cancel_open_orders(self, p: Portfolio, batch: Batch, now: datetime, why: str, *,
                           entries_only: bool = False) -> None:
        """Cancel our resting orders at the venue (a breaker's own closing orders stay;
        `entries_only`: only TREND's, FUNDING's and TACTICAL's orders that add exposure)."""
        for cid, rec in list(p.open_orders.items()):
            if rec.intent.reason in risk.BREAKER_REASONS:
                continue
            if entries_only and (rec.intent.sleeve == Sleeve.CORE or rec.intent.reason == "rehedge"
                                 or not risk.opens(rec.intent, p.books[rec.intent.sleeve])):
                continue
            order = self.exchange.cancel_order(cid, rec.intent.sleeve, why)
            if order is None:
                continue
            sync_record(rec, order, set())
            rec.updated_at = now
            batch.orders.append(rec)
            if rec.status.is_final:
                del p.open_orders[cid]
            batch.events.append(Event(now, "order_cancelled", f"{cid} cancelled: {why}", rec.intent.sleeve,
                                      "warning", {"client_order_id": cid}))

    def override(self, p: Portfolio, action: str, now: datetime, who: str, reason: str, *,
                 confirm_kill_switch: bool = False) -> list[Event]:
        """An operator's `halt` (the kill switch: resting orders cancelled) or `resume` (breakers
        and kill switch, by `eternal.breakers.resume`'s rules), committed at once with its event
        (who, why, when). Raises breakers.ResumeRefused when the rules refuse it."""
        batch = Batch(None, label=f"override {action}")
        if action == "halt":
            p.risk, events = breakers.halt(p.risk, now, who, reason)
            batch.events += events
            self.cancel_open_orders(p, batch, now, f"kill switch engaged by {who}")
        else:
            p.risk, events = breakers.resume(p.risk, now, who, reason, self.risk_params,
                                             confirm_kill_switch=confirm_kill_switch)
            batch.events += events
        self.ledger.commit(p, batch)
        return batch.events
