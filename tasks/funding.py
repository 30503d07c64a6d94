"""Funding settlements and the FUNDING engine's tick: the I/O edges of flows/funding_collection.py.

Paper mode only (the paper exchange lives in our database, so its books and ours can be written in
one transaction). A tick at settlement time `ts` runs exactly once, however often it is re-run:

* settlement: the paper exchange repeats its last settlement of a symbol without paying again,
  and our ledger books a payment only when (sleeve, symbol, ts) is not in funding_payments yet;
* decision: the FUNDING engine decides once per `ts`. Its plan is recorded (a `funding_tick`
  event holding the intents and transfers) in the same transaction as its transfers, its new
  state and its events; a re-run re-executes the recorded intents instead of deciding again from
  the already advanced state (which would count the compounding share twice);
* orders: `tasks.execution.execute_plan`, whose client order ids derive from (flow, ts, sleeve,
  intent), never sends one twice.

Prices: paper mode has no live ticker, so a settlement is valued at the latest perp daily close at
or before `ts` (the close of the last day that closed by then); the engine sees the spot and perp
closes of that day. The predicted rate is the latest settled one (live would use the exchange's
next-funding estimate).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from sqlalchemy import select

from eternal import cycle
from eternal import ledger as books_ledger
from eternal.config import Mode, Settings
from eternal.errors import ConfigError, DataQualityError, StaleDataError
from eternal.exchange.paper import FillPolicy, PaperExchange
from eternal.execution import ExecutionResult
from eternal.models import (
    PERP_SYMBOLS,
    SPOT_SYMBOLS,
    Event,
    FundingPayment,
    FundingTick,
    Market,
    OrderIntent,
    OrderType,
    Plan,
    Quote,
    Side,
    Sleeve,
    Transfer,
    base_of,
    last_closed_day,
    utc,
)
from eternal.store.models import EventRow
from tasks.context import stores
from eternal.store.locks import exclusive
from tasks.execution import PAPER, open_paper_exchange

FLOW = "funding-collection"
DECISION = "funding_tick"         # event kind holding a tick's recorded plan (its intents, transfers)
SETTLEMENT_HOURS = 8              # settlements at 00:00, 08:00 and 16:00 UTC
LOOKBACK = timedelta(days=7)      # no settlement stored in the week before asof: the data is stale
SETTLED_KEPT = 3                  # settled rates the engine sees (its breaker counts 3)


@dataclass(frozen=True)
class FundingMarket:
    """What is stored about one settlement: the rates at `ts` and the prices to value it at."""

    asof: datetime
    ts: datetime                                   # the settlement acted on
    slot: datetime                                 # the latest settlement time due at asof
    rates: dict[str, float]                        # perp symbol -> rate settled at ts
    settled: dict[str, tuple[float, ...]]          # asset -> last settled rates at or before ts
    spot: dict[str, float]                         # asset -> spot close of the last closed day
    perp: dict[str, float]                         # asset -> perp close of the last closed day
    notes: list[str] = field(default_factory=list)

    def quotes(self) -> dict[str, Quote]:
        """Paper fills: bid = ask = last = the close the engine decided on."""
        out = {SPOT_SYMBOLS[a]: Quote(p, p, p) for a, p in self.spot.items()}
        return out | {PERP_SYMBOLS[a]: Quote(p, p, p) for a, p in self.perp.items()}


@dataclass
class TickDecision:
    plan: Plan
    fresh: bool                                    # decided by this run (False: a recorded one)


def require_paper(s: Settings) -> None:
    if s.mode != Mode.PAPER:
        raise ConfigError(f"ETERNAL_MODE={s.mode.value!r}: only the paper exchange is wired to the "
                          "funding-collection flow so far; use paper, or `eternal backfill` for replay")


def settlement_slot(asof: datetime) -> datetime:
    asof = utc(asof)
    return asof.replace(hour=asof.hour - asof.hour % SETTLEMENT_HOURS, minute=0, second=0, microsecond=0)


# 1. the settlement and its prices ------------------------------------------------------------
@task(name="funding-market")
def funding_market(asof: datetime, s: Settings) -> FundingMarket:
    """The latest stored settlement at or before `asof` across the BTC/ETH/SOL perps, its rates,
    the last settled rates and the daily closes to value it at."""
    require_paper(s)
    log = get_run_logger()
    market, ledger = stores(s)
    asof, slot = utc(asof), settlement_slot(asof)
    never = utc("1970-01-01")
    stale = [sym for sym in PERP_SYMBOLS.values() if (market.last_funding_ts(sym) or never) < slot
             or (market.last_candle_ts(sym, "1d") or never) < last_closed_day(slot)]
    if stale and s.data.refresh_before_cycle:
        from eternal.data.download import download_market_data, make_bybit_public

        log.info("refreshing %s (candles and funding) up to %s from Bybit", stale, slot)
        download_market_data(market, since=slot - timedelta(days=3), now=asof, progress=False,
                             exchange=make_bybit_public(s.exchange.public_url))

    history = {sym: market.load_funding(sym, start=asof - LOOKBACK, end=asof + timedelta(seconds=1))
               for sym in PERP_SYMBOLS.values()}
    history = {sym: f["funding_rate"] for sym, f in history.items() if len(f)}
    if not history:
        raise StaleDataError(f"no funding settlement of {', '.join(PERP_SYMBOLS.values())} stored in the "
                             f"week up to {asof:%Y-%m-%d %H:%M}Z: run `eternal data download` (or import)")
    ts = max(f.index[-1] for f in history.values()).to_pydatetime()
    notes = []
    if ts < slot:
        notes.append(f"no settlement stored for {slot:%Y-%m-%d %H:%M}Z yet: acting on the latest, "
                     f"{ts:%Y-%m-%d %H:%M}Z (a repeat of it changes nothing)")
        log.warning(notes[-1])
    rates = {sym: float(f.iloc[-1]) for sym, f in history.items() if f.index[-1] == ts}
    for sym, rate in rates.items():
        if abs(rate) > s.data.max_funding_rate_8h:
            msg = (f"{sym} funding rate {rate:.6f} at {ts:%Y-%m-%d %H:%M}Z is beyond "
                   f"{s.data.max_funding_rate_8h} per settlement: check the stored data")
            ledger.append_events([Event(asof, "data_quality_failed", msg, None, "alert", {"symbol": sym})])
            raise DataQualityError(msg)
    settled = {base_of(sym): tuple(float(r) for r in f[f.index <= ts].iloc[-SETTLED_KEPT:])
               for sym, f in history.items()}

    day = last_closed_day(ts)           # its close (day + 1 at 00:00) is the latest at or before ts
    spot, perp = {}, {}
    for sym in rates:
        asset = base_of(sym)
        close = _close(market, sym, day)
        if close is None:
            raise StaleDataError(f"{sym}: no daily candle of {day:%Y-%m-%d}, the last closed before the "
                                 f"{ts:%Y-%m-%d %H:%M}Z settlement, to value it at: refresh market data")
        perp[asset] = close
        if (spot_close := _close(market, SPOT_SYMBOLS[asset], day)) is not None:
            spot[asset] = spot_close
        else:
            notes.append(f"{SPOT_SYMBOLS[asset]} has no candle of {day:%Y-%m-%d}: FUNDING skips {asset}")
            log.warning(notes[-1])
    return FundingMarket(asof, ts, slot, rates, settled, spot, perp, notes)


def _close(market, symbol: str, day: datetime) -> float | None:
    candle = market.load_candles(symbol, "1d", start=day, end=day + timedelta(days=1))
    return float(candle["close"].iloc[0]) if len(candle) else None


# 2. the settlement, at the exchange and in our ledger ------------------------------------------
@task(name="settle-funding", retries=3, retry_delay_seconds=[1, 5, 15])
def settle_funding(fm: FundingMarket, s: Settings, now: datetime) -> list[FundingPayment]:
    """Holds the paper exchange's lock throughout: its state is read, changed and saved whole."""
    with exclusive(stores(s)[1].engine, PAPER):
        return _settle_funding(fm, s, now)


def _settle_funding(fm: FundingMarket, s: Settings, now: datetime) -> list[FundingPayment]:
    """Every open perp position of every sleeve pays or receives `rate x qty x price` at the
    exchange; our ledger books the same payments once. Returns every payment booked at `ts`."""
    require_paper(s)
    _, ledger = stores(s)
    if not ledger.is_initialised():     # the first flow to run starts the portfolio
        ledger.initialise(s.initial_capital, {sl: getattr(s.weights, sl.weight_field) for sl in Sleeve},
                          fm.asof)
    exchange = open_paper_exchange(ledger, s, now)
    made: list[FundingPayment] = []
    for symbol, rate in sorted(fm.rates.items()):
        last = exchange.funding_last.get(symbol)
        if last is not None and utc(last["ts"]) > fm.ts:
            continue                    # a later settlement was made: this one is behind us
        made += exchange.settle_funding(fm.ts, symbol, rate, fm.perp[base_of(symbol)])
    booked = {(p.sleeve, p.symbol) for p in _payments_at(ledger, fm.ts)}
    new = [p for p in made if (p.sleeve, p.symbol) not in booked]
    if new:
        books = ledger.load_books()
        for p in new:
            books_ledger.apply_funding(books[p.sleeve], p)
        events = [Event(fm.ts, "funding_settled", f"{p.symbol} {'received' if p.amount >= 0 else 'paid'} "
                        f"{abs(p.amount):.6f} USDT on {p.qty:+.8g} at {p.price:.2f}, rate {p.rate:.8f}",
                        p.sleeve, data={"symbol": p.symbol, "amount": p.amount, "expected": p.expected})
                  for p in new]
        with ledger.engine.begin() as conn:
            ledger.save_books([books[sl] for sl in sorted({p.sleeve for p in new})], now, conn)
            ledger.save_funding(new, conn)
            ledger.append_events(events, _run_key(fm.ts), conn)
    get_run_logger().info("settlement %s: %d payments, %d booked now", fm.ts, len(made), len(new))
    return _payments_at(ledger, fm.ts)


def _payments_at(ledger, ts: datetime) -> list[FundingPayment]:
    return [p for p in ledger.load_funding(since=ts - timedelta(seconds=1)) if p.ts == ts]


def _run_key(ts: datetime) -> str:
    return f"{FLOW} {utc(ts).isoformat()}"


# 3. the FUNDING decision, once per settlement -------------------------------------------------
@task(name="decide-funding")
def decide_funding(fm: FundingMarket, payments: list[FundingPayment], s: Settings,
                   now: datetime) -> TickDecision:
    """Holds the paper exchange's lock throughout: its state is read, changed and saved whole."""
    with exclusive(stores(s)[1].engine, PAPER):
        return _decide_funding(fm, payments, s, now)


def _decide_funding(fm: FundingMarket, payments: list[FundingPayment], s: Settings,
                   now: datetime) -> TickDecision:
    """The FUNDING engine at `ts`, decided once: its transfers (in our books and the paper
    exchange's), new state, events and recorded plan are written in one transaction."""
    require_paper(s)
    _, ledger = stores(s)
    if (recorded := _recorded_plan(ledger, fm.ts)) is not None:
        return TickDecision(recorded, fresh=False)
    books = ledger.load_books()
    received: dict[str, float] = {}
    for p in payments:
        if p.sleeve == Sleeve.FUNDING:
            received[base_of(p.symbol)] = received.get(base_of(p.symbol), 0.0) + p.amount
    tradable = [a for a in fm.perp if a in fm.spot]
    tick = FundingTick(fm.ts, {a: fm.spot[a] for a in tradable}, {a: fm.perp[a] for a in tradable},
                       {a: fm.settled[a][-1] for a in tradable},     # paper: the latest settled
                       {a: fm.settled[a] for a in tradable}, books,
                       ledger.load_states().get(Sleeve.FUNDING), received)
    plan = cycle.funding_tick(tick, s)
    # No persistence callback: the exchange's state is written below, in our transaction.
    exchange = PaperExchange.from_state(ledger.load_exchange_state(PAPER), s.fees, FillPolicy.IMMEDIATE)
    for t in plan.transfers:            # sub-account to sub-account: both sides' books move
        exchange.transfer(t)
        books_ledger.apply_transfer(books, t)
    moved = sorted({sl for t in plan.transfers for sl in (t.from_sleeve, t.to_sleeve) if sl is not None})
    record = Event(fm.ts, DECISION, f"FUNDING decided at the {fm.ts:%Y-%m-%d %H:%M}Z settlement: "
                   f"{len(plan.intents)} orders, {len(plan.transfers)} transfers", Sleeve.FUNDING,
                   data={"intents": [asdict(i) for i in plan.intents],
                         "transfers": [asdict(t) for t in plan.transfers], "received": received})
    with ledger.engine.begin() as conn:
        if plan.transfers:
            ledger.save_books([books[sl] for sl in moved], now, conn)
            ledger.save_transfers(plan.transfers, conn)
            ledger.save_exchange_state(PAPER, exchange.to_state(), now, conn)
        ledger.save_states(plan.states, now, conn)
        ledger.append_events(plan.events + [record], _run_key(fm.ts), conn)
    return TickDecision(plan, fresh=True)


def _recorded_plan(ledger, ts: datetime) -> Plan | None:
    with ledger.engine.connect() as conn:
        data = conn.execute(select(EventRow.data).where(
            EventRow.kind == DECISION, EventRow.run_key == _run_key(ts))).scalars().first()
    if data is None:
        return None
    intents = [OrderIntent(**{**d, "sleeve": Sleeve(d["sleeve"]), "market": Market(d["market"]),
                              "side": Side(d["side"]), "order_type": OrderType(d["order_type"])})
               for d in data["intents"]]
    transfers = [Transfer(utc(t["ts"]), Sleeve(t["from_sleeve"]) if t["from_sleeve"] else None,
                          Sleeve(t["to_sleeve"]), t["asset"], t["qty"], t["reason"]) for t in data["transfers"]]
    return Plan(ts, ts, intents, {}, [], transfers=transfers)


# 4. the record ------------------------------------------------------------------------------
def settlement_rows(payments: list[FundingPayment]) -> list[dict]:
    return [{"sleeve": p.sleeve.value, "asset": base_of(p.symbol), "qty": p.qty, "price": p.price,
             "rate": p.rate, "realised": p.amount, "expected": p.expected,
             "difference": p.amount - p.expected} for p in payments]


@task(name="record-funding")
def record_funding(fm: FundingMarket, payments: list[FundingPayment], decision: TickDecision,
                   result: ExecutionResult, s: Settings) -> dict:
    key = f"funding-{fm.ts:%Y-%m-%d-%H%M}"
    create_table_artifact(settlement_rows(payments) or [{"sleeve": "none", "asset": "-",
                                                         "realised": 0.0, "expected": 0.0}],
                          key=key, description=f"funding settled at {fm.ts:%Y-%m-%d %H:%M} UTC per sleeve "
                          "and asset: realised (booked) vs expected (-rate x qty x price)")
    by_sleeve: dict[str, float] = {}
    for p in payments:
        by_sleeve[p.sleeve.value] = by_sleeve.get(p.sleeve.value, 0.0) + p.amount
    plan = decision.plan
    return {"ts": fm.ts.isoformat(), "slot": fm.slot.isoformat(), "rates": fm.rates,
            "payments": len(payments), "funding_by_sleeve": by_sleeve,
            "decided_now": decision.fresh, "decisions": [e.message for e in plan.events],
            "transfers": [{"from": t.from_sleeve.value if t.from_sleeve else None, "to": t.to_sleeve.value,
                           "qty": t.qty} for t in plan.transfers],
            "orders": len(result.orders), "sent": result.sent, "fills": len(result.fills),
            "notes": fm.notes, "artifact": key}
