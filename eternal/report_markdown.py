"""report.md from a `eternal.report.Report`: fractions shown as percentages, amounts in USDT. No I/O."""
from __future__ import annotations

import math

import pandas as pd

from eternal.report import Report

PERCENT = {"total_return", "cagr", "volatility", "max_drawdown", "utilisation", "win_rate", "share", "r"}
RATIO = {"sharpe", "sortino", "calmar", "profit_factor", "turnover"}
COUNT = {"fills", "closed_trades", "days", "wins"}


def fmt(value, column: str = "", percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return "PASS" if value else "FAIL"
    if isinstance(value, (int, float)) and math.isinf(value):
        return "n/a (no losses)" if column == "profit_factor" else "inf"   # gains / 0: no losing trade
    if percent or column in PERCENT:
        return f"{value:+.2%}" if column not in ("utilisation", "win_rate", "share", "volatility") else f"{value:.2%}"
    if column in COUNT:
        return f"{value:,.0f}"
    if column in RATIO:
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def table(df: pd.DataFrame, index: str | None = None, percent: bool = False) -> str:
    """A markdown table: the index first (named `index`) when given."""
    if df is None or not len(df):
        return "_none_\n"
    cols = list(df.columns)
    head = ([index] if index else []) + [str(c) for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * (1 if index else 0) + ["---:"] * len(cols)) + "|"]
    for key, row in df.iterrows():
        cells = ([", ".join(map(str, key)) if isinstance(key, tuple) else str(key)] if index else []) + [fmt(row[c], str(c), percent) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def gates_table(gates: pd.DataFrame) -> str:
    if not len(gates):
        return "_no TREND or FUNDING sleeve in this run_\n"
    lines = ["| sleeve | gate | needs | result | verdict |", "|---|---|---|---:|---|"]
    for g in gates.itertuples():
        key = {"win rate": "win_rate", "max drawdown": "max_drawdown", "profit factor": "profit_factor"}.get(g.gate, "sharpe")
        needs = g.needs if key in ("sharpe", "profit_factor") else f"{g.needs.split()[0]} {float(g.needs.split()[1]):.0%}"
        lines.append(f"| {g.sleeve} | {g.gate} | {needs} | {fmt(g.result, key)} | {'PASS' if g.passes else '**FAIL**' + (' (no closed trade)' if g.result is None else '')} |")
    return "\n".join(lines) + "\n"


def markdown(report: Report) -> str:
    s, t = report.summary, report.tables
    total = s["sleeves"]["total"]
    g = t["gates"]
    passed = g[g.passes] if len(g) else g
    lines = [f"# Backfill report {s['start']} .. {s['end_exclusive']} (end exclusive, {s['days']} days)", "",
             f"Capital {s['initial_capital']:,.2f} USDT, deposits {s['deposits']:,.2f} USDT, "
             f"final equity **{total['final_equity']:,.2f} USDT**. Returns are time-weighted (on a unit value: "
             "a deposit is never a gain), daily, 365 days a year, no risk-free rate.", "",
             f"Total return **{fmt(total['total_return'], 'total_return')}**, CAGR {fmt(total['cagr'], 'cagr')}, "
             f"max drawdown {fmt(total['max_drawdown'], 'max_drawdown')} ({total['drawdown_peak']} .. "
             f"{total['drawdown_trough']}, recovered {total['drawdown_recovered'] or 'not yet'}), "
             f"Sharpe {fmt(total['sharpe'], 'sharpe')}.", ""]
    for name, b in s["benchmarks"].items():
        lines.append(f"* {name}: {fmt(b['total_return'], 'total_return')}, max drawdown "
                     f"{fmt(b['max_drawdown'], 'max_drawdown')}, Sharpe {fmt(b['sharpe'], 'sharpe')}")
    lines += ["", "## Backtest gates (the seed's)", "",
              (f"{len(passed)} of {len(g)} gates pass" + (": " + ", ".join(f"{r.sleeve} {r.gate}" for r in passed.itertuples())
                                                       if len(passed) else "") + "." if len(g) else ""), "",
              gates_table(g),
              "## Benchmarks (same days, same deposits, daily closes, no fees)", "",
              table(t["benchmarks"], "portfolio"),
              "## By sleeve", "",
              "Turnover: traded notional / average equity, per year. Utilisation: the average share of equity "
              "not in cash (coins and perp margin).", "",
              table(t["by sleeve"], "sleeve"),
              "## Monthly returns", "", table(t["monthly returns"], "year", percent=True),
              "## Trades by sleeve and asset", "",
              "A closed trade runs from flat to flat in one asset (spot and perp legs together), its P&L after "
              "fees and with the funding booked while open.", "",
              table(t["trades by sleeve and asset"].set_index(["sleeve", "asset"]) if len(t["trades by sleeve and asset"])
                    else None, "sleeve, asset"),
              "## Exit reasons (closed trades)", "", table(t["exit reasons"], "sleeve, exit reason"),
              "## Time in each regime", "", table(t["time in each regime"].set_index("regime")
                                                  if len(t["time in each regime"]) else None, "regime"),
              "## Charts", "", "![equity](equity.png)", "", "![drawdown](drawdown.png)", "",
              "![sleeves](sleeves.png)", ""]
    return "\n".join(lines)
