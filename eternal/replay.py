"""Replay the daily cycle over history: the same pure cycle, executor and paper exchange as live.

A replayed day D, in time order (spec, chapter 3):
  funding 00:00 -> orders decided at D-1's close fill at D's open (exits before entries, sells
  before buys) -> stop checks on D's range (a stop fills at min(open, stop) for longs) ->
  liquidations -> funding 08:00 and 16:00 (and any irregular settlement) -> staking accrual ->
  decisions on D's close. Funding is paid at D's open price: the replay has no intraday perp price.
Positions still open when the window ends are closed at the last close (reason `end`). Data is validated once for the whole window (every prefix of a valid series
is valid and each day only sees candles up to D, so per-day staleness holds by construction);
indicators and all-time highs are computed once per series and sliced by position.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from eternal import allocation, cycle, ledger
from eternal.config import Settings
from eternal.data.csv_files import DataSet
from eternal.data.quality import validate_market_data
from eternal.errors import DataError, EternalError
from eternal.exchange.paper import FillPolicy, PaperExchange
from eternal.execution import execute, scaled_event, sync_record
from eternal.indicators import FundingHistory, PerpMarket, perp_market, realised_volatility, return_correlation
from eternal.models import (
    PERP_SYMBOLS,
    QUOTE,
    FundingTick,
    Transfer,
    base_of,
    SPOT_SYMBOLS,
    Event,
    ExitReason,
    Fill,
    FundingPayment,
    OrderRecord,
    Quote,
    Sleeve,
    SleeveBook,
    Snapshot,
    utc,
)
from eternal.store.ledger import LedgerStore

FLOW = "backfill"
SPOT_NEEDS = {Sleeve.CORE: ("BTC", "ETH"), Sleeve.FUNDING: ("BTC", "ETH", "SOL"),
              Sleeve.TACTICAL: ("BTC", "ETH")}                                      # spot an engine trades
PERP_NEEDS = {Sleeve.TREND_1: ("BTC", "ETH"), Sleeve.TREND_2: ("BTC", "ETH"),
              Sleeve.FUNDING: ("BTC", "ETH", "SOL")}                                 # perps it trades
ALIASES = {"trend": (Sleeve.TREND_1, Sleeve.TREND_2)}
TRADE_COLUMNS = ["timestamp", "sleeve", "symbol", "market", "side", "qty", "price", "fee", "reason",
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


def parse_sleeves(engines: str | None) -> tuple[Sleeve, ...]:
    """'core,trend-1' -> sleeves; 'trend' -> TREND-1 and TREND-2; None -> every implemented engine."""
    if not engines:
        return (*cycle.ENGINES, *cycle.TICK_ENGINES)
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
    return tuple(dict.fromkeys(chosen))


def allocate(capital: float, settings: Settings, sleeves: tuple[Sleeve, ...]) -> dict[Sleeve, float]:
    """Selected sleeves share the capital in proportion to their weights; one sleeve gets it all."""
    raw = {s: getattr(settings.weights, s.weight_field) for s in sleeves}
    total = sum(raw.values())
    if total <= 0:
        raise BackfillError(f"the selected sleeves {[s.value for s in sleeves]} all have weight 0")
    return {s: w / total for s, w in raw.items()}


def perp_markets(data: DataSet, assets, settings: Settings) -> dict[str, PerpMarket]:
    """Indicators for every perp the TREND sleeves trade, computed once per series."""
    lengths = {settings.trend_1.fast_sma, settings.trend_1.slow_sma,
               settings.trend_2.fast_sma, settings.trend_2.slow_sma}
    return {a: perp_market(a, PERP_SYMBOLS[a], data.daily(PERP_SYMBOLS[a]), data.funding.get(PERP_SYMBOLS[a]),
                           lengths, settings.trend_1.adx_length, settings.trend_1.atr_length)
            for a in assets}


def run_backfill(data: DataSet, settings: Settings, *, start: datetime | None = None,
                 end: datetime | None = None, sleeves: tuple[Sleeve, ...] | None = None,
                 capital: float | None = None, out_dir: Path | None = None,
                 engine: Engine | None = None, progress: bool = True,
                 on_day: Callable[..., None] | None = None, monthly_deposit: float = 0.0) -> BackfillResult:
    """`on_day(day, books, exchange_books, closes, marks)` is called after each replayed close.
    `monthly_deposit`: USDT deposited on the first day of each month through the deposit rules.
    With every sleeve selected, the orchestration layer (regimes, band and quarterly rebalancing)
    runs before the engines at each close; a partial selection keeps its sleeves apart."""
    sleeves = sleeves or (*cycle.ENGINES, *cycle.TICK_ENGINES)
    capital = settings.initial_capital if capital is None else capital
    if not capital > 0:
        raise BackfillError(f"--capital must be positive, got {capital}")
    if not monthly_deposit >= 0:
        raise BackfillError(f"--monthly-deposit must be zero or positive, got {monthly_deposit}")
    spot_assets = sorted({a for s in sleeves for a in SPOT_NEEDS.get(s, ())})
    perp_assets = sorted({a for s in sleeves for a in PERP_NEEDS.get(s, ())})
    frames = {SPOT_SYMBOLS[a]: data.daily(SPOT_SYMBOLS[a]) for a in spot_assets}
    frames |= {PERP_SYMBOLS[a]: data.daily(PERP_SYMBOLS[a]) for a in perp_assets}

    # a perp series may start before its indicators exist: the window only needs the candles
    first = max(f.index[0] for f in frames.values())
    last = min(f.index[-1] for f in frames.values())
    start = utc(start) if start is not None else first.to_pydatetime()
    end = utc(end) if end is not None else last.to_pydatetime() + timedelta(days=1)
    if start < first or end > last + timedelta(days=1) or start >= end:
        raise BackfillError(
            f"backfill window {start:%Y-%m-%d}..{end:%Y-%m-%d} (end exclusive) is outside the data: "
            f"{', '.join(frames)} cover {first:%Y-%m-%d}..{last:%Y-%m-%d}")

    funding = {PERP_SYMBOLS[a]: data.funding[PERP_SYMBOLS[a]] for a in perp_assets
               if PERP_SYMBOLS[a] in data.funding}
    validate_market_data({sym: f[f.index < end] for sym, f in frames.items()},
                         {sym: f[f.index < end] for sym, f in funding.items()}, None,
                         max_daily_move=settings.data.max_daily_move,
                         max_funding_rate=settings.data.max_funding_rate_8h)

    days = pd.date_range(start, end - timedelta(days=1), freq="D", tz="UTC")
    # Computed once per series, then read by position: opens, closes, all-time-high closes.
    cols: dict[str, dict[str, np.ndarray]] = {}
    for a in spot_assets:
        f = frames[SPOT_SYMBOLS[a]]
        ath = f["close"].cummax()
        aligned = f.reindex(days)
        if aligned["close"].isna().any():
            missing = aligned.index[aligned["close"].isna()][:5]
            raise DataError(f"{SPOT_SYMBOLS[a]} misses days inside the window: {list(map(str, missing))}")
        cols[a] = {"open": aligned["open"].to_numpy(float), "close": aligned["close"].to_numpy(float),
                   "ath": ath.reindex(days).to_numpy(float)}
    markets = perp_markets(data, perp_assets, settings)
    perp_pos = {a: markets[a].days.get_indexer(days) for a in perp_assets}   # day -> row, -1 if none
    correlation = (return_correlation(markets["BTC"], markets["ETH"], settings.trend_1.correlation_window_days)
                   .reindex(days).to_numpy(float) if {"BTC", "ETH"} <= set(perp_assets) else None)

    tactical = settings.tactical
    vol = (realised_volatility(frames[SPOT_SYMBOLS["BTC"]]["close"], tactical.volatility_window_days)
           .reindex(days).to_numpy(float) if "BTC" in spot_assets else None)
    fear_greed = (data.fear_greed["value"].reindex(days).to_numpy(float)
                  if data.fear_greed is not None and Sleeve.TACTICAL in sleeves else None)
    btc_funding = FundingHistory.of(data.funding.get(PERP_SYMBOLS["BTC"]))
    orchestrated = set(sleeves) == set(Sleeve)      # the whole portfolio: allocation between sleeves
    regime_btc = (perp_market("BTC", SPOT_SYMBOLS["BTC"], frames[SPOT_SYMBOLS["BTC"]], None, (50, 200))
                  if orchestrated else None)
    regime_pos = regime_btc.days.get_indexer(days) if regime_btc is not None else None
    alloc_state: dict | None = None
    deposited: list[tuple[datetime, float]] = []

    shares = allocate(capital, settings, sleeves)
    if Sleeve.FUNDING in sleeves and Sleeve.TACTICAL not in shares:
        shares[Sleeve.TACTICAL] = 0.0          # receives half of the funding collected
    if Sleeve.TACTICAL in sleeves and Sleeve.CORE not in shares:
        shares[Sleeve.CORE] = 0.0              # receives TACTICAL's exits
    books = {s: SleeveBook(s, capital * w) for s, w in shares.items()}
    exchange = PaperExchange(settings.fees, FillPolicy.NEXT_OPEN, books)
    store = LedgerStore(engine) if engine is not None else None
    if store is not None:
        if store.is_initialised():
            raise BackfillError(f"{engine.url.render_as_string(hide_password=True)} already holds a "
                                "portfolio; a backfill needs a fresh database")
        books = store.initialise(capital, shares, start)

    states: dict[Sleeve, dict] = {}
    records: dict[str, OrderRecord] = {}
    trade_ids: set[str] = set()
    fills: list[Fill] = []
    events: list[Event] = []
    payments: list[FundingPayment] = []
    utilisation: list[float] = []
    equity_rows: list[dict] = []
    apy = settings.core.staking_apy

    def book_fills(new: list[Fill], ts: datetime) -> None:
        for f in new:
            ledger.apply_fill(books[f.sleeve], f)
            trade_ids.add(f.trade_id)
        fills.extend(new)

    transfers: list[Transfer] = []
    received: dict[Sleeve, float] = {}       # USDT received per sleeve since the last daily decision

    def book_transfers(new: list[Transfer]) -> None:
        for t in new:
            exchange.transfer(t)             # from None: a deposit from outside
            ledger.apply_transfer(books, t)
            transfers.append(t)
            if t.asset == QUOTE:
                received[t.to_sleeve] = received.get(t.to_sleeve, 0.0) + t.qty
                if t.reason.startswith("allocation") and t.from_sleeve is not None:
                    received[t.from_sleeve] = received.get(t.from_sleeve, 0.0) - t.qty   # taken by others

    funding_assets = PERP_NEEDS[Sleeve.FUNDING] if Sleeve.FUNDING in sleeves else ()

    def settle(ts_from: datetime, ts_to: datetime, opens: dict[str, float]) -> None:
        """Funding settlements in [ts_from, ts_to), in time order, at the day's open price; after
        each settlement time the FUNDING engine decides (a tick), its orders fill at the next open."""
        due = sorted((ts, sym, rate) for a in perp_assets
                     for ts, rate in markets[a].settlements(ts_from, ts_to) for sym in [PERP_SYMBOLS[a]])
        for ts in sorted({ts for ts, _, _ in due}):
            received: dict[str, float] = {}
            for _, sym, rate in (d for d in due if d[0] == ts):
                for p in exchange.settle_funding(ts, sym, rate, opens[sym]):
                    ledger.apply_funding(books[p.sleeve], p)
                    payments.append(p)
                    if p.sleeve == Sleeve.FUNDING:
                        received[base_of(sym)] = received.get(base_of(sym), 0.0) + p.amount
            if funding_assets:
                funding_tick(ts, opens, received)

    def funding_tick(ts: datetime, opens: dict[str, float], received: dict[str, float]) -> None:
        nonlocal states
        tick = FundingTick(
            ts, {a: opens[SPOT_SYMBOLS[a]] for a in funding_assets},
            {a: opens[PERP_SYMBOLS[a]] for a in funding_assets},
            {a: markets[a].latest_funding(ts) for a in funding_assets},
            {a: tuple(r for _, r in markets[a].recent_settlements(ts, 3)) for a in funding_assets},
            books, states.get(Sleeve.FUNDING), received, fills_deferred=True)
        plan = cycle.funding_tick(tick, settings)
        states = {**states, **plan.states}
        events.extend(plan.events)
        book_transfers(plan.transfers)
        result = execute(plan.intents, exchange, flow=f"{FLOW}-funding", scheduled=ts, now=ts,
                         known=records, known_trades=trade_ids)
        for rec in result.orders:
            records[rec.client_order_id] = rec
        events.extend(result.events)

    iterator = range(len(days))
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, desc=f"backfill {start:%Y-%m-%d}..{end:%Y-%m-%d}", unit="day",
                        mininterval=0.5, leave=False)

    for i in iterator:
        day = days[i].to_pydatetime()
        next_day = day + timedelta(days=1)
        opens = {SPOT_SYMBOLS[a]: float(cols[a]["open"][i]) for a in spot_assets}
        bars = {}
        for a in perp_assets:
            j = perp_pos[a][i]
            if j < 0:
                raise DataError(f"{PERP_SYMBOLS[a]} has no candle for {day:%Y-%m-%d}")
            m = markets[a]
            opens[m.symbol] = float(m.open[j])
            bars[m.symbol] = (float(m.open[j]), float(m.high[j]), float(m.low[j]))

        settle(day, day + timedelta(seconds=1), opens)                   # 1. funding 00:00
        for order in exchange.on_bar(day, opens):                        # 2-3. exits, then entries
            rec = records[order.client_order_id]
            new = sync_record(rec, order, trade_ids)
            rec.updated_at = day
            book_fills(new, day)
            if new and (scaled := scaled_event(rec, day)):
                events.append(scaled)
            if order.error:
                events.append(Event(day, "order_rejected", order.error, rec.intent.sleeve, "alert",
                                    {"client_order_id": rec.client_order_id}))
        if bars:
            book_fills(exchange.check_stops(day, bars), day)              # 4. stops
            for f in (liquidated := exchange.check_liquidations(day, bars)):
                events.append(Event(day, "liquidation", f"{f.symbol} liquidated at {f.price:.2f}",
                                    f.sleeve, "alert", {"qty": f.qty}))
            book_fills(liquidated, day)
        settle(day + timedelta(seconds=1), next_day, opens)              # 5. funding 08:00, 16:00
        if apy >= settings.core.staking_min_apy:
            for s, b in books.items():
                if b.staked.get("ETH"):
                    ledger.accrue_staking(exchange.books[s], "ETH", apy)
                    ledger.accrue_staking(b, "ETH", apy)

        closes = {a: float(cols[a]["close"][i]) for a in spot_assets}    # 6. decisions at the close
        marks = {markets[a].symbol: float(markets[a].close[perp_pos[a][i]]) for a in perp_assets}
        deposit = monthly_deposit if next_day.day == 1 else 0.0
        extra_intents, requests = [], {}
        if deposit > 0:
            deposited.append((next_day, deposit))
        if orchestrated:                                                 # 6a. allocation first
            k = int(regime_pos[i])
            x = (allocation.MarketRegimeInputs(day, closes["BTC"], float(regime_btc.sma[50][k]),
                                               float(regime_btc.sma[200][k]), float(regime_btc.adx[k]),
                                               float(vol[i])) if k >= 0 else None)
            orch = allocation.orchestrate(alloc_state, day, next_day, books,
                                          {s: b.equity(closes, marks) for s, b in books.items()}, closes, x,
                                          settings.allocation, deposit, base=settings.weights.by_sleeve(),
                                          marks=marks)
            alloc_state = orch.state
            events.extend(orch.events)
            book_transfers(orch.transfers)
            extra_intents = orch.intents
            requests = orch.requests
        elif deposit > 0:
            book_transfers([Transfer(next_day, None, s, QUOTE, deposit * w, f"deposit of {deposit:,.2f} USDT")
                            for s, w in shares.items() if w > 0])
        snap = Snapshot(next_day, day, closes, {a: float(cols[a]["ath"][i]) for a in spot_assets},
                        {a: Quote(c, c, c) for a, c in closes.items()}, books, states, dict(received),
                        markets, {a: int(perp_pos[a][i]) for a in perp_assets}, marks,
                        float(correlation[i]) if correlation is not None else None,
                        fear_greed=(None if fear_greed is None or np.isnan(fear_greed[i])
                                    else int(fear_greed[i])),
                        volatility={"BTC": float(vol[i])} if vol is not None and not np.isnan(vol[i]) else {},
                        recent_funding={"BTC": btc_funding.window(next_day, tactical.negative_funding_days)},
                        cash_requests=requests)
        received.clear()
        plan = cycle.daily(snap, settings, sleeves)
        states = {**states, **plan.states}
        events += plan.events
        book_transfers(plan.transfers)
        for s, moves in plan.stakes.items():
            for asset, qty in moves.items():
                ledger.stake(books[s], asset, exchange.stake(s, asset, qty))
        for s, levels in plan.stops.items():
            for sym, level in levels.items():
                exchange.set_stop(s, sym, level)
        result = execute(extra_intents + plan.intents, exchange, flow=FLOW, scheduled=next_day, now=next_day,
                         known=records, known_trades=trade_ids)
        for rec in result.orders:
            records[rec.client_order_id] = rec
        events += result.events
        if i == len(days) - 1:                                           # the backfill ends here
            for order in exchange.cancel_open("backfill ended before the next open"):
                records[order.client_order_id].status = order.status
                records[order.client_order_id].error = order.error
            book_fills(exchange.close_all(next_day, marks, ExitReason.END), next_day)
        for s, b in books.items():
            equity_rows.append({"day": day, "sleeve": s.value, "equity": b.equity(closes, marks),
                                "cash": b.cash})
        if funding_assets:
            fb = books[Sleeve.FUNDING]
            e = fb.equity(closes, marks)
            deployed = sum(q * closes[a] for a, q in fb.holdings.items() if q) + sum(
                p.margin for p in fb.perps.values())
            utilisation.append(deployed / e if e > 0 else 0.0)
        if on_day is not None:
            on_day(day, books, exchange.books, closes, marks)

    equity = (pd.DataFrame(equity_rows).pivot(index="day", columns="sleeve", values="equity")
              if equity_rows else pd.DataFrame())
    equity = equity[[s.value for s in books]]
    equity.insert(0, "total", equity.sum(axis=1))
    equity.index = pd.DatetimeIndex(equity.index, name="date")
    trades = pd.DataFrame([{
        "timestamp": f.ts.isoformat(), "sleeve": f.sleeve.value, "symbol": f.symbol, "market": f.market.value,
        "side": f.side.value, "qty": f.qty, "price": f.price, "fee": f.fee, "reason": f.reason,
        "client_order_id": f.client_order_id} for f in fills], columns=TRADE_COLUMNS)
    summary = summarise(equity, trades, capital, start, end, sleeves, deposited)
    summary["funding"] = float(sum(p.amount for p in payments))
    if funding_assets:
        summary["funding_sleeve"] = funding_summary(trades, payments, transfers, utilisation)
    if Sleeve.TACTICAL in sleeves:
        summary["tactical_sleeve"] = tactical_summary(events)

    if store is not None:
        with engine.begin() as conn:
            store.save_execution(list(records.values()), fills, events, books.values(), end, FLOW, conn)
            store.save_states(states, end, conn)
            store.save_equity(equity_rows, conn)
            store.save_funding(payments, conn)
            store.save_transfers(transfers, conn)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        trades.to_csv(out_dir / "trades.csv", index=False)
        equity.to_csv(out_dir / "equity.csv", date_format="%Y-%m-%d", float_format="%.8f")
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return BackfillResult(summary, trades, equity, events, out_dir, payments)


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
            "to_tactical": float(sum(t.qty for t in transfers if t.to_sleeve == Sleeve.TACTICAL)),
            "fees": float(t.fee.sum()) if len(t) else 0.0,
            "average_utilisation": float(np.mean(utilisation)) if utilisation else 0.0}


def summarise(equity: pd.DataFrame, trades: pd.DataFrame, capital: float, start: datetime,
              end: datetime, sleeves: tuple[Sleeve, ...], deposits: list[tuple[datetime, float]] = ()) -> dict:
    """Returns are time-weighted: a deposit is not a gain (each day's return excludes the money
    that arrived at its close); `total_return` and CAGR compare the final equity with the capital
    plus every deposit only when there are none, else they are the chained daily returns."""
    total = equity["total"]
    final = float(total.iloc[-1])
    years = len(total) / 365.0
    flows = pd.Series(0.0, index=total.index)
    for ts, usdt in deposits:                       # deposited at the cycle on `ts`: the close before
        day = pd.Timestamp(ts - timedelta(days=1))
        if day in flows.index:
            flows[day] += usdt
    daily = ((total - flows) / total.shift(1) - 1.0).dropna()
    growth = float((1.0 + daily).prod()) if len(daily) else 1.0
    sd = float(daily.std(ddof=1)) if len(daily) > 1 else 0.0
    nav = (1.0 + daily).cumprod() if deposits else total
    drawdown = float((nav / nav.cummax() - 1.0).min())
    invested = capital + sum(usdt for _, usdt in deposits)
    ret = growth - 1.0 if deposits else final / capital - 1.0
    return {
        "start": f"{start:%Y-%m-%d}", "end_exclusive": f"{end:%Y-%m-%d}", "days": len(total),
        "sleeves": [s.value for s in sleeves],
        "initial_capital": capital,
        "deposits": invested - capital,
        "final_equity": final,
        "final_equity_by_sleeve": {c: float(equity[c].iloc[-1]) for c in equity.columns if c != "total"},
        "total_return": ret,                     # time-weighted when there are deposits
        "cagr": (1.0 + ret) ** (1.0 / years) - 1.0 if years > 0 and ret > -1.0 else None,
        "max_drawdown": drawdown,
        "sharpe": float(daily.mean() / sd * math.sqrt(365)) if sd > 0 else None,
        "trades": int(len(trades)),
        "exit_reasons": {str(k): int(v) for k, v in trades[trades.market == "perp"]["reason"]
                         .value_counts().items() if k not in ("entry", "compound", "rehedge")} if len(trades) else {},
        "fees": float(trades["fee"].sum()) if len(trades) else 0.0,
    }
