"""The backfill report: numbers on the unit value, benchmarks, gates, and files that agree."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from eternal import report as rep
from eternal.config import load_settings
from eternal.models import Sleeve, utc
from eternal.replay import parse_sleeves, run_backfill
from eternal.store.db import connect
from tasks import report as shell


def test_max_drawdown_with_deposits_keeps_the_first_day_on_the_unit_value(dataset):
    # issue 14: CORE alone 2021-11-09..2022-07-01, 10,000 USDT monthly reported -69.24 %: the
    # chained returns dropped the first day, the peak (1.0 at 2021-11-09); on the unit value -69.41 %
    r = run_backfill(dataset, load_settings(), sleeves=parse_sleeves("core"), start=utc("2021-11-09"),
                     end=utc("2022-07-01"), monthly_deposit=10_000.0, progress=False)
    # -69.4005 % (was -69.406 % with every buy's fee paid in USDT: paid in the coins, it falls with them)
    assert r.summary["max_drawdown"] == pytest.approx(-0.694005, abs=5e-7)
    built = rep.build(shell.rows_from_result(r, shell.closes_frame(dataset)))
    total = built.summary["sleeves"]["total"]
    assert total["max_drawdown"] == pytest.approx(r.summary["max_drawdown"], abs=1e-12)    # one computation
    assert (total["drawdown_peak"], total["drawdown_trough"], total["drawdown_recovered"]) == (
        "2021-11-09", "2022-06-18", None)
    assert total["total_return"] == pytest.approx(r.summary["total_return"])   # deposits are no gain


def closes(dataset, *days):
    return [float(dataset.daily(f"{a}/USDT").loc[d, "close"]) for a, d in days]


def test_benchmarks_match_hand_computed_values_over_a_named_window(dataset):
    frame = shell.closes_frame(dataset)
    days = pd.date_range("2023-03-01", "2023-04-30", freq="D", tz="UTC")
    deposits = pd.Series({pd.Timestamp("2023-04-15", tz="UTC"): 1_000.0})
    b0, b_q, b_dep, b_end = closes(dataset, *[("BTC", d) for d in ("2023-03-01", "2023-03-31", "2023-04-15",
                                                                     "2023-04-30")])
    e0, e_q, e_dep, e_end = closes(dataset, *[("ETH", d) for d in ("2023-03-01", "2023-03-31", "2023-04-15",
                                                                    "2023-04-30")])
    btc = rep.static_mix(frame, {"BTC": 1.0}, days, 10_000.0, deposits, rebalance_quarterly=False)
    assert btc.iloc[-1] == pytest.approx((10_000 / b0 + 1_000 / b_dep) * b_end, rel=1e-12)
    unit = rep.unit_value(btc, deposits.reindex(days, fill_value=0.0), 10_000.0)
    assert unit.iloc[-1] == pytest.approx(b_end / b0, rel=1e-12)   # a deposit changes no return
    mix = rep.static_mix(frame, {"BTC": 2 / 3, "ETH": 1 / 3}, days, 10_000.0, deposits)
    at_quarter_end = 10_000 * (2 / 3 * b_q / b0 + 1 / 3 * e_q / e0)       # rebalanced to 2:1 at 03-31's close
    qty_b, qty_e = at_quarter_end * 2 / 3 / b_q, at_quarter_end / 3 / e_q
    qty_b, qty_e = qty_b + 1_000 * 2 / 3 / b_dep, qty_e + 1_000 / 3 / e_dep
    assert mix.iloc[-1] == pytest.approx(qty_b * b_end + qty_e * e_end, rel=1e-12)


def test_gates_say_which_pass():
    sleeves = {"trend-1": {"win_rate": 0.35, "profit_factor": 1.4, "max_drawdown": -0.30, "sharpe": 1.2},
               "funding": {"win_rate": None, "profit_factor": float("inf"), "max_drawdown": -0.01, "sharpe": 2.0},
               "core": {"win_rate": 0.0}}
    verdict = {(g["sleeve"], g["gate"]): g["passes"] for g in rep.gates(sleeves)}
    assert verdict == {("trend-1", "win rate"): True, ("trend-1", "profit factor"): False,
                       ("trend-1", "max drawdown"): False, ("trend-1", "Sharpe"): True,
                       ("funding", "win rate"): False, ("funding", "profit factor"): True,
                       ("funding", "max drawdown"): True, ("funding", "Sharpe"): True}


@pytest.fixture(scope="module")
def whole(dataset, tmp_path_factory):
    """Every sleeve 2021-01-01..2021-04-01, 1,000 USDT monthly, with its ledger and its report."""
    out = tmp_path_factory.mktemp("report")
    r = run_backfill(dataset, load_settings(), start=utc("2021-01-01"), end=utc("2021-04-01"),
                     monthly_deposit=1_000.0, out_dir=out, engine=connect(f"sqlite:///{out / 'backfill.db'}"),
                     progress=False, compare_breakers=False)
    rows = shell.rows_from_result(r, shell.closes_frame(dataset))
    built = rep.build(rows, shell.core_alone(dataset, load_settings(), rows))
    shell.write(built, out, r.summary)
    return r, built, out


def test_funding_to_tactical_counts_only_what_funding_sent(whole):
    r, _, out = whole
    sent = sum(t.qty for t in r.transfers if t.from_sleeve == Sleeve.FUNDING and t.to_sleeve == Sleeve.TACTICAL)
    into = sum(t.qty for t in r.transfers if t.to_sleeve == Sleeve.TACTICAL and t.asset == "USDT")
    summary = json.loads((out / "summary.json").read_text())
    assert sent > 0 and into > sent        # deposits and rebalancing also pay TACTICAL: not FUNDING's
    assert summary["funding_sleeve"]["to_tactical"] == pytest.approx(sent)
    assert summary["funding_received"] - summary["funding_paid"] == pytest.approx(summary["funding"])


def test_report_tables_agree_with_equity_csv_and_trades_csv(whole):
    r, built, out = whole
    equity = pd.read_csv(out / "equity.csv", index_col="date", parse_dates=True)
    trades = pd.read_csv(out / "trades.csv")
    by_sleeve = built.tables["by sleeve"]
    for sleeve in [c for c in equity.columns]:
        assert by_sleeve.loc[sleeve, "final_equity"] == pytest.approx(equity[sleeve].iloc[-1], rel=1e-9)
        fills = trades[trades.sleeve == sleeve] if sleeve != "total" else trades
        assert by_sleeve.loc[sleeve, "fills"] == len(fills)
        assert by_sleeve.loc[sleeve, "fees_usdt"] == pytest.approx(fills.fee.sum())
    per_asset = built.tables["trades by sleeve and asset"].set_index(["sleeve", "asset"])["fills"]
    counted = trades.assign(asset=trades.symbol.str.split("/").str[0]).groupby(["sleeve", "asset"]).size()
    assert per_asset.sort_index().to_dict() == counted.sort_index().to_dict()
    # monthly returns: month-end totals of equity.csv, each month's deposit (at its last close) taken out
    total = equity["total"]
    deposits = {pd.Timestamp(d): 1_000.0 for d in ("2021-01-31", "2021-02-28", "2021-03-31")}
    unit, prev = [], 100_000.0
    for day, value in total.items():
        unit.append((unit[-1] if unit else 1.0) * (value - deposits.get(day, 0.0)) / prev)
        prev = value
    month_ends = pd.Series(unit, index=total.index).resample("ME").last()
    expected = month_ends / month_ends.shift(1).fillna(1.0) - 1
    got = built.tables["monthly returns"].loc[2021, ["Jan", "Feb", "Mar"]]
    assert list(got) == pytest.approx(list(expected))
    text = (out / "report.md").read_text()
    assert f"{by_sleeve.loc['total', 'final_equity']:,.2f}" in text and "| BTC buy-and-hold |" in text
    assert "## Backtest gates" in text and "| trend-1 | win rate | >= 35% |" in text
    assert {p.name for p in out.iterdir()} >= {"report.md", "equity.png", "drawdown.png", "sleeves.png",
                                               "trades.csv", "equity.csv", "summary.json", "events.csv"}
    assert (out / "equity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_backfill_summary_and_report_compute_returns_once(whole, dataset):
    """`eternal backfill`'s summary takes its returns from the report's unit value, so both say the
    same. 2021-01-01..2021-06-01 with 1,000 USDT monthly: the crash of May 2021 engages L4 (the
    kill switch), under which deposits wait for a resume; the one of 2021-06-01 never arrived,
    yet the summary counted it as put in and took it out of the last day's return (+23.25 % where
    the ledger's unit value says +24.22 %). Only the deposits the ledger took count now."""
    r, built, _ = whole           # every deposit arrived (the last one at the close on 2021-04-01)
    total = built.summary["sleeves"]["total"]
    for key in ("total_return", "cagr", "max_drawdown", "sharpe"):
        assert r.summary[key] == pytest.approx(total[key], rel=1e-12, abs=1e-15), key
    assert r.summary["deposits"] == 3_000.0

    r = run_backfill(dataset, load_settings(), start=utc("2021-01-01"), end=utc("2021-06-01"),
                     monthly_deposit=1_000.0, progress=False, compare_breakers=False)
    assert r.summary["breakers"]["kill_switch"]
    arrived = sum(t.qty for t in r.transfers if t.from_sleeve is None and t.asset == "USDT" and t.ts > utc("2021-01-01"))
    assert arrived == pytest.approx(4_000.0) and r.summary["deposits"] == 4_000.0
    total = rep.build(shell.rows_from_result(r, shell.closes_frame(dataset))).summary["sleeves"]["total"]
    for key in ("total_return", "cagr", "max_drawdown", "sharpe"):
        assert r.summary[key] == pytest.approx(total[key], rel=1e-12, abs=1e-15), key


def test_report_md_exit_reasons_and_a_profit_factor_without_losses(whole):
    from eternal.report_markdown import fmt, markdown

    _, built, out = whole
    text = (out / "report.md").read_text()
    exits = built.tables["exit reasons"]
    assert list(exits.index.names) == ["sleeve", "exit_reason"] and list(exits.columns) == ["closed_trades", "share"]
    section = text[text.index("## Exit reasons"):text.index("## Time in each regime")]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ") and not ln.startswith("| sleeve")]
    assert len(rows) == len(exits) > 0
    for sleeve, trips in exits.groupby(level="sleeve"):      # one row per reason; shares of the sleeve's trades
        assert trips.share.sum() == pytest.approx(1.0)
        assert trips.closed_trades.sum() == built.summary["sleeves"][sleeve]["closed_trades"]
    assert fmt(float("inf"), "profit_factor") == "n/a (no losses)"
    assert "inf" not in markdown(built).replace("info", "")


def test_eternal_report_rebuilds_the_same_report_from_the_ledger(whole, dataset, tmp_path):
    r, built, out = whole
    again, written = shell.rebuild(str(out), tmp_path / "again", dataset, load_settings())
    assert written == tmp_path / "again" and (written / "report.md").exists()
    for key in ("final_equity", "total_return", "max_drawdown", "sharpe", "fills", "closed_trades", "fees_usdt"):
        assert again.summary["sleeves"]["total"][key] == pytest.approx(built.summary["sleeves"]["total"][key])
    assert again.summary["benchmarks"]["BTC buy-and-hold"]["final_equity"] == pytest.approx(
        built.summary["benchmarks"]["BTC buy-and-hold"]["final_equity"])
    # the same document, sleeves in the portfolio's order (the ledger's tables list them in another)
    assert (written / "report.md").read_text() == (out / "report.md").read_text()
    assert list(again.weights.columns) == ["core", "trend-1", "trend-2", "tactical", "funding"]


def test_the_ui_shows_percentages_and_funding_says_received_and_paid(capsys):
    from eternal.cli import print_summary
    from flows.backfill import summary_markdown

    summary = {"start": "2021-01-01", "end_exclusive": "2021-02-01", "days": 31, "sleeves": ["funding"],
               "initial_capital": 1_000.0, "final_equity": 1_071.1246, "total_return": 0.0711246, "cagr": 1.2,
               "max_drawdown": -0.0123, "sharpe": 2.0, "trades": 2, "fees": 1.0, "funding": -466.06,
               "funding_received": 100.0, "funding_paid": 566.06, "final_equity_by_sleeve": {}}
    md = summary_markdown(summary)
    assert "| total_return | +7.11% |" in md and "0.0711246" not in md
    print_summary(summary, "out")
    assert "received 100.00 USDT, paid 566.06 USDT, net -466.06 USDT" in capsys.readouterr().out


CHARTS_BESIDE = """
import os, pickle, signal, sys
from pathlib import Path
from eternal.aside import AsideError
from tasks.report import Charts

built = pickle.loads(Path(sys.argv[1]).read_bytes())
beside = Charts(Path(sys.argv[2]))                 # forked now, as before a replay: matplotlib loads there
print(beside._primed._aside.proc.pid != os.getpid(), "matplotlib" in sys.modules)
beside.draw(built)
beside.wait()
killed = Charts(Path(sys.argv[3]))
os.kill(killed._primed._aside.proc.pid, signal.SIGKILL)
killed.draw(built)
try:
    killed.wait()
except AsideError as exc:
    print(exc)
cancelled = Charts(Path(sys.argv[4]))
cancelled.cancel()
print(sorted(os.listdir(sys.argv[4])))
"""


def test_charts_drawn_beside_the_replay_are_the_charts_drawn_in_process(whole, tmp_path):
    """A backfill forks its charts' process before the replay (matplotlib's import, 0.25-0.45 s,
    was on its critical path after it): that process draws the same three PNGs, byte for byte, as
    drawing them in process (the `whole` run's, January-March 2021); the backfill process itself
    never imports matplotlib. Killed before the report reaches it, waiting for it is one line
    naming it; cancelled (a failed backfill), it draws nothing."""
    import pickle
    import subprocess
    import sys

    _, built, out = whole
    (tmp_path / "report.pickle").write_bytes(pickle.dumps(built))
    dirs = [tmp_path / n for n in ("beside", "killed", "cancelled")]
    for d in dirs:
        d.mkdir()
    done = subprocess.run([sys.executable, "-c", CHARTS_BESIDE, str(tmp_path / "report.pickle"), *map(str, dirs)],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines() == [
        "True False", "the charts: its process ended with exit code -9 and no result", "[]"], done.stderr
    for name in shell.CHARTS:
        assert (dirs[0] / name).read_bytes() == (out / name).read_bytes(), name
    assert not list(dirs[1].iterdir())
