"""The imperative shell every order-placing flow shares: the driver over everything due up to `asof`.

One run, whatever flow started it: take the driver lock (one run per database at a time), mark
runs found dead as crashed, load the stored market data up to `asof` (refreshed first in live-like
modes), then `Driver.run`: finish a stored plan, reconcile, process every due event in time order.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pandas as pd
from prefect import get_run_logger, runtime, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import update

from eternal import cycle
from eternal.config import EXCHANGE_MODES, Mode, Settings
from eternal.data.csv_files import DataSet
from eternal.data.quality import FEAR_GREED, funding_interval_hours, history_problems, validate_market_data
from eternal.driver import ClockError, Driver, Due, Kind, Portfolio, RunReport
from eternal.errors import ConfigError, DataError, DataQualityError
from eternal.market import MarketView, history_needs, needed_assets
from eternal.models import PERP_SYMBOLS, SPOT_SYMBOLS, Event, Sleeve, SleeveBook, last_closed_day, utc
from eternal.secrets import reveal, scrub
from eternal.store.driver_store import DRIVER_LOCK, SqlLedger
from eternal.store.instruments import refresh_instruments
from eternal.store.locks import exclusive
from eternal.store.models import CycleRunRow
from tasks.context import stores
from tasks.exchange_limit import exchange_slot
from tasks.refresh import market_symbols, refresh_market


@dataclass
class Drive:
    """What a flow reports on: the run, the view it read and the portfolio after it."""

    report: RunReport
    view: MarketView
    portfolio: Portfolio
    settings: Settings


def active_sleeves(s: Settings) -> list[Sleeve]:
    """Sleeves with an engine and a weight above zero: the ones the driver decides for."""
    return [sl for sl in cycle.SLEEVES if getattr(s.weights, sl.weight_field) > 0]


def require_paper(s: Settings) -> None:
    """The flows trade on paper, demo, testnet or live (`tasks.exchange.open_exchange`)."""
    if s.mode == Mode.REPLAY:
        raise ConfigError(f"ETERNAL_MODE={s.mode.value!r}: the flows trade on paper, demo, testnet or live; "
                          "use `eternal backfill` for replay")


def stored_market(s: Settings, asof: datetime, sleeves) -> MarketView:
    """The market view over every stored candle and settlement (indicators are causal and the
    driver reads no event after `asof`, exactly as a backfill over the same rows); the days closed
    by `asof` and the settlements up to it are validated by the same Great Expectations suite as an
    import or a backfill. Both are remembered in the process while the stored rows are the same."""
    market, ledger = stores(s)
    day = last_closed_day(asof)
    spot, perp, symbols, missing = market_symbols(s, market, ledger, asof, sleeves, get_run_logger())
    if s.mode != Mode.REPLAY and s.data.refresh_before_cycle:
        refresh_market(s, market, ledger, symbols, asof, get_run_logger())
        if not (s.data_dir is not None and s.mode == Mode.PAPER):     # offline by choice: no index download
            _refresh_fear_greed(s, market, day)
    stored_rows = _stored_rows(market.engine)
    if _ROWS.get("key") != (stored_rows, tuple(symbols), tuple(perp)):   # re-read only what changed
        _ROWS.update(key=(stored_rows, tuple(symbols), tuple(perp)),
                     frames={sym: market.load_candles(sym, "1d") for sym in symbols},
                     funding={PERP_SYMBOLS[a]: f for a in perp if len(f := market.load_funding(PERP_SYMBOLS[a]))},
                     fg=market.load_fear_greed())
    frames, funding, fg = _ROWS["frames"], _ROWS["funding"], _ROWS["fg"]
    closed = {sym: f[f.index <= day] for sym, f in frames.items()}
    settled = {sym: f[f.index <= asof] for sym, f in funding.items()}
    published = {FEAR_GREED: fg[fg.index <= day]} if len(fg) else {}
    validate_stored(s, ledger, asof, closed, settled, published, history_needs(s, sleeves, day))
    stored = (tuple((sym, len(f), f.index[-1] if len(f) else None, float(f["close"].sum())) for sym, f in frames.items())
              + tuple((sym, len(f), f.index[-1], float(f["funding_rate"].sum())) for sym, f in funding.items())
              + ((len(fg), fg.index[-1] if len(fg) else None), s.model_dump_json(), tuple(sleeves), tuple(sorted(missing))))
    if _VIEW.get("key") != stored:
        _VIEW.update(key=stored, view=MarketView.build(
            DataSet({(sym, "1d"): f for sym, f in frames.items() if len(f)}, funding, fg if len(fg) else None),
            s, sleeves, without=missing))
    return _VIEW["view"]


def validate_stored(s: Settings, ledger, asof: datetime, closed: dict, settled: dict, published: dict,
                    needs: list) -> None:
    """The suite an import or a backfill runs (eternal.data.quality), on what a run trades on: the
    days closed by `asof`, the settlements up to it, the Fear & Greed index and the history the
    engines need. What is new since the last run of this process is checked: a series that extends
    one validated before is checked from its last validated row on (the rules are per row or
    between neighbours), a series that changed is checked whole. A failure is an alert event too."""
    failures = history_problems(closed, needs)
    try:
        if failures:
            raise DataQualityError("data quality failed: " + "; ".join(f.describe() for f in failures),
                                   [f.to_dict() for f in failures])
        for kind, series, at in (("candles", closed, asof), ("funding", settled, None), ("fear_greed", published, None)):
            todo, seen = {}, {}
            for sym, f in series.items():
                if not len(f):
                    continue
                done = _VALIDATED.get((kind, sym))
                if done is not None and len(f) >= done[0] and _digest(f.iloc[:done[0]]) == done[1]:
                    if len(f) == done[0] and (at is None or last_closed_day(at) == done[2]):
                        continue
                    f = f.iloc[done[0] - 1:] if len(f) > done[0] else f.iloc[-1:]
                todo[sym] = f
                seen[sym] = (len(series[sym]), _digest(series[sym]), at and last_closed_day(at))
            if not todo:
                continue
            validate_market_data(
                todo if kind == "candles" else {}, todo if kind == "funding" else {}, at,
                fear_greed=todo.get(FEAR_GREED), max_daily_move=s.data.max_daily_move,
                max_funding_rate=s.data.max_funding_rate_8h,
                funding_intervals={sym: funding_interval_hours(settled[sym]) for sym in todo} if kind == "funding" else None)
            _VALIDATED.update({(kind, sym): v for sym, v in seen.items()})
    except DataQualityError as exc:
        ledger.append_events([Event(asof, "data_quality_failed", str(exc), None, "alert",
                                    {"failures": exc.failures})])
        raise


_VALIDATED: dict = {}


def _digest(f) -> int:
    return int(pd.util.hash_pandas_object(f).sum())
_VIEW: dict = {}
_ROWS: dict = {}


def _stored_rows(engine) -> tuple:
    """Count and newest time of every stored series: equal means nothing was added or removed."""
    from sqlalchemy import func, select

    from eternal.store.models import CandleRow, FearGreedRow, FundingRateRow

    with engine.connect() as conn:
        return (str(engine.url),
                tuple(conn.execute(select(CandleRow.symbol, func.count(), func.max(CandleRow.ts), func.sum(CandleRow.open),
                                          func.sum(CandleRow.high), func.sum(CandleRow.low), func.sum(CandleRow.close),
                                          func.sum(CandleRow.volume))
                                   .where(CandleRow.timeframe == "1d").group_by(CandleRow.symbol)
                                   .order_by(CandleRow.symbol)).all()),
                tuple(conn.execute(select(FundingRateRow.symbol, func.count(), func.max(FundingRateRow.ts),
                                          func.sum(FundingRateRow.funding_rate))
                                   .group_by(FundingRateRow.symbol).order_by(FundingRateRow.symbol)).all()),
                tuple(conn.execute(select(func.count(), func.max(FearGreedRow.ts), func.sum(FearGreedRow.value))).one()))


def _refresh_fear_greed(s: Settings, market, day: datetime) -> None:
    from eternal.data.fear_greed import update_fear_greed

    fg = market.load_fear_greed()
    if len(fg) and fg.index[-1] >= day:
        return
    try:
        update_fear_greed(market, reveal(s.data.fear_greed_url), timeout_s=s.data.fear_greed_timeout_s,
                          retries=s.data.fear_greed_retries)
    except DataError as exc:
        get_run_logger().warning("Fear & Greed not refreshed, no signal from it today: %s", exc)


def mark_crashed(engine, now: datetime) -> int:
    """Runs still `running` while we hold the driver lock died (killed, power cut): mark them
    crashed in `cycle_runs` and, where the Prefect run is known, in Prefect too."""
    from sqlalchemy import select

    with engine.begin() as conn:
        dead = conn.execute(select(CycleRunRow.id, CycleRunRow.summary).where(CycleRunRow.status == "running")).all()
        conn.execute(update(CycleRunRow).where(CycleRunRow.id.in_([r.id for r in dead])).values(
            status="crashed", finished_at=now))
    ids = [r.summary.get("prefect_flow_run") for r in dead if (r.summary or {}).get("prefect_flow_run")]
    if ids:
        try:
            from prefect.client.orchestration import get_client
            from prefect.states import Crashed

            with get_client(sync_client=True) as client:
                for flow_run_id in ids:
                    client.set_flow_run_state(flow_run_id, Crashed(message="found dead by the next run "
                                                                   "(its process was killed)"), force=True)
        except Exception as exc:      # the ledger is marked; the UI can be fixed by hand
            get_run_logger().warning("could not mark %d Prefect run(s) crashed: %s", len(ids), exc)
    return len(dead)


def _retry_transient(task, task_run, state) -> bool:
    """Retry what a retry can fix (the exchange, the database); never bad data, a bad setting,
    a time the ledger has passed."""
    from eternal.errors import EternalError, ExchangeError

    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, EternalError) or isinstance(exc, ExchangeError)


@task(name="drive", retries=3, retry_delay_seconds=[1, 5, 15], cache_policy=NO_CACHE,
      retry_condition_fn=_retry_transient)
def drive(flow: str, asof: datetime, s: Settings, *, explicit: bool = False) -> dict:
    """Every event due up to `asof`, once. A slot older than the ledger's clock does nothing (one
    line in the log); with `explicit` (a time typed by an operator) it is refused instead."""
    require_paper(s)
    log = get_run_logger()
    asof = utc(asof)
    _, store = stores(s)
    engine = store.engine
    until = Due(asof, Kind.OPEN).key                 # every event at or before asof
    with exclusive(engine, DRIVER_LOCK), exchange_slot(s, engine=engine):   # exchange modes: a `bybit-api` slot
        if crashed := mark_crashed(engine, asof):
            log.warning("%d earlier run(s) found dead and marked crashed", crashed)
        ledger = SqlLedger(engine)
        clock = ledger.clock()
        if explicit and clock is not None and until < clock:
            raise ClockError(f"--asof {asof:%Y-%m-%dT%H:%MZ} is before the ledger's clock ({Due.from_key(clock)}): "
                             "a ledger never goes back in time; run without --asof to catch up to now")
        run_id = store.start_run(flow, asof, s.mode.value, asof)
        if (prefect_run := runtime.flow_run.id) is not None:
            store.finish_run(run_id, "running", {"prefect_flow_run": str(prefect_run)}, None)
        try:
            sleeves = active_sleeves(s)
            view = stored_market(s, asof, sleeves)
            p = ledger.load()
            if p is not None and p.mode not in ("", s.mode.value):   # one ledger, one venue
                raise ConfigError(f"this ledger trades in {p.mode} mode and ETERNAL_MODE={s.mode.value!r}: its "
                                  f"books are the {p.mode} venue's; run with --mode {p.mode} (or "
                                  f"ETERNAL_MODE={p.mode}), or start another database for {s.mode.value}")
            weights = {sl: getattr(s.weights, sl.weight_field) for sl in Sleeve}
            # a new venue account holds the starting capital as our ledger will (created first:
            # a crash between the two leaves a venue that the ledger then starts from)
            from tasks.exchange import open_exchange

            exchange = open_exchange(s, engine, None if p is not None else
                                     {sl: SleeveBook(sl, s.initial_capital * w) for sl, w in weights.items()})
            if s.mode in EXCHANGE_MODES:     # the venue's trading rules now: stored, and what the driver rounds to
                for event in refresh_instruments(engine, exchange.rules, asof, f"bybit {s.mode.value}"):
                    log.warning(event.message)
            driver = Driver(view, exchange, ledger, s, sleeves, orchestrated=set(sleeves) == set(Sleeve))
            if p is None:
                capital, weights = starting_capital(s, exchange, weights)
                p = driver.open(capital, weights, last_closed_day(asof))
                log.info("portfolio started with %.2f USDT; its first decision is on the close of %s",
                         capital, f"{last_closed_day(asof):%Y-%m-%d}")
            if s.mode != Mode.PAPER:          # deposits credited at Bybit, each booked once by its id
                from tasks.deposits import book_venue_deposits

                if book_venue_deposits(exchange, ledger, p, asof, log):
                    p = ledger.load()         # with them waiting for the close
            p.mode = s.mode.value                # recorded with the run's first commit
            report = driver.run(p, until)
            log.info(report.line())
            for sleeve, why in p.halted.items():
                log.warning("sleeve %s is halted, none of its orders are sent: %s", sleeve, why)
        except BaseException as exc:
            store.finish_run(run_id, "failed", {"error": scrub(str(exc))}, asof)
            _alert_failure(s, store, flow, asof, exc)
            raise
        store.finish_run(run_id, "completed", {"line": report.line(), "clock": report.clock,
                                               "events": len(report.processed)}, asof)
    from tasks.record import record_run

    return record_run(Drive(report, view, p, s), flow)


def drive_flow(flow: str, asof: datetime, s: Settings) -> dict:
    """`drive` with the settings' retries (ETERNAL_EXECUTION__RETRIES, __RETRY_DELAYS_S)."""
    return drive.with_options(retries=s.execution.retries,
                              retry_delay_seconds=list(s.execution.retry_delays_s))(flow, asof, s)


def _alert_failure(s: Settings, store, flow: str, asof: datetime, exc: BaseException) -> None:
    """A run that failed is a P1 alert (a data-quality failure under its own kind); never raises."""
    from datetime import UTC

    from tasks.notify import send

    kind = "data_quality_failed" if isinstance(exc, DataQualityError) else "run_failed"
    send(s, [Event(utc(asof), kind, scrub(f"{flow} run for {asof:%Y-%m-%d %H:%MZ} failed: "
                                          f"{type(exc).__name__}: {exc}"), None, "alert")],
         store, now=datetime.now(UTC))


def starting_capital(s: Settings, exchange, weights: dict[Sleeve, float]) -> tuple[float, dict[Sleeve, float]]:
    """(capital, share per sleeve) a new ledger starts from: the settings' on paper; on Bybit what
    the sleeves' sub-accounts hold, which must be USDT alone (coins or positions bought outside
    this ledger would be differences it cannot explain)."""
    if s.mode == Mode.PAPER:
        return s.initial_capital, weights
    # each account once: a sleeve's own, or the one its virtual ledger shares with other sleeves
    accounts = [((sl,), exchange.books[sl]) for sl in exchange.books]
    accounts += [(sleeves, book) for sleeves, book, _ in exchange.account_books()]
    held = [f"{'+'.join(map(str, sls))}: {', '.join([*(a for a, q in b.holdings.items() if q), *b.perps])}"
            for sls, b in accounts if any(q for q in b.holdings.values()) or b.perps]
    if held:
        raise ConfigError("a new ledger starts from Bybit accounts holding USDT only; found " + "; ".join(held)
                          + ": sell or move them, or start from a ledger that holds them")
    capital = sum(b.cash for _, b in accounts)
    if not capital > 0:
        raise ConfigError(f"the sleeves' Bybit accounts hold {capital:.2f} USDT: deposit first")
    shares = dict.fromkeys(Sleeve, 0.0)
    for sleeves, book in accounts:        # an account of virtual sleeves: split by their target weights
        total = sum(weights.get(sl, 0.0) for sl in sleeves)
        for sl in sleeves:
            shares[sl] = book.cash / capital * (weights.get(sl, 0.0) / total if total > 0 else 1 / len(sleeves))
    return capital, shares
