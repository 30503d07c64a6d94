"""A backfill: the one driver (`eternal.driver`) over history, in memory, then its output files.

The schedule is the live one: for each day D, funding settlements as they occur in the data (at D's
open price: daily data has no intraday perp price), orders decided at D-1's close (and at earlier
settlements) filling at D's open, and at D's close the day's stops and liquidations on its range
(a stop is in force from its entry's fill), a day of staking, then the decisions. Positions still
open when the window ends are closed at the last close (reason `end`). Data is validated once for
the whole window; indicators and all-time highs are computed once per series (`MarketView`).
"""
from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from eternal import cycle
from eternal.aside import Aside
from eternal.config import Settings
from eternal.data.csv_files import DataSet
from eternal.driver import Batch, Driver, Due, Kind, Portfolio, equity_rows
from eternal.errors import EternalError
from eternal.exchange.paper import FillPolicy, PaperExchange
from eternal.market import MarketView, check_dataset, check_history, earliest_start, history_needs, needed_assets
from eternal.models import (
    MAX_USDT,
    Event,
    ExitReason,
    Fill,
    FundingPayment,
    PERP_SYMBOLS,
    QUOTE,
    SPOT_SYMBOLS,
    end_before_start,
    OrderRecord,
    Sleeve,
    SleeveBook,
    Transfer,
    utc,
)
from eternal.risk import net_exposures

if TYPE_CHECKING:
    from sqlalchemy import Engine

FLOW = "backfill"
ALIASES = {"trend": (Sleeve.TREND_1, Sleeve.TREND_2)}
# `fee` in USDT (a fee charged in a coin at the fill's price); `fee_asset`: what it was charged in (a
# spot buy's fee in the coin bought leaves the sleeve fewer coins, not less cash)
TRADE_COLUMNS = ["timestamp", "sleeve", "symbol", "market", "side", "qty", "price", "fee", "fee_asset", "reason",
                 "client_order_id"]


class BackfillError(EternalError):
    pass


@dataclass
class BackfillResult:
    summary: dict
    trades: pd.DataFrame
    equity: pd.DataFrame
    events: list[Event] = field(default_factory=list)
    out_dir: Path | None = None
    funding: list[FundingPayment] = field(default_factory=list)
    start: datetime | None = None
    opening: dict[str, float] = field(default_factory=dict)      # sleeve -> USDT at the start
    transfers: list[Transfer] = field(default_factory=list)
    equity_rows: list[dict] = field(default_factory=list)         # day, sleeve, equity, cash


def parse_sleeves(engines: str | None) -> tuple[Sleeve, ...]:
    """'core,trend-1' -> sleeves, in the portfolio's order; 'trend' -> TREND-1 and TREND-2; None -> every
    implemented engine."""
    if not engines:
        return cycle.SLEEVES
    chosen: list[Sleeve] = []
    for name in (n.strip().lower() for n in engines.split(",") if n.strip()):
        if name in ALIASES:
            chosen += ALIASES[name]
            continue
        try:
            sleeve = Sleeve(name)
        except ValueError:
            raise BackfillError(f"--engines: unknown engine {name!r}; known: "
                                f"{', '.join([*(s.value for s in Sleeve), *ALIASES])}") from None
        chosen.append(sleeve)          # every sleeve has an engine now
    # in the portfolio's order, however typed: 'funding,tactical' and 'tactical,funding' are one
    # selection with one set of outputs (and a report rebuilt from its ledger reads the same)
    return tuple(sorted(dict.fromkeys(chosen), key=cycle.SLEEVES.index))


def allocate(capital: float, settings: Settings, sleeves: tuple[Sleeve, ...]) -> dict[Sleeve, float]:
    """Selected sleeves share the capital in proportion to their weights; one sleeve gets it all."""
    raw = {s: getattr(settings.weights, s.weight_field) for s in sleeves}
    total = sum(raw.values())
    if total <= 0:
        raise BackfillError(f"the selected sleeves {[s.value for s in sleeves]} all have weight 0")
    return {s: w / total for s, w in raw.items()}


class MemoryLedger:
    """The driver's ledger port in memory (a backfill): it keeps every row for the outputs."""

    def __init__(self) -> None:
        self.portfolio: Portfolio | None = None
        self.opening: tuple[float, dict[Sleeve, float], datetime] | None = None
        self.orders: dict[str, OrderRecord] = {}
        self.fills: list[Fill] = []
        self.events: list[Event] = []
        self.transfers: list[Transfer] = []
        self.payments: list[FundingPayment] = []
        self.equity: list[dict] = []
        self.deposits_taken: list[tuple[datetime, float]] = []   # (the event that took it, USDT)

    def load(self) -> Portfolio | None:
        return self.portfolio

    def initialise(self, portfolio: Portfolio, capital: float, shares, ts: datetime) -> None:
        self.portfolio = portfolio
        self.opening = (capital, dict(shares), ts)      # as a database ledger's initialise takes it

    keeps_plans = False                  # a backfill is one process: nothing survives it half-done

    def pending_plan(self):
        return None

    def known_orders(self, client_order_ids: set[str]) -> set[str]:
        return {c for c in client_order_ids if c in self.orders}

    def store_plan(self, key: str, plan: dict) -> None:
        pass

    def commit(self, portfolio: Portfolio, batch: Batch) -> None:
        for rec in batch.orders:
            self.orders[rec.client_order_id] = rec
        self.fills += batch.fills
        self.events += batch.events
        self.transfers += batch.transfers
        self.payments += batch.payments
        self.equity += batch.equity
        self.deposits_taken += [(batch.due.ts, d["usdt"]) for d in batch.deposits_taken]


def check_window(data: DataSet, settings: Settings, sleeves, start: datetime | None, end: datetime | None,
                 first: datetime | None = None, last: datetime | None = None) -> tuple[datetime, datetime]:
    """The replay's days [start, end): the defaults filled in (from the first day every warm-up
    holds to the data's last day), or BackfillError saying which day to give instead. `first` and
    `last`: the days every selected series covers (default: read from `data`'s candles, cheap
    enough for the CLI to check before a flow run starts)."""
    start, end = (utc(start) if start is not None else None), (utc(end) if end is not None else None)
    if start is not None and end is not None and end <= start:
        raise BackfillError(end_before_start(start, end))
    if first is None or last is None:
        spot, perp = needed_assets(sleeves)
        frames = [f for sym in [SPOT_SYMBOLS[a] for a in spot] + [PERP_SYMBOLS[a] for a in perp]
                  if len(f := data.candles.get((sym, "1d"), pd.DataFrame()))]
        if not frames:
            raise BackfillError("no daily candles for the selected sleeves: import them (`eternal data import "
                                "DIR`) or give --data-dir")
        first, last = max(f.index[0] for f in frames).to_pydatetime(), min(f.index[-1] for f in frames).to_pydatetime()
    if Sleeve.TACTICAL in sleeves and (data.fear_greed is None or not len(data.fear_greed)):
        # a day without a reading is no signal; a history without any is a file left out
        raise BackfillError("no Fear & Greed history, which TACTICAL reads every day: import its "
                            "fear_greed_1d.csv (`eternal data import DIR`) or give --data-dir")
    ends = ""
    for a in needed_assets(sleeves)[1]:   # a perp pays funding and TREND exits on it: no day past its history
        settled = data.funding.get(PERP_SYMBOLS[a])
        if settled is None or not len(settled):
            raise BackfillError(f"no funding history for {PERP_SYMBOLS[a]}: import its funding_8h_*.csv (`eternal "
                                "data import DIR`) or give --data-dir")
        # the last day whose three settlements are all in (one at 08:00 ends the day before)
        day = utc((settled.index[-1] + timedelta(hours=8)).floor("D").to_pydatetime()) - timedelta(days=1)
        if day < utc(last):
            last, ends = day, f", where the funding of {PERP_SYMBOLS[a]} ends ({settled.index[-1]:%Y-%m-%d %H:%M})"
    earliest = utc(earliest_start(data, history_needs(settings, sleeves, first), first))
    after = last + timedelta(days=1)
    if start is not None and start < earliest:
        raise BackfillError(f"--start {start:%Y-%m-%d} is before the first day the data allows, {earliest:%Y-%m-%d} "
                            f"(the data from {first:%Y-%m-%d} and the engines' warm-up before their first decision): "
                            f"give --start {earliest:%Y-%m-%d} or later, or leave --start out")
    if end is not None and end > after:
        raise BackfillError(f"--end {end:%Y-%m-%d} is after the data, whose last day is {last:%Y-%m-%d}{ends}: give "
                            f"--end {after:%Y-%m-%d} or earlier (the end is exclusive), or leave --end out")
    start, end = start or earliest, end or after
    if start >= end:
        raise BackfillError(f"--start {start:%Y-%m-%d} leaves no day to replay: the data allows "
                            f"{earliest:%Y-%m-%d}..{after:%Y-%m-%d} (end exclusive)")
    return start, end


def _without_breakers(data: DataSet, settings: Settings, start: datetime, end: datetime, sleeves, capital: float,
                      monthly_deposit: float, deposits, view: MarketView | None = None) -> dict:
    """The same replay with the circuit breakers off: its final equity, return, drawdown, CAGR.
    `view`: the first replay's market view (the same data, checked, and the same indicators)."""
    off = settings.model_copy(update={"risk": settings.risk.model_copy(update={"breakers_enabled": False})})
    other = run_backfill(data, off, start=start, end=end, sleeves=sleeves, capital=capital, progress=False,
                         monthly_deposit=monthly_deposit, compare_breakers=False, deposits=deposits, view=view)
    return {k: other.summary[k] for k in ("final_equity", "total_return", "max_drawdown", "cagr")}


def save_ledger(engine: Engine, ledger: MemoryLedger, end: datetime) -> None:
    """A replay's ledger (`MemoryLedger`, its portfolio at `end`) into a fresh database
    (`check_fresh`), in one transaction after the portfolio's opening. The ledger pickles: a
    process of its own can write it (`tasks.backfill`)."""
    from eternal.store.ledger import LedgerStore

    store = LedgerStore(engine)
    store.initialise(*ledger.opening)
    p = ledger.portfolio
    with engine.begin() as conn:
        store.save_execution(list(ledger.orders.values()), ledger.fills, ledger.events, p.books.values(), end, FLOW,
                             conn)
        store.save_states(p.states, end, conn)
        if p.allocation is not None:
            store.save_allocation_state(p.allocation, end, conn)
        store.save_equity(ledger.equity, conn)
        store.save_funding(ledger.payments, conn)
        store.save_transfers(ledger.transfers, conn)


def check_fresh(engine: Engine) -> None:
    """A backfill's ledger must be empty: BackfillError naming the database (password masked)."""
    from eternal.store.ledger import LedgerStore

    if LedgerStore(engine).is_initialised():
        raise BackfillError(f"{engine.url.render_as_string(hide_password=True)} already holds a "
                            "portfolio; a backfill needs a fresh database")


def run_backfill(data: DataSet, settings: Settings, *, start: datetime | None = None,
                 end: datetime | None = None, sleeves: tuple[Sleeve, ...] | None = None,
                 capital: float | None = None, out_dir: Path | None = None,
                 engine: Engine | None = None, progress: bool = True,
                 on_day: Callable[..., None] | None = None, monthly_deposit: float = 0.0,
                 compare_breakers: bool = True,
                 deposits: list[tuple[datetime, float]] | None = None,
                 on_replayed: Callable[[BackfillResult], None] | None = None,
                 ledger_to: Callable[[MemoryLedger, datetime], None] | None = None,
                 view: MarketView | None = None) -> BackfillResult:
    """The driver over history: every event from `start` 00:00 to the close of the day before
    `end` (exclusive), in memory, then the outputs. `on_day(day, books, exchange_books, closes,
    marks, risk_state)` is called after each replayed close. `monthly_deposit`: USDT deposited at the close of
    each month's last day; `deposits`: (time, USDT) on top (a ledger's, to replay it). With every sleeve selected, the orchestration layer runs before the
    engines at each close; a partial selection keeps its sleeves apart.

    With every sleeve selected, the circuit breakers act as live (a partial selection is no
    portfolio: no breakers, no 45 % rule), and the stand-in operator resumes them by
    `RiskParams.replay_resume_days`. When a level fired and `compare_breakers`, the same replay runs
    again with breakers off, and `summary["breakers"]` shows what they cost or saved; that replay
    starts with this one, in a process of its own where it can (`eternal.aside`), and is dropped when no
    level fired. `on_replayed(result)` is called as soon as the replay is done, before its ledger is
    saved and before the wait for that second replay (the result's summary has no breakers-off
    figures yet): work that needs the replay but neither of those can start beside them (the
    report's CORE-alone replay, `tasks.backfill`). The ledger goes into `engine` (fresh: checked
    first), or to `ledger_to(ledger, end)` (a process of its own that writes it, `tasks.backfill`),
    or nowhere. `view`: a market view already built (`MarketView.build`) from this `data` for these
    sleeves, with these settings' indicators, its data checked (the breakers-off replay reuses the
    first's), else built and checked here."""
    sleeves = sleeves or cycle.SLEEVES
    capital = settings.initial_capital if capital is None else capital
    if not 0 < capital < float("inf"):        # nan and inf fail too
        raise BackfillError(f"--capital must be a finite number above 0, got {capital}")
    if not 0 <= monthly_deposit < float("inf"):
        raise BackfillError(f"--monthly-deposit must be a finite number of 0 or more, got {monthly_deposit}")
    for name, usdt in (("--capital", capital), ("--monthly-deposit", monthly_deposit)):
        if usdt > MAX_USDT:
            raise BackfillError(f"{name} {usdt:g} USDT is more than {MAX_USDT:g}: above that a float keeps no cents "
                                "(money never rounds silently)")
    orchestrated = set(sleeves) == set(Sleeve)      # the whole portfolio: allocation between sleeves
    if view is None:
        check_dataset(data, settings, sleeves)       # the same suite as an import or a flow's gather
        view = MarketView.build(data, settings, sleeves, with_regime=orchestrated)
    first, last = view.first_day, view.last_day
    if first is None:
        raise BackfillError("the selected sleeves' series have no day in common")
    start, end = check_window(data, settings, sleeves, start, end, first, last)
    check_history(data, settings, sleeves, start)   # the engines' warm-up before the first day

    shares = allocate(capital, settings, sleeves)
    if Sleeve.FUNDING in sleeves and Sleeve.TACTICAL not in shares:
        shares[Sleeve.TACTICAL] = 0.0          # receives half of the funding collected
    if Sleeve.TACTICAL in sleeves and Sleeve.CORE not in shares:
        shares[Sleeve.CORE] = 0.0              # receives TACTICAL's exits
    if engine is not None:
        check_fresh(engine)
        ledger_to = functools.partial(save_ledger, engine)

    without_breakers = None
    if compare_breakers and settings.risk.breakers_enabled and orchestrated:
        without_breakers = Aside(_without_breakers, data, settings, start, end, sleeves, capital, monthly_deposit,
                                 deposits, name="the second replay (breakers off)", unpickled=(view,))
    try:
        return _replay(data, settings, view, sleeves, capital, shares, start, end, orchestrated, ledger_to,
                       progress, on_day, monthly_deposit, deposits, out_dir, without_breakers, on_replayed)
    finally:
        if without_breakers is not None:
            without_breakers.cancel()


def _replay(data, settings, view, sleeves, capital, shares, start, end, orchestrated, ledger_to, progress,
            on_day, monthly_deposit, deposits, out_dir, without_breakers, on_replayed) -> BackfillResult:
    """run_backfill's replay and outputs, its inputs checked."""
    utilisation: list[float] = []
    bar = None

    max_weights: dict[str, dict] = {}

    def after_close(day: datetime, p: Portfolio, closes: dict, marks: dict) -> None:
        if day < start:
            return
        equity = p.last_close["equity"]            # the close's valuation, just made (`Driver.valuation`)
        total = sum(equity[s.value] for s in p.books)
        for asset, value in net_exposures(p.books, closes, marks).items():
            w = value / total if total > 0 else 0.0
            if w > max_weights.get(asset, {}).get("weight", float("-inf")):
                max_weights[asset] = {"weight": w, "day": f"{day:%Y-%m-%d}"}
        if Sleeve.FUNDING in sleeves:
            fb = p.books[Sleeve.FUNDING]
            e = equity[Sleeve.FUNDING.value]
            deployed = sum(q * closes[a] for a, q in fb.holdings.items() if q) + sum(
                m.margin for m in fb.perps.values())
            utilisation.append(deployed / e if e > 0 else 0.0)
        if bar is not None:
            bar.update(1)
        if on_day is not None:
            on_day(day, p.books, exchange.books, closes, marks, p.risk)

    ledger = MemoryLedger()
    exchange = PaperExchange(settings.fees, FillPolicy.NEXT_OPEN,
                             {s: SleeveBook(s, capital * w) for s, w in shares.items()})
    driver = Driver(view, exchange, ledger, settings, sleeves, orchestrated=orchestrated, on_close=after_close,
                    deposit_shares=shares, simulate_resume=True, breakers_on=orchestrated)
    p = driver.open(capital, shares, start)
    if monthly_deposit > 0:
        month = datetime(start.year, start.month, 1, tzinfo=start.tzinfo)
        while (month := (month + timedelta(days=32)).replace(day=1)) <= end:
            p.deposits.append({"ts": month.isoformat(), "usdt": monthly_deposit,
                               "reference": f"monthly {month:%Y-%m}"})
    for n, (ts, usdt) in enumerate(deposits or ()):
        p.deposits.append({"ts": utc(ts).isoformat(), "usdt": usdt, "reference": f"deposit {n}"})
    try:
        if progress:
            from tqdm import tqdm

            class Bar(tqdm):
                monitor_interval = 0    # no monitor thread (it tunes miniters): beside a thread, no fork aside

            bar = Bar(total=(end - start).days, desc=f"backfill {start:%Y-%m-%d}..{end:%Y-%m-%d}", unit="day",
                      mininterval=0.5, leave=False)
        driver.run(p, Due(end, Kind.CLOSE).key)
    finally:                # interrupted too: the bar's line is cleared, an error starts a line of its own
        if bar is not None:
            bar.close()
    # the deposits as the driver took them, at the close that booked each (one the kill switch held
    # back counts on that later close; one still waiting at the end never arrived)
    deposited = ledger.deposits_taken
    last_i = view.index(end - timedelta(days=1))
    for order in exchange.cancel_open("backfill ended before the next open"):
        rec = ledger.orders[order.client_order_id]
        rec.status, rec.error = order.status, order.error
    p.open_orders.clear()
    closing = Batch(None)
    exchange.close_all(end, view.marks(last_i), ExitReason.END)
    driver.sync(p, closing)
    last_day = end - timedelta(days=1)           # the last close's equity is after that exit
    closes, marks = view.closes(last_i), view.marks(last_i)
    ledger.equity = [r for r in ledger.equity if r["day"] != last_day]
    closing.equity = equity_rows(last_day, p.books, closes, marks)
    ledger.commit(p, closing)

    fills, events, payments, transfers = ledger.fills, ledger.events, ledger.payments, ledger.transfers
    kept = [r for r in ledger.equity if r["day"] >= start]
    equity = (pd.DataFrame(kept).pivot(index="day", columns="sleeve", values="equity")
              if kept else pd.DataFrame())
    equity = equity[[s.value for s in p.books]]
    equity.insert(0, "total", equity.sum(axis=1))
    equity.index = pd.DatetimeIndex(equity.index, name="date")
    trades = trades_frame(fills)
    summary = summarise(equity, trades, capital, start, end, sleeves, deposited)
    summary["funding"] = float(sum(x.amount for x in payments))     # every sleeve's perps (TREND's too)
    summary["funding_received"] = float(sum(x.amount for x in payments if x.amount > 0))
    summary["funding_paid"] = float(-sum(x.amount for x in payments if x.amount < 0))
    if Sleeve.FUNDING in sleeves:
        summary["funding_sleeve"] = funding_summary(trades, payments, transfers, utilisation)
    if Sleeve.TACTICAL in sleeves:
        summary["tactical_sleeve"] = tactical_summary(events)
    summary["breakers"] = breaker_summary(p.risk, events, start, end, settings, orchestrated)
    summary["max_asset_weight"] = dict(sorted(max_weights.items()))      # the same order every run
    result = BackfillResult(summary, trades, equity, events, out_dir, payments, start,
                            {s.value: capital * w for s, w in shares.items()}, transfers,
                            [{**r, "day": r["day"]} for r in kept])

    # what needs this replay starts first (`on_replayed`), then the ledger is saved, then the wait
    # for the breakers-off replay
    if on_replayed is not None:
        on_replayed(result)
    if ledger_to is not None:
        ledger_to(ledger, end)
    if without_breakers is not None and summary["breakers"]["escalations"]:
        summary["breakers"]["without_breakers"] = without_breakers.result()
        summary["breakers"]["cost_usdt"] = summary["breakers"]["without_breakers"]["final_equity"] - summary["final_equity"]
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        trades.to_csv(out_dir / "trades.csv", index=False)
        equity.to_csv(out_dir / "equity.csv", date_format="%Y-%m-%d", float_format="%.8f")
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        events_frame(events).to_csv(out_dir / "events.csv", index=False)
    return result


def tactical_summary(events: list[Event]) -> dict:
    """Every TACTICAL deployment (day, triggers, amount) and exit, from the audit trail."""
    lots = {e.data["lot"]: e for e in events if e.kind == "tactical_lot_opened"}
    deployments = [{"decided": f"{e.ts - timedelta(days=1):%Y-%m-%d}", "lot": e.data["lot"],
                    "triggers": e.data["triggers"], "planned_usdt": e.data["usdt"],
                    "cost_usdt": lots[e.data["lot"]].data["cost_usdt"] if e.data["lot"] in lots else None,
                    "reason": e.message.split(": ", 2)[-1]}
                   for e in events if e.kind == "tactical_deploy"]
    exits = [{"decided": f"{e.ts - timedelta(days=1):%Y-%m-%d}", "lot": e.data["lot"], "kind": e.data["kind"],
              "gain": e.data["gain"], "value_usdt": e.data["value_usdt"]}
             for e in events if e.kind == "tactical_exit"]
    return {"deployments": deployments, "exits": exits,
            "returned_to_core_usdt": float(sum(e.data["proceeds_usdt"] for e in events
                                               if e.kind == "tactical_exit_filled"))}


def fee_usdt(fee: float, fee_asset: str, price: float) -> float:
    """A fill's fee in USDT: as charged when in USDT, else the coin at the fill's price."""
    return fee if fee_asset == QUOTE else fee * price


def trades_frame(fills: Iterable[Fill]) -> pd.DataFrame:
    """The fills as trades.csv rows (TRADE_COLUMNS): `fee` in USDT, so fee totals are USDT."""
    return pd.DataFrame([{
        "timestamp": f.ts.isoformat(), "sleeve": f.sleeve.value, "symbol": f.symbol, "market": f.market.value,
        "side": f.side.value, "qty": f.qty, "price": f.price, "fee": fee_usdt(f.fee, f.fee_asset, f.price),
        "fee_asset": f.fee_asset, "reason": f.reason, "client_order_id": f.client_order_id} for f in fills],
        columns=TRADE_COLUMNS)


def funding_summary(trades: pd.DataFrame, payments: list[FundingPayment], transfers: list[Transfer],
                    utilisation: list[float]) -> dict:
    """The FUNDING sleeve's figures: entries, days invested, funding earned, fees, utilisation."""
    t = trades[trades.sleeve == Sleeve.FUNDING.value]
    entries = t[(t.reason == "entry") & (t.market == "perp")]
    mine = [p for p in payments if p.sleeve == Sleeve.FUNDING]
    invested_days = len({p.ts.date() for p in mine})
    return {"entries": int(len(entries)), "days_invested": invested_days,
            "funding_received": float(sum(p.amount for p in mine if p.amount > 0)),
            "funding_paid": float(-sum(p.amount for p in mine if p.amount < 0)),
            # what FUNDING itself sent (rebalancing moves into TACTICAL from other sleeves are not it)
            "to_tactical": float(sum(t.qty for t in transfers if t.to_sleeve == Sleeve.TACTICAL
                                     and t.from_sleeve == Sleeve.FUNDING and t.asset == "USDT")),
            "fees": float(t.fee.sum()) if len(t) else 0.0,
            "average_utilisation": float(np.mean(utilisation)) if utilisation else 0.0}


def summarise(equity: pd.DataFrame, trades: pd.DataFrame, capital: float, start: datetime,
              end: datetime, sleeves: tuple[Sleeve, ...], deposits: list[tuple[datetime, float]] = ()) -> dict:
    """Returns are time-weighted, on the unit value of `eternal.report` (the one computation of
    returns: the report's and this summary's numbers are the same): a deposit is not a gain (each
    day's return excludes the money that arrived at its close). `total_return` is the unit value's
    (final equity / capital - 1 when there are no deposits), CAGR over len(days) / 365 years,
    maximum drawdown from the opening capital, Sharpe on daily returns (sqrt 365)."""
    from eternal.report import metrics, unit_value

    total = equity["total"]
    final = float(total.iloc[-1])
    inflow = pd.Series(0.0, index=total.index)
    for ts, usdt in deposits:                       # deposited at the cycle on `ts`: the close before
        day = pd.Timestamp(ts - timedelta(days=1))
        if day in inflow.index:
            inflow[day] += usdt
    m = metrics(unit_value(total, inflow, capital), start)
    invested = capital + sum(usdt for _, usdt in deposits)
    return {
        "start": f"{start:%Y-%m-%d}", "end_exclusive": f"{end:%Y-%m-%d}", "days": len(total),
        "sleeves": [s.value for s in sleeves],
        "initial_capital": capital,
        "deposits": invested - capital,
        "final_equity": final,
        "final_equity_by_sleeve": {c: float(equity[c].iloc[-1]) for c in equity.columns if c != "total"},
        "total_return": m["total_return"],        # time-weighted when there are deposits
        "cagr": m["cagr"],
        "max_drawdown": m["max_drawdown"],
        "sharpe": m["sharpe"],
        "trades": int(len(trades)),
        "exit_reasons": {str(k): int(v) for k, v in trades[trades.market == "perp"]["reason"]
                         .value_counts().items() if k not in ("entry", "compound", "rehedge")} if len(trades) else {},
        "fees": float(trades["fee"].sum()) if len(trades) else 0.0,
    }


EVENT_COLUMNS = ["timestamp", "kind", "sleeve", "severity", "details"]


def events_frame(events: list[Event]) -> pd.DataFrame:
    """Every event of a replay as rows of `events.csv`: timestamp, kind, sleeve, severity (P0..P3
    as an alert would carry it, else the event's level), details (the message)."""
    from eternal.alerts import severity

    return pd.DataFrame([{"timestamp": e.ts.isoformat(), "kind": e.kind, "sleeve": e.sleeve.value if e.sleeve else "",
                          "severity": severity(e) or e.level, "details": e.message} for e in events],
                        columns=EVENT_COLUMNS)


def breaker_summary(state, events: list[Event], start: datetime, end: datetime, settings: Settings,
                    whole_portfolio: bool = True) -> dict:
    """The breakers over a replay: every escalation and resume, days at each level, the final
    unit value, high-water mark and drawdown."""
    from eternal.breakers import days_at_levels

    history = [h for h in state.history if utc(h["at"]) >= start]
    return {"enabled": settings.risk.breakers_enabled and whole_portfolio,
            "off_because": None if settings.risk.breakers_enabled and whole_portfolio else (
                "ETERNAL_RISK__BREAKERS_ENABLED=false" if whole_portfolio else
                "not the whole portfolio: the breakers and the 45 % rule guard all five sleeves together"),
            "level": state.level,
            "replay_resume_days": settings.risk.replay_resume_days,
            "escalations": [{"at": h["at"][:10], "from": h["from"], "to": h["to"], "drawdown": h.get("drawdown")}
                            for h in history if h["to"] > h["from"]],
            "resumes": [{"at": h["at"][:10], "from": h["from"], "why": h["why"]} for h in history
                        if h["to"] < h["from"]],
            "days_at_level": days_at_levels(history, start, end),
            "unit_value": state.unit_value, "high_water_mark": state.hwm, "drawdown": state.drawdown,
            "kill_switch": state.kill_switch.model_dump(mode="json") if state.kill_switch else None,
            "risk_refused": sum(1 for e in events if e.kind == "risk_refused"),
            "risk_reduced": sum(1 for e in events if e.kind == "risk_reduced")}
