"""The backfill report's numbers, from the rows of one ledger: no I/O, no clock.

Every return is measured on a unit value (time-weighted), so money that arrives (a deposit, a
transfer between sleeves) is never a gain and never hides a loss: a day's return is
`(equity - flows that arrived in it) / previous equity - 1`, the first day's against the opening
capital. Money moved at `ts` belongs to the close at or after it (the driver books a close's
transfers at the next day's 00:00, a funding settlement's during the day).

Benchmarks are priced at daily closes without fees over the same days and the same deposits:
BTC bought and held, a static 2:1 BTC/ETH mix rebalanced at each quarter's last close, and CORE
alone (replayed by the driver, with fees) when the run holds CORE beside other sleeves.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd

from eternal import cycle, instruments

TRANSFER_COLUMNS = ["ts", "from_sleeve", "to_sleeve", "asset", "qty", "reason"]
FUNDING_COLUMNS = ["ts", "sleeve", "symbol", "amount"]
QUOTE = "USDT"
MIN_BASE_USDT = 1.0          # a sleeve below this has no meaningful return that day (TACTICAL at 0)

# The seed's backtest gates (architecture doc, chapter 8: "backtest before capital").
GATES = {
    "trend": [("win rate", "win_rate", ">=", 0.35), ("profit factor", "profit_factor", ">=", 1.5),
              ("max drawdown", "max_drawdown", ">", -0.30), ("Sharpe", "sharpe", ">", 1.0)],
    "funding": [("win rate", "win_rate", ">=", 0.90), ("profit factor", "profit_factor", ">=", 2.0),
                ("max drawdown", "max_drawdown", ">", -0.05), ("Sharpe", "sharpe", ">", 1.5)],
}


@dataclass
class LedgerRows:
    """What a report reads from one ledger. `equity`: day, sleeve, equity, cash (one row per sleeve
    per close); `trades`: the fills (TRADE_COLUMNS of eternal.replay); `transfers` and `funding` as
    TRANSFER_COLUMNS / FUNDING_COLUMNS (opening capital included: transfers from outside at or
    before the first day's 00:00); `events`: dicts with ts, kind, sleeve, message, data;
    `closes`: daily closes (day x asset) for coin transfers and the benchmarks."""

    equity: pd.DataFrame
    trades: pd.DataFrame
    transfers: pd.DataFrame
    funding: pd.DataFrame
    events: list[dict] = field(default_factory=list)
    closes: pd.DataFrame | None = None


def close_day(ts) -> pd.Timestamp:
    """The close a movement of money at `ts` is part of (a close's own moves are at the next 00:00)."""
    return (pd.Timestamp(ts) - pd.Timedelta(microseconds=1)).floor("D")


def close_days(ts: pd.Series) -> pd.Series:
    """`close_day` of every time in a column (UTC), at once."""
    return (pd.to_datetime(ts, utc=True) - pd.Timedelta(microseconds=1)).dt.floor("D")


def transfer_values(transfers: pd.DataFrame, closes: pd.DataFrame | None) -> pd.Series:
    """Each transfer in USDT: coins at their close of the day the transfer belongs to (NaN for a
    coin without closes)."""
    if not len(transfers):
        return pd.Series(dtype=float)
    qty = transfers["qty"].astype(float)
    out = pd.Series(float("nan"), index=transfers.index)
    out[transfers["asset"] == QUOTE] = qty[transfers["asset"] == QUOTE]
    days = close_days(transfers["ts"])
    for asset in set(transfers["asset"]) - {QUOTE}:
        if closes is None or asset not in closes:
            continue
        rows = transfers["asset"] == asset
        out[rows] = qty[rows].to_numpy() * closes[asset].asof(pd.DatetimeIndex(days[rows])).to_numpy(float)
    return out


def flows(rows: LedgerRows, days: pd.DatetimeIndex) -> tuple[pd.DataFrame, pd.Series, dict, pd.Series]:
    """(net flows into each sleeve by day, external flows (deposits) into the portfolio by day,
    opening capital per sleeve, deposits by day) over `days`; moves before the first day are the
    opening. Summed per day and sleeve in one step (a full backfill has ~9,000 transfers)."""
    t = rows.transfers.copy()
    sleeves = list(rows.equity["sleeve"].unique())
    per = pd.DataFrame(0.0, index=days, columns=sleeves)
    external = pd.Series(0.0, index=days)
    opening = {s: 0.0 for s in sleeves}
    if not len(t):
        return per, external, opening, external.copy()
    t["usdt"] = transfer_values(t, rows.closes)
    t["day"] = close_days(t["ts"]).to_numpy()
    t = t[t["day"] <= days[-1]]
    before = t["day"] < days[0]
    legs = pd.concat([pd.DataFrame({"sleeve": t["to_sleeve"], "usdt": t["usdt"], "day": t["day"], "before": before}),
                      pd.DataFrame({"sleeve": t["from_sleeve"], "usdt": -t["usdt"], "day": t["day"], "before": before})])
    legs = legs[legs["sleeve"].isin(sleeves)]
    for sleeve, usdt in legs[legs["before"]].groupby("sleeve", sort=False)["usdt"].sum().items():
        opening[sleeve] += float(usdt)
    moved = legs[~legs["before"]].pivot_table(index="day", columns="sleeve", values="usdt", aggfunc="sum")
    per = per.add(moved.reindex(index=days, columns=sleeves), fill_value=0.0).fillna(0.0)[sleeves]
    deposits = t[t["from_sleeve"].isna() & ~before].groupby("day")["usdt"].sum()
    external = external.add(deposits.reindex(days), fill_value=0.0).fillna(0.0)
    return per, external, opening, external.copy()


def unit_value(equity: pd.Series, inflow: pd.Series, opening: float) -> pd.Series:
    """Value of one unit bought at 1.0 with the opening capital: each day's return excludes the
    money that arrived in it; a day after equity below MIN_BASE_USDT counts as 0 %."""
    prev = equity.shift(1)
    prev.iloc[0] = opening
    ret = ((equity - inflow) / prev - 1.0).where(prev >= MIN_BASE_USDT, 0.0).fillna(0.0)
    return (1.0 + ret).cumprod()


def metrics(unit: pd.Series, start: datetime | None = None) -> dict:
    """CAGR, volatility, Sharpe and Sortino (daily, 365 a year, no risk-free rate), maximum drawdown
    with its peak, trough and recovery dates, Calmar: all on the unit value (opening 1.0 at `start`)."""
    start = pd.Timestamp(start) if start is not None else unit.index[0]
    daily = unit.pct_change().dropna()        # the first day's return is from the opening, before any fill
    n = len(unit)
    years = n / 365.0
    total = float(unit.iloc[-1] - 1.0)
    cagr = (1.0 + total) ** (1.0 / years) - 1.0 if years > 0 and total > -1.0 else None
    sd = float(daily.std(ddof=1)) if len(daily) > 1 else 0.0
    downside = float(np.sqrt((np.minimum(daily, 0.0) ** 2).mean())) if len(daily) else 0.0
    path = pd.concat([pd.Series([1.0], index=[start - pd.Timedelta(days=1)]), unit])
    peak_so_far = path.cummax()
    dd = path / peak_so_far - 1.0
    trough = dd.idxmin()
    mdd = float(dd.min())
    peak = path.loc[:trough].idxmax()
    after = path.loc[trough:]
    recovered = after[after >= path[peak]]
    def day(ts) -> str:
        return f"{max(pd.Timestamp(ts), start):%Y-%m-%d}"
    return {"total_return": total, "cagr": cagr, "volatility": sd * math.sqrt(365) if sd else 0.0,
            "max_drawdown": mdd, "drawdown_peak": day(peak) if mdd < 0 else None,
            "drawdown_trough": day(trough) if mdd < 0 else None,
            "drawdown_recovered": day(recovered.index[0]) if mdd < 0 and len(recovered) else None,
            "sharpe": float(daily.mean() / sd * math.sqrt(365)) if sd > 0 else None,
            "sortino": float(daily.mean() / downside * math.sqrt(365)) if downside > 0 else None,
            "calmar": float(cagr / -mdd) if cagr is not None and mdd < 0 else None}


# trades ---------------------------------------------------------------------------------------
@functools.cache
def spot_dust(asset: str) -> float:
    """Under this qty a spot holding of `asset` cannot be sold (the exchange's minimum qty)."""
    rules = instruments.default().get(f"{asset}/{QUOTE}")
    return rules.min_qty if rules is not None else 0.0


def _stamps(values: pd.Series) -> list[pd.Timestamp]:
    """`pd.Timestamp(v)` of each value (ISO text or datetimes), converted as one array (a
    Timestamp parsed per row was most of the round trips' time); row by row when the column
    does not convert as one."""
    try:
        return list(pd.to_datetime(values, format="ISO8601") if values.dtype == object else pd.DatetimeIndex(values))
    except (ValueError, TypeError):
        return [pd.Timestamp(v) for v in values]


def round_trips(trades: pd.DataFrame, funding: pd.DataFrame, transfers: pd.DataFrame,
                closes: pd.DataFrame | None) -> pd.DataFrame:
    """Every closed trade of a sleeve in one asset: from flat (spot and perp legs) to flat again.
    P&L = cash from its fills (sells - buys) - fees + funding booked while open; coins leaving or
    joining the sleeve in kind count at that day's close. CORE's holdings never close. A fee charged
    in the coin (`fee_asset`; a spot buy's, as Bybit charges it; `fee` is in USDT at the fill price)
    costs coins, not cash: the sleeve holds, and later sells, that many fewer."""
    moves = []
    fee_assets = trades["fee_asset"].tolist() if "fee_asset" in trades else [QUOTE] * len(trades)
    # columns as lists: a Series yields the same values one __getitem__ at a time
    for ts, side, symbol, qty, price, fee, fee_asset, sleeve, market, reason in zip(
            _stamps(trades["timestamp"]), *(trades[c].tolist() for c in ("side", "symbol", "qty", "price", "fee")),
            fee_assets, *(trades[c].tolist() for c in ("sleeve", "market", "reason"))):
        sign = 1.0 if side == "buy" else -1.0
        asset = symbol.split("/")[0]
        in_coin = fee_asset == asset
        coins = sign * qty - (fee / price if in_coin else 0.0)
        moves.append((ts, 0, sleeve, asset, market, coins, -sign * qty * price - (0.0 if in_coin else fee), fee,
                      reason))
    for r in transfers.itertuples():
        if r.asset == QUOTE or closes is None or r.asset not in closes:
            continue
        px = float(closes[r.asset].asof(close_day(r.ts)))
        for sleeve, sign in ((r.from_sleeve, -1.0), (r.to_sleeve, 1.0)):
            if isinstance(sleeve, str):
                moves.append((pd.Timestamp(r.ts), 1, sleeve, r.asset, "spot", sign * r.qty, -sign * r.qty * px,
                              0.0, "in kind"))
    for ts, sleeve, symbol, amount in zip(_stamps(funding["ts"]), funding["sleeve"].tolist(),
                                          funding["symbol"].tolist(), funding["amount"].tolist()):
        moves.append((ts, 2, sleeve, symbol.split("/")[0], "funding", 0.0, float(amount), 0.0, ""))
    moves.sort(key=lambda m: (m[0], m[1]))
    open_: dict[tuple[str, str], dict] = {}
    out = []
    for ts, _, sleeve, asset, market, dq, cash, fee, reason in moves:
        key = (sleeve, asset)
        t = open_.get(key)
        if market == "funding":
            if t is not None:
                t["pnl"] += cash
                t["funding"] += cash
            continue
        if t is None:
            if dq < 0 and market == "spot":       # selling coins it did not buy here (CORE's in kind)
                continue
            t = open_[key] = {"sleeve": sleeve, "asset": asset, "opened": ts, "spot": 0.0, "perp": 0.0,
                              "pnl": 0.0, "fees": 0.0, "funding": 0.0, "size": 0.0}
        t[market] += dq
        t["pnl"] += cash
        t["fees"] += fee
        t["size"] = max(t["size"], abs(t["spot"]), abs(t["perp"]))
        # spot dust (under the exchange's minimum qty: what a coin fee leaves after a sale down to
        # the step) cannot be sold: the trade is flat without it
        if (abs(t["spot"]) <= max(1e-9 * max(t["size"], 1.0), spot_dust(asset))
                and abs(t["perp"]) <= 1e-9 * max(t["size"], 1.0)):
            out.append({"sleeve": sleeve, "asset": asset, "opened": t["opened"], "closed": ts,
                        "pnl_usdt": t["pnl"], "fees_usdt": t["fees"], "funding_usdt": t["funding"],
                        "exit_reason": reason})
            del open_[key]
    return pd.DataFrame(out, columns=["sleeve", "asset", "opened", "closed", "pnl_usdt", "fees_usdt",
                                      "funding_usdt", "exit_reason"])


def trade_stats(trips: pd.DataFrame) -> dict:
    """Closed trades, win rate and profit factor (gains / losses; inf without a loss)."""
    n = len(trips)
    wins = trips.pnl_usdt[trips.pnl_usdt > 0].sum() if n else 0.0
    losses = -trips.pnl_usdt[trips.pnl_usdt <= 0].sum() if n else 0.0
    return {"closed_trades": n, "wins": int((trips.pnl_usdt > 0).sum()) if n else 0,
            "win_rate": float((trips.pnl_usdt > 0).mean()) if n else None,
            "profit_factor": (float(wins / losses) if losses > 0 else (math.inf if wins > 0 else None)),
            "pnl_usdt": float(trips.pnl_usdt.sum()) if n else 0.0}


# benchmarks -------------------------------------------------------------------------------------
def static_mix(closes: pd.DataFrame, weights: dict[str, float], days: pd.DatetimeIndex, opening: float,
               deposits: pd.Series, rebalance_quarterly: bool = True) -> pd.Series:
    """Equity of a portfolio bought at the first close in `weights`, each deposit bought at the close
    it arrives in the same weights, rebalanced (quarterly) at each quarter's last close; no fees."""
    px = closes.reindex(days).ffill()[list(weights)]
    rows = px.to_numpy(dtype=float).tolist()           # plain floats by day: no pandas row per day
    assets = {a: k for k, a in enumerate(px.columns)}
    arriving = {day: usdt for day, usdt in deposits.items() if usdt} if len(deposits) else {}
    after = days + pd.Timedelta(days=1)
    quarter_end = ((after.day == 1) & after.month.isin([1, 4, 7, 10])).tolist() if rebalance_quarterly else []
    qty = {a: opening * w / rows[0][assets[a]] for a, w in weights.items()}
    out = []
    for i, day in enumerate(days):
        p = rows[i]
        value = sum(qty[a] * p[assets[a]] for a in weights)
        if i > 0 and day in arriving:
            value += arriving[day]
            qty = {a: qty[a] + arriving[day] * w / p[assets[a]] for a, w in weights.items()}
        if rebalance_quarterly and quarter_end[i]:
            qty = {a: value * w / p[assets[a]] for a, w in weights.items()}
        out.append(value)
    return pd.Series(out, index=days, dtype=float)


# the report -------------------------------------------------------------------------------------
BENCHMARKS = {"BTC buy-and-hold": {"BTC": 1.0}, "BTC/ETH 2:1, quarterly": {"BTC": 2 / 3, "ETH": 1 / 3}}
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


@dataclass
class Report:
    """The numbers (`summary`, JSON-ready), the tables of report.md, and the series of its charts."""

    summary: dict
    tables: dict[str, pd.DataFrame]
    equity: pd.DataFrame            # day x total, sleeves, benchmarks (USDT)
    unit: pd.DataFrame              # day x the same, unit values (1.0 at the opening)
    weights: pd.DataFrame           # day x sleeve, share of the total
    deposits: pd.Series             # day -> USDT that arrived at that close


def equity_frames(rows: LedgerRows) -> tuple[pd.DataFrame, pd.DataFrame]:
    e = rows.equity.copy()
    e["day"] = pd.to_datetime(e["day"], utc=True)
    # the portfolio's order (CORE, TREND-1, TREND-2, TACTICAL, FUNDING), whatever order the rows
    # came in: a report rebuilt from a ledger's tables reads as the backfill's own
    rank = {s.value: n for n, s in enumerate(cycle.SLEEVES)}
    order = sorted(dict.fromkeys(e["sleeve"]), key=lambda s: (rank.get(s, len(rank)), s))
    eq = e.pivot(index="day", columns="sleeve", values="equity")[order]
    cash = e.pivot(index="day", columns="sleeve", values="cash")[order]
    return eq, cash


def exit_reasons(trips: pd.DataFrame) -> pd.DataFrame:
    """One row per sleeve and exit reason (indexed by both): the closed trades it ended and their
    share of the sleeve's closed trades (a fraction), most frequent first."""
    if not len(trips):
        return pd.DataFrame()
    n = trips.groupby(["sleeve", "exit_reason"]).size().rename("closed_trades").reset_index()
    n["share"] = n.closed_trades / n.groupby("sleeve").closed_trades.transform("sum")
    n["exit_reason"] = n.exit_reason.str.replace("_", " ")
    n = n.sort_values(["sleeve", "closed_trades", "exit_reason"], ascending=[True, False, True])
    return n.set_index(["sleeve", "exit_reason"])


def build(rows: LedgerRows, core_alone: pd.Series | Callable[[], pd.Series | None] | None = None) -> Report:
    """The whole report of one ledger; `core_alone`: CORE's equity replayed alone over the same
    days and deposits (a benchmark), None to leave it out, or a function that returns it (or None),
    called once everything that does not need it is built (a replay beside: its wait comes last)."""
    eq, cash = equity_frames(rows)
    days = eq.index
    start, end = days[0], days[-1] + pd.Timedelta(days=1)
    per, external, opening, deposits = flows(rows, days)
    total = eq.sum(axis=1)
    capital = sum(opening.values())
    years = len(days) / 365.0
    units = {"total": unit_value(total, external, capital)}
    units |= {s: unit_value(eq[s], per[s], opening[s]) for s in eq.columns}
    trades = rows.trades.copy()
    trades["notional"] = trades.qty * trades.price
    trades["asset"] = trades.symbol.str.split("/").str[0]
    trips = round_trips(rows.trades, rows.funding, rows.transfers, rows.closes)
    funding = rows.funding

    def sleeve_row(name: str, equity: pd.Series, t: pd.DataFrame, f: pd.DataFrame, trip: pd.DataFrame,
                   cash_share: pd.Series | None) -> dict:
        m = metrics(units[name], start)
        return {"final_equity": float(equity.iloc[-1]), **m,
                "turnover": float(t.notional.sum() / equity.mean() / years) if equity.mean() > 0 else None,
                "fees_usdt": float(t.fee.sum()), "fills": int(len(t)),
                "funding_received_usdt": float(f.amount[f.amount > 0].sum()),
                "funding_paid_usdt": float(-f.amount[f.amount < 0].sum()),
                "utilisation": float(cash_share.mean()) if cash_share is not None and len(cash_share) else None,
                **trade_stats(trip)}

    sleeves = {"total": sleeve_row("total", total, trades, funding, trips,
                                   (1 - cash.sum(axis=1) / total)[total > 0])}
    for s in eq.columns:
        alive = eq[s] > MIN_BASE_USDT
        sleeves[s] = sleeve_row(s, eq[s], trades[trades.sleeve == s], funding[funding.sleeve == s],
                                trips[trips.sleeve == s], (1 - cash[s] / eq[s])[alive])

    bench_equity: dict[str, pd.Series] = {}
    if rows.closes is not None:
        for name, weights in BENCHMARKS.items():
            if all(a in rows.closes for a in weights):
                bench_equity[name] = static_mix(rows.closes, weights, days, capital, deposits,
                                                rebalance_quarterly=len(weights) > 1)
    benchmarks = {}

    def add_benchmark(name: str, series: pd.Series) -> None:
        units[name] = unit_value(series, deposits, capital)
        benchmarks[name] = {"final_equity": float(series.iloc[-1]), **metrics(units[name], start)}

    for name, series in bench_equity.items():
        add_benchmark(name, series)
    the_gates, regimes = gates(sleeves), regime_days(rows.events, days)
    monthly, by_asset, exits = (monthly_returns(units["total"], start), trades_table(trades, trips),
                                exit_reasons(trips))
    if callable(core_alone):          # all that does not need it is built: now its wait
        core_alone = core_alone()
    if core_alone is not None:
        bench_equity["CORE alone"] = core_alone.reindex(days)
        add_benchmark("CORE alone", bench_equity["CORE alone"])

    summary = {"start": f"{start:%Y-%m-%d}", "end_exclusive": f"{end:%Y-%m-%d}", "days": len(days),
               "initial_capital": capital, "deposits": float(deposits.sum()),
               "sleeves": sleeves, "benchmarks": benchmarks, "gates": the_gates, "regimes": regimes}
    tables = {
        "by sleeve": sleeve_table(sleeves),
        "benchmarks": bench_table(sleeves["total"], benchmarks),
        "gates": pd.DataFrame(summary["gates"]),
        "monthly returns": monthly,
        "trades by sleeve and asset": by_asset,
        "exit reasons": exits,
        "time in each regime": pd.DataFrame([{"regime": k, "days": v, "share": v / len(days)}
                                             for k, v in summary["regimes"].items()]),
    }
    return Report(summary, tables, pd.concat({"total": total, **{s: eq[s] for s in eq.columns}, **bench_equity},
                                             axis=1),
                  pd.DataFrame(units), eq.div(total, axis=0), deposits[deposits > 0])


def gates(sleeves: dict) -> list[dict]:
    """The seed's gates beside each TREND and the FUNDING sleeve's result, and whether it passes."""
    out = []
    for name, m in sleeves.items():
        kind = "trend" if name.startswith("trend") else "funding" if name == "funding" else None
        for label, key, op, limit in GATES.get(kind, []):
            value = m.get(key)
            ok = value is not None and (value >= limit if op == ">=" else value > limit)
            out.append({"sleeve": name, "gate": label, "needs": f"{op} {limit:g}", "result": value,
                        "passes": bool(ok)})
    return out


def regime_days(events: list[dict], days: pd.DatetimeIndex) -> dict[str, int]:
    changes = sorted((close_day(e["ts"]), e["data"].get("regime")) for e in events if e["kind"] == "regime_change")
    if not changes:
        return {}
    regime = pd.Series([None] * len(days), index=days, dtype=object)
    for day, r in changes:
        regime[regime.index >= day] = r
    return {str(k): int(v) for k, v in regime.dropna().value_counts().items()}


def monthly_returns(unit: pd.Series, start) -> pd.DataFrame:
    """Year x month of the unit value's returns (the first month's from the opening), and the year's."""
    def returns(freq: str) -> pd.Series:
        ends = unit.resample(freq).last()
        return ends / ends.shift(1).fillna(1.0) - 1.0
    rets = returns("ME")
    table = pd.DataFrame({"year": rets.index.year, "month": [MONTHS[m - 1] for m in rets.index.month],
                          "r": rets.values}).pivot(index="year", columns="month", values="r")
    table = table.reindex(columns=[m for m in MONTHS if m in table.columns])
    table["whole year"] = returns("YE").values
    return table


def trades_table(trades: pd.DataFrame, trips: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (sleeve, asset), t in trades.groupby(["sleeve", "asset"], sort=False):
        st = trade_stats(trips[(trips.sleeve == sleeve) & (trips.asset == asset)])
        rows.append({"sleeve": sleeve, "asset": asset, "fills": len(t), "traded_usdt": t.notional.sum(),
                     "fees_usdt": t.fee.sum(), "closed_trades": st["closed_trades"], "win_rate": st["win_rate"],
                     "profit_factor": st["profit_factor"], "pnl_usdt": st["pnl_usdt"]})
    return pd.DataFrame(rows)


SLEEVE_COLUMNS = ["final_equity", "total_return", "cagr", "volatility", "max_drawdown", "drawdown_peak",
                  "drawdown_trough", "sharpe", "sortino", "calmar", "turnover", "fees_usdt",
                  "funding_received_usdt", "funding_paid_usdt", "utilisation", "fills", "closed_trades",
                  "win_rate", "profit_factor"]


def sleeve_table(sleeves: dict) -> pd.DataFrame:
    return pd.DataFrame({k: {c: v.get(c) for c in SLEEVE_COLUMNS} for k, v in sleeves.items()}).T


def bench_table(total: dict, benchmarks: dict) -> pd.DataFrame:
    cols = ["final_equity", "total_return", "cagr", "volatility", "max_drawdown", "sharpe", "sortino", "calmar"]
    return pd.DataFrame({"this portfolio": {c: total.get(c) for c in cols},
                         **{k: {c: v.get(c) for c in cols} for k, v in benchmarks.items()}}).T
