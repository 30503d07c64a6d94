"""Act: send a plan's intents with retries that can never place an order twice.

Idempotency lives in eternal.execution (ids looked up in our ledger and at the exchange before
any send); this task adds Prefect retries, the paper exchange's persistence and the ledger write.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from prefect import get_run_logger, task
from sqlalchemy import func, select

from eternal import ledger as books_ledger
from eternal.config import Mode, Settings
from eternal.errors import ConfigError, InsufficientFunds
from eternal.exchange.paper import FillPolicy, PaperExchange
from eternal.execution import ExecutionResult, client_order_id, execute
from eternal.models import Event, Fill, Plan, Quote, Sleeve, utc
from eternal.store.ledger import LedgerStore
from eternal.store.locks import exclusive
from eternal.store.models import FillRow
from tasks.context import stores

PAPER = "paper"
EXCHANGE_FILL_REASONS = ("hard_stop", "trailing_stop", "liquidation")   # fills the exchange makes itself
LEDGER_OP = "ledger_op"   # event kind recording a keyed stake/accrual our books have applied


def open_paper_exchange(ledger: LedgerStore, s: Settings, now: datetime) -> PaperExchange:
    """The paper exchange keeps its own book in the database and saves it on every change, so an
    order it accepted survives a crash of ours (like a real exchange would)."""
    def persist(ex: PaperExchange) -> None:
        ledger.save_exchange_state(PAPER, ex.to_state(), now)

    state = ledger.load_exchange_state(PAPER)
    if state is None:
        ex = PaperExchange(s.fees, FillPolicy.IMMEDIATE, ledger.load_books(), persist)
        persist(ex)
        return ex
    return PaperExchange.from_state(state, s.fees, FillPolicy.IMMEDIATE, persist)


def _retry_unless_insufficient_funds(task, task_run, state) -> bool:
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, InsufficientFunds)


@task(name="execute-plan", retries=3, retry_delay_seconds=[1, 5, 15],
      retry_condition_fn=_retry_unless_insufficient_funds)
def execute_plan(plan: Plan, quotes: dict[str, Quote], flow: str, scheduled: datetime, s: Settings,
                 now: datetime, accrue_staking: bool = True) -> ExecutionResult:
    """Holds the paper exchange's lock throughout: its state is read, changed and saved whole."""
    with exclusive(stores(s)[1].engine, PAPER):
        return _execute_plan(plan, quotes, flow, scheduled, s, now, accrue_staking)


def _execute_plan(plan: Plan, quotes: dict[str, Quote], flow: str, scheduled: datetime, s: Settings,
                 now: datetime, accrue_staking: bool = True) -> ExecutionResult:
    """`quotes`: best bid/ask by symbol at decision time; the paper exchange fills against them.
    `accrue_staking`: pay the daily staking rewards due up to `plan.day` (the daily cycle); a flow
    deciding at other times (funding-collection, `plan.day` = a settlement time) passes False."""
    log = get_run_logger()
    if s.mode != Mode.PAPER:
        raise ConfigError(f"ETERNAL_MODE={s.mode.value!r}: only the paper exchange is wired to the "
                          "daily cycle so far; use paper, or `eternal backfill` for replay")
    _, ledger = stores(s)
    exchange = open_paper_exchange(ledger, s, now)
    exchange.set_quotes(quotes)
    # Staking moves and rewards, as the exchange did them: our ledger repeats the same operations
    # on its own books (same arithmetic, so the two never drift apart by a rounding).
    book_ops = _accrue_staking(exchange, ledger, s, plan, now) if accrue_staking else []
    for sleeve, moves in plan.stakes.items():
        for asset, qty in moves.items():
            key = f"stake|{scheduled.isoformat()}|{sleeve.value}|{asset}"
            book_ops.append((key, "stake", sleeve, asset, exchange.stake(sleeve, asset, qty, key)))
    for t in plan.transfers:     # between sleeves, once: the same decision makes the same key
        key = f"transfer|{scheduled.isoformat()}|{t.from_sleeve}|{t.to_sleeve}|{t.asset}|{t.qty!r}"
        exchange.transfer(t, key)
        book_ops.append((key, "transfer", t.to_sleeve, t.asset, t))
    for sleeve, levels in plan.stops.items():     # stops kept in step with the engines' levels
        for symbol, level in levels.items():
            exchange.set_stop(sleeve, symbol, level)
    ids = [client_order_id(flow, scheduled, i.sleeve, i.key) for i in plan.intents]
    known, trades = ledger.load_orders(ids), ledger.load_trade_ids(ids)
    try:
        result = execute(plan.intents, exchange, flow=flow, scheduled=scheduled, now=now, known=known,
                         known_trades=trades)
    except InsufficientFunds as exc:
        partial: ExecutionResult = exc.result  # type: ignore[attr-defined]
        _persist(ledger, partial, book_ops, now, str(scheduled))
        log.error("insufficient funds, not retried: %s", exc)
        raise
    _persist(ledger, result, book_ops, now, str(scheduled))
    log.info("%d orders in plan, %d sent now, %d new fills", len(result.orders), result.sent,
             len(result.fills))
    return result


def _persist(ledger: LedgerStore, result: ExecutionResult, book_ops: list[tuple], now: datetime,
             run_key: str) -> None:
    books = ledger.load_books()
    done = ledger.applied_ops([op[0] for op in book_ops])
    op_events, transfers = [], []
    for key, op, sleeve, asset, amount in book_ops:
        if key in done:            # a retry or re-run: our books already hold it
            continue
        if op == "transfer":
            books_ledger.apply_transfer(books, amount)
            transfers.append(amount)
        elif op == "stake":
            books_ledger.stake(books[sleeve], asset, amount)
        else:
            books_ledger.accrue_staking(books[sleeve], asset, amount[0], amount[1])
        op_events.append(Event(now, LEDGER_OP, key, sleeve, data={"op": op, "asset": asset}))
    for fill in result.fills:
        books_ledger.apply_fill(books[fill.sleeve], fill)
    ledger.save_execution(result.orders, result.fills, result.events + op_events, books.values(), now,
                          run_key, transfers=transfers)


@task(name="sync-exchange", retries=3, retry_delay_seconds=[1, 5, 15])
def sync_exchange(day: datetime, s: Settings, now: datetime) -> list[Fill]:
    """Holds the paper exchange's lock throughout: its state is read, changed and saved whole."""
    with exclusive(stores(s)[1].engine, PAPER):
        return _sync_exchange(day, s, now)


def _sync_exchange(day: datetime, s: Settings, now: datetime) -> list[Fill]:
    """What the exchange did since the last cycle, booked in our ledger before deciding.

    Paper mode: the resting stops (and liquidations) are checked against the range of the day that
    just closed, as the exchange's stop orders would have fired during it. Idempotent: a fired stop
    is gone from the exchange, and fills already in our ledger (by trade id) are not booked again.
    """
    if s.mode != Mode.PAPER:
        return []
    market, ledger = stores(s)
    if ledger.load_exchange_state(PAPER) is None:      # nothing traded yet
        return []
    exchange = open_paper_exchange(ledger, s, now)
    bars = {}
    for symbol in {sym for b in exchange.books.values() for sym in b.perps}:
        candle = market.load_candles(symbol, "1d", start=day, end=day + timedelta(days=1))
        if len(candle):
            bars[symbol] = (float(candle["open"].iloc[0]), float(candle["high"].iloc[0]),
                            float(candle["low"].iloc[0]))
    # Each day's range is checked once: a re-run of the same cycle must not test the levels set
    # at that day's close (meant for the next day) against the day itself.
    checked = exchange.stops_checked_through
    if bars and (checked is None or utc(checked) < day):
        exchange.check_stops(day, bars)
        exchange.check_liquidations(day, bars)
        exchange.stops_checked_through = day.isoformat()
        exchange.persist_now()
    # Book every stop/liquidation fill the exchange has that our ledger lacks, not only this
    # call's: a retry after the exchange saved its fills but before our ledger did must book them.
    # Only those since the latest one our ledger holds can be missing: the scan stays short.
    with ledger.engine.connect() as conn:
        booked_to = conn.execute(select(func.max(FillRow.ts)).where(
            FillRow.reason.in_(EXCHANGE_FILL_REASONS))).scalar()
        fills = [f for f in exchange.events_fills if booked_to is None or f.ts >= booked_to]
        seen = set(conn.execute(select(FillRow.trade_id).where(
            FillRow.trade_id.in_([f.trade_id for f in fills]))).scalars()) if fills else set()
    new = [f for f in {f.trade_id: f for f in fills}.values() if f.trade_id not in seen]
    if new:
        books = ledger.load_books()
        for f in new:
            books_ledger.apply_fill(books[f.sleeve], f)
        events = [Event(now, "stop_filled" if f.reason != "liquidation" else "liquidation",
                        f"{f.symbol} {f.side} {f.qty:.8g} at {f.price:.2f} ({f.reason})", f.sleeve,
                        "warning", {"trade_id": f.trade_id}) for f in new if f.reason in
                  EXCHANGE_FILL_REASONS]
        ledger.save_execution([], new, events, books.values(), now, f"sync {day:%Y-%m-%d}")
    return new


def _accrue_staking(exchange: PaperExchange, ledger: LedgerStore, s: Settings, plan: Plan,
                    now: datetime) -> list[tuple]:
    """Paper staking rewards, once per day: the exchange remembers the day it accrued through and
    each sleeve's accrual under a key, so a retried task pays nothing twice at the exchange and
    still hands our ledger the same operations to repeat (those already applied are skipped)."""
    apy = s.core.staking_apy
    through = exchange.accrued_through
    day = utc(plan.day)
    prefix = f"accrue|{day.isoformat()}|"
    if through is not None and apy >= s.core.staking_min_apy and (days := (day - utc(through)).days) > 0:
        events = []
        for sleeve, book in exchange.books.items():
            reward = books_ledger.accrue_staking(book, "ETH", apy, days)
            if reward:
                exchange.stake_ops[f"{prefix}{sleeve.value}|ETH"] = float(days)
                events.append(Event(now, "staking_reward", f"{reward:.8f} ETH over {days} days at "
                                    f"{apy:.2%} APY", sleeve, data={"eth": reward, "days": days}))
        ledger.append_events(events)
    if through is None or day > utc(through):
        exchange.accrued_through = day.isoformat()
        exchange.persist_now()
    return [(key, "accrue", Sleeve(key.split("|")[2]), "ETH", (apy, days))
            for key, days in exchange.stake_ops.items() if key.startswith(prefix)]