"""The backfill replays the daily cycle: decisions at the close of D, fills at the open of D+1."""
from __future__ import annotations

import os

import json
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import func, select

from eternal.config import load_settings
from eternal.instruments import apply_rules
from eternal.instruments import default as trading_rules
from eternal.models import Sleeve, utc
from eternal.replay import BackfillError, parse_sleeves, run_backfill
from eternal.store.db import connect
from eternal.store.ledger import LedgerStore
from eternal.store.models import EventRow, FillRow, OrderRow

START, END = "2021-01-01", "2021-07-01"
CORE = parse_sleeves("core")      # these tests prove CORE's replay; TREND's are in test_trend_replay.py


@pytest.fixture
def result(dataset, tmp_path):
    return run_backfill(dataset, load_settings(), sleeves=CORE, start=utc(START), end=utc(END), capital=10_000.0,
                        out_dir=tmp_path / "out", engine=connect(f"sqlite:///{tmp_path / 'bf.db'}"),
                        progress=False)


def test_first_tranche_is_decided_on_the_first_close_and_filled_at_the_next_open(result, dataset):
    trades = pd.read_csv(result.out_dir / "trades.csv")
    first = trades.iloc[:2]
    btc_open = float(dataset.daily("BTC/USDT").loc["2021-01-02", "open"])   # 29,331.70
    eth_open = float(dataset.daily("ETH/USDT").loc["2021-01-02", "open"])
    btc_close = float(dataset.daily("BTC/USDT").loc["2021-01-01", "close"])  # decision price
    assert set(first["timestamp"]) == {"2021-01-02T00:00:00+00:00"}
    btc = first[first.symbol == "BTC/USDT"].iloc[0]
    assert btc.price == btc_open and first[first.symbol == "ETH/USDT"].iloc[0].price == eth_open
    # sized at the decision close: 10,000 x 0.95 / 4 x 2/3 USDT of BTC, down to the 0.000001 BTC step
    assert btc.qty == pytest.approx(trading_rules()["BTC/USDT"].floor_qty(10_000 * 0.95 / 4 * 2 / 3 / btc_close))
    assert btc.fee == pytest.approx(btc.qty * btc_open * 0.001)          # maker fee, post-only
    assert (btc.market, btc.side, btc.sleeve) == ("spot", "buy", "core")


def test_a_core_buy_pays_its_notional_in_usdt_and_its_maker_fee_in_the_coin_bought(result, dataset, tmp_path):
    """2021-01-02: CORE's first tranche fills at the open as post-only limits, maker fee 0.10 %. As
    Bybit charges a spot buy, the sleeve pays qty x price USDT and receives qty x (1 - 0.001) coins;
    trades.csv gives that fee in USDT at the fill price."""
    day = "2021-01-02"
    opens = {a: float(dataset.daily(f"{a}/USDT").loc[day, "open"]) for a in ("BTC", "ETH")}
    closes = {a: float(dataset.daily(f"{a}/USDT").loc[day, "close"]) for a in ("BTC", "ETH")}
    with connect(f"sqlite:///{tmp_path / 'bf.db'}").connect() as conn:
        fills = pd.read_sql(select(FillRow).where(FillRow.ts < utc("2021-01-03")), conn)
    assert sorted(fills.fee_asset) == ["BTC", "ETH"] and set(fills.side) == {"buy"}
    qty = {f.fee_asset: f.qty for f in fills.itertuples()}
    for f in fills.itertuples():
        assert f.price == opens[f.fee_asset] and f.fee == pytest.approx(f.qty * 0.001, rel=1e-12)
    for t in pd.read_csv(result.out_dir / "trades.csv").iloc[:2].itertuples():
        asset = t.symbol.split("/")[0]
        assert t.fee_asset == asset and t.fee == pytest.approx(qty[asset] * opens[asset] * 0.001, rel=1e-12)
    (row,) = [r for r in result.equity_rows if f"{r['day']:%Y-%m-%d}" == day]
    # the cash paid the notionals alone: 10,000 - 0.95 / 4 of it in coins
    assert row["cash"] == pytest.approx(10_000 - sum(q * opens[a] for a, q in qty.items()), rel=1e-12)
    assert row["equity"] == pytest.approx(row["cash"] + sum(q * 0.999 * closes[a] for a, q in qty.items()),
                                          rel=1e-12)


def test_tranches_fill_on_days_1_8_15_22_after_the_start(result):
    trades = pd.read_csv(result.out_dir / "trades.csv")
    tranche_days = sorted({t[:10] for t, r in zip(trades.timestamp, trades.reason) if r.startswith("tranche")})
    assert tranche_days == ["2021-01-02", "2021-01-09", "2021-01-16", "2021-01-23"]


def test_outputs_have_the_documented_columns_and_agree_with_each_other(result):
    out = result.out_dir
    trades = pd.read_csv(out / "trades.csv")
    assert list(trades.columns) == ["timestamp", "sleeve", "symbol", "market", "side", "qty", "price",
                                    "fee", "fee_asset", "reason", "client_order_id"]
    assert trades.client_order_id.str.len().max() <= 36 and trades.client_order_id.is_unique
    equity = pd.read_csv(out / "equity.csv", index_col="date")
    assert list(equity.columns) == ["total", "core"]
    assert equity.index[0] == START and equity.index[-1] == "2021-06-30"     # end is exclusive
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_equity"] == pytest.approx(equity["total"].iloc[-1])
    assert summary["trades"] == len(trades) and summary["fees"] == pytest.approx(trades.fee.sum())
    total = equity["total"].to_numpy()
    assert summary["max_drawdown"] == pytest.approx((total / np.maximum.accumulate(total) - 1).min())
    daily = np.diff(total) / total[:-1]
    assert summary["sharpe"] == pytest.approx(daily.mean() / daily.std(ddof=1) * np.sqrt(365))
    assert summary["cagr"] == pytest.approx((total[-1] / 10_000) ** (365 / len(total)) - 1)


def test_final_equity_reconciles_with_the_ledger_at_the_last_close(result, dataset, tmp_path):
    books = LedgerStore(connect(f"sqlite:///{tmp_path / 'bf.db'}")).load_books()
    last = "2021-06-30"
    closes = {a: float(dataset.daily(f"{a}/USDT").loc[last, "close"]) for a in ("BTC", "ETH")}
    core = next(iter(books.values()))
    assert core.equity(closes) == pytest.approx(result.summary["final_equity"], rel=1e-12)
    # and the ledger is exactly the initial capital plus what the fills imply
    trades = result.trades
    # trades.csv gives every fee in USDT; a buy's was charged in the coin bought and left the cash alone
    signed = (np.where(trades.side == "buy", -1, 1) * trades.qty * trades.price
              - trades.fee.where(trades.fee_asset == "USDT", 0.0))
    assert core.cash == pytest.approx(10_000 + signed.sum())


def test_backfill_persists_orders_fills_and_events_in_bulk(result, tmp_path):
    engine = connect(f"sqlite:///{tmp_path / 'bf.db'}")
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(FillRow)).scalar_one() == len(result.trades)
        statuses = dict(conn.execute(select(OrderRow.status, func.count()).group_by(OrderRow.status)).all())
        cancelled = conn.execute(select(OrderRow.reason, OrderRow.error).where(
            OrderRow.status == "cancelled")).all()
        kinds = set(conn.execute(select(EventRow.kind)).scalars())
    assert {"core_phase", "core_tranche", "core_rebalance"} <= kinds
    assert statuses["filled"] == len(result.trades)
    # the 2021-06-30 quarter-end rebalance was decided on the last close: no next open to fill it
    assert statuses["cancelled"] == 2 and len(cancelled) == 2
    assert all("quarter ended 2021-06-30" in r and "backfill ended" in e for r, e in cancelled)


def test_a_window_outside_the_data_is_refused_with_the_data_range(dataset):
    # the window is judged against the data before anything runs: the first day it allows, named
    with pytest.raises(BackfillError, match="before the first day the data allows, 2017-08-17"):
        run_backfill(dataset, load_settings(), sleeves=CORE, start=utc("2016-01-01"), end=utc("2017-01-01"),
                     progress=False)
    with pytest.raises(BackfillError, match="after the data, whose last day is 2026-01-05"):
        run_backfill(dataset, load_settings(), sleeves=CORE, start=utc("2025-01-01"), end=utc("2027-01-01"),
                     progress=False)


def test_unknown_engines_are_refused_by_name_and_every_sleeve_has_an_engine():
    with pytest.raises(BackfillError, match="unknown engine 'nosuch'"):
        parse_sleeves("core,nosuch")
    assert parse_sleeves(None) == (Sleeve.CORE, Sleeve.TREND_1, Sleeve.TREND_2, Sleeve.TACTICAL, Sleeve.FUNDING)


def test_a_single_selected_sleeve_receives_the_whole_capital(dataset):
    r = run_backfill(dataset, load_settings(), start=utc("2022-01-01"), end=utc("2022-01-03"),
                     sleeves=parse_sleeves("core"), capital=50_000.0, progress=False)
    assert r.equity["core"].iloc[0] == pytest.approx(50_000.0)


def test_staked_eth_accrues_the_configured_apy_daily(dataset, monkeypatch):
    monkeypatch.setenv("ETERNAL_CORE__STAKING_APY", "0.04")
    s = load_settings()
    r = run_backfill(dataset, s, sleeves=CORE, start=utc("2021-01-01"), end=utc("2021-03-01"), progress=False)
    stakes = [e for e in r.events if e.kind == "core_phase" and "EARN_OPTIMIZING" in e.message]
    assert stakes, "after the tranches CORE is EARN_OPTIMIZING"
    monkeypatch.delenv("ETERNAL_CORE__STAKING_APY")
    base = run_backfill(dataset, load_settings(), sleeves=CORE, start=utc("2021-01-01"), end=utc("2021-03-01"),
                        progress=False)
    gain = r.equity["core"].iloc[-1] - base.equity["core"].iloc[-1]
    # staking starts the day after the last tranche (2021-01-22 close): at most 38 days of 4 %
    # a year on the ETH third of the sleeve, and more than nothing
    assert 0 < gain < 0.04 * 38 / 365 * r.equity["core"].iloc[-1] / 3


def test_cli_backfill_writes_outputs_and_prints_the_summary(shared_data, tmp_path):
    # `eternal backfill` as a user runs it, with no Prefect server configured: the job runs without
    # Prefect (no ephemeral server: its run would vanish with the process), and exits leaving no
    # SQLite -wal file beside the ledger
    import subprocess
    import sys

    out = tmp_path / "cli-out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {
        "PREFECT_HOME": str(tmp_path / "prefect-home"), "DO_NOT_TRACK": "1"}
    r = subprocess.run([sys.executable, "-m", "eternal.cli", "backfill", "--start", "2023-01-01", "--end", "2023-04-01",
                        "--capital", "20000", "--data-dir", str(shared_data), "--out", str(out), "--no-progress"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "final equity" in r.stdout and "2023-01-01 .. 2023-04-01 (90 days)" in r.stdout
    assert "flow run" not in r.stdout + r.stderr and "temporary server" not in r.stdout + r.stderr
    assert {p.name for p in out.iterdir()} >= {"trades.csv", "equity.csv", "summary.json", "backfill.db", "report.md"}
    assert not (out / "backfill.db-wal").exists()
    assert json.loads((out / "summary.json").read_text())["initial_capital"] == 20_000.0


def test_a_prefect_server_counts_as_configured_from_the_environment_or_the_active_profile(tmp_path):
    from tasks.backfill import prefect_configured

    home = tmp_path / "home"
    assert not prefect_configured({"PREFECT_HOME": str(home)})                  # no profiles file at all
    assert prefect_configured({"PREFECT_HOME": str(home), "PREFECT_API_URL": "http://127.0.0.1:4200/api"})
    home.mkdir()
    (home / "profiles.toml").write_text('active = "local"\n[profiles.local]\n'
                                        'PREFECT_API_URL = "http://127.0.0.1:4200/api"\n[profiles.ephemeral]\n')
    assert prefect_configured({"PREFECT_HOME": str(home)})
    assert not prefect_configured({"PREFECT_HOME": str(home), "PREFECT_PROFILE": "ephemeral"})
    (home / "profiles.toml").write_text("not toml [")
    assert not prefect_configured({"PREFECT_HOME": str(home)})


def test_replay_decides_like_the_daily_flow_on_the_same_day(dataset):
    """Parity: the replay's first decision equals the pure cycle on a snapshot built from the data,
    as the driver sends it (down to the exchange's steps)."""
    from eternal import cycle
    from eternal.models import Quote, Sleeve, SleeveBook, Snapshot

    s = load_settings()
    r = run_backfill(dataset, s, sleeves=CORE, start=utc("2024-03-01"), end=utc("2024-03-03"), capital=60_000.0,
                     progress=False)
    day = utc("2024-03-01")
    closes = {a: float(dataset.daily(f"{a}/USDT").loc["2024-03-01", "close"]) for a in ("BTC", "ETH")}
    ath = {a: float(dataset.daily(f"{a}/USDT").loc[:"2024-03-01", "close"].max()) for a in ("BTC", "ETH")}
    snap = Snapshot(day + timedelta(days=1), day, closes, ath, {a: Quote(c, c, c) for a, c in closes.items()},
                    {Sleeve.CORE: SleeveBook(Sleeve.CORE, 60_000.0)}, {})
    plan = cycle.daily(snap, s)
    sent, dropped = apply_rules(plan.intents, {f"{a}/USDT": c for a, c in closes.items()}, day)
    assert dropped == [] and len(sent) == len(plan.intents)
    replayed = r.trades[r.trades.timestamp.str.startswith("2024-03-02")]
    assert sorted(replayed.qty) == pytest.approx(sorted(i.qty for i in sent))


@pytest.mark.db
def test_backfill_ledger_persists_on_both_databases(db_url, dataset):
    r = run_backfill(dataset, load_settings(), sleeves=CORE, start=utc("2021-01-01"), end=utc("2021-04-01"),
                     capital=10_000.0, engine=connect(db_url), progress=False)
    engine = connect(db_url)
    with engine.connect() as conn:
        prices = conn.execute(select(OrderRow.avg_price).where(OrderRow.status == "filled")).scalars().all()
        assert conn.execute(select(func.count()).select_from(FillRow)).scalar_one() == len(r.trades)
    assert sorted(prices) == pytest.approx(sorted(r.trades.price))
    core = next(iter(LedgerStore(engine).load_books().values()))
    closes = {a: float(dataset.daily(f"{a}/USDT").loc["2021-03-31", "close"]) for a in ("BTC", "ETH")}
    assert core.equity(closes) == pytest.approx(r.summary["final_equity"], rel=1e-12)


def test_a_buy_the_cash_cannot_cover_at_the_fill_price_is_scaled_down_and_reported(dataset, monkeypatch):
    # no buffer, one tranche decided on the close of 2021-01-05: BTC takes 2/3 of the cash at an
    # unchanged open, ETH's 1/3 cannot be paid at the 2021-01-06 open, 0.60 USDT above its close
    # (the buys' fees are paid in the coins: on 2021-01-01, with an unchanged ETH open, the cash covers it)
    monkeypatch.setenv("ETERNAL_CORE__CASH_BUFFER", "0")
    monkeypatch.setenv("ETERNAL_RISK__CORE_CASH_FLOOR", "0")     # the policy's floor follows it here
    monkeypatch.setenv("ETERNAL_CORE__TRANCHES", "1")
    r = run_backfill(dataset, load_settings(), sleeves=CORE, start=utc("2021-01-05"), end=utc("2021-01-08"),
                     capital=9_000.0, progress=False)
    btc, eth = (r.trades[r.trades.symbol == s].iloc[0] for s in ("BTC/USDT", "ETH/USDT"))
    cash_left = 9_000.0 - btc.qty * btc.price            # the buys' fees are paid in the coins
    # exactly what the cash buys, down to the 0.00001 ETH step
    assert cash_left / eth.price - 0.00001 < eth.qty <= cash_left / eth.price
    assert r.equity["core"].iloc[0] > 0
    scaled = [e for e in r.events if e.kind == "order_scaled_to_cash"]
    assert len(scaled) == 1 and "ETH/USDT" in scaled[0].message and scaled[0].level == "warning"


def _cli(tmp_path, *argv):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {
        "PREFECT_HOME": str(tmp_path / "prefect-home"), "DO_NOT_TRACK": "1"}
    return subprocess.Popen([sys.executable, "-m", "eternal.cli", "backfill", *argv, "--no-progress"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_second_backfill_into_the_same_out_is_refused_while_the_first_writes(shared_data, tmp_path):
    # the first holds OUT/.backfill.lock (here this test holds it, as a running backfill would)
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".backfill.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        second = _cli(tmp_path, "--engines", "core", "--start", "2023-01-01", "--end", "2023-02-01",
                      "--data-dir", str(shared_data), "--out", str(out))
        _, err = second.communicate(timeout=600)
    assert second.returncode == 2
    assert err.strip().splitlines() == [f"error: another backfill is writing to {out}: wait for it to end, "
                                        "or give another --out"]
    assert not (out / "backfill.db").exists()


def test_a_backfill_killed_mid_run_leaves_none_of_the_previous_runs_outputs(shared_data, tmp_path):
    # a finished run's outputs in OUT, then a longer run into it killed (SIGKILL) once its ledger
    # exists: the old report.md must not stay beside the new, partial ledger as if it were its report
    import signal
    import time

    out = tmp_path / "out"
    first = _cli(tmp_path, "--engines", "core", "--start", "2023-01-01", "--end", "2023-02-01",
                 "--data-dir", str(shared_data), "--out", str(out))
    assert first.wait(timeout=600) == 0 and (out / "report.md").exists()
    started = time.time_ns()
    time.sleep(0.01)
    second = _cli(tmp_path, "--start", "2020-09-14", "--end", "2026-01-01", "--data-dir", str(shared_data),
                  "--out", str(out))

    def new_ledger() -> bool:                   # the second run's own backfill.db (created after it started)
        try:
            return (out / "backfill.db").stat().st_ctime_ns > started
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 600
    while not new_ledger() and second.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    second.send_signal(signal.SIGKILL)
    second.wait(timeout=60)
    assert second.returncode == -signal.SIGKILL           # killed mid-run, not finished
    assert not [n for n in ("report.md", "summary.json", "trades.csv", "equity.csv", "equity.png")
                if (out / n).exists()]
    rerun = _cli(tmp_path, "--engines", "core", "--start", "2023-01-01", "--end", "2023-02-01",
                 "--data-dir", str(shared_data), "--out", str(out))
    assert rerun.wait(timeout=600) == 0 and (out / "report.md").exists()


def test_a_perp_sleeve_is_not_replayed_past_its_funding_history_nor_without_it(dataset):
    """The perp candles run to 2026-05-16, the funding settlements to 2026-03-04 08:00. A TREND-1
    backfill to 2026-05-17 ran on: no settlement and no funding exit for two and a half months, and
    exit code 0. It is refused, naming the series; without BTC's funding file at all, too."""
    from dataclasses import replace

    with pytest.raises(BackfillError, match=r"last day is 2026-03-03, where the funding of BTC/USDT:USDT ends "
                                            r"\(2026-03-04 08:00\): give --end 2026-03-04 or earlier"):
        run_backfill(dataset, load_settings(), start=utc("2025-10-01"), end=utc("2026-05-17"),
                     sleeves=parse_sleeves("trend-1"), progress=False)
    r = run_backfill(dataset, load_settings(), start=utc("2026-02-20"), sleeves=parse_sleeves("trend-1"), progress=False)
    assert r.summary["end_exclusive"] == "2026-03-04"              # the default end: the funding's last full day
    no_btc = replace(dataset, funding={k: v for k, v in dataset.funding.items() if k != "BTC/USDT:USDT"})
    with pytest.raises(BackfillError, match=r"no funding history for BTC/USDT:USDT: import its funding_8h_\*.csv"):
        run_backfill(no_btc, load_settings(), start=utc("2025-10-01"), end=utc("2026-01-01"),
                     sleeves=parse_sleeves("trend-1"), progress=False)


def test_tactical_is_not_replayed_without_its_fear_and_greed_history(dataset):
    """Without fear_greed_1d.csv a TACTICAL backfill of 2024-07-01..2024-09-01 made 0 deployments
    and exited 0 (with it: 1, decided on 2024-08-06, Fear & Greed 17 < 20); a missing day is no signal,
    a missing history is a file left out: refused."""
    from dataclasses import replace

    with pytest.raises(BackfillError, match=r"no Fear & Greed history, which TACTICAL reads every day"):
        run_backfill(replace(dataset, fear_greed=None), load_settings(), start=utc("2024-07-01"),
                     end=utc("2024-09-01"), sleeves=parse_sleeves("tactical"), progress=False)
    r = run_backfill(dataset, load_settings(), start=utc("2024-07-01"), end=utc("2024-09-01"),
                     sleeves=parse_sleeves("tactical"), progress=False)
    [deployed] = r.summary["tactical_sleeve"]["deployments"]
    assert deployed["decided"] == "2024-08-06" and deployed["reason"] == "Fear & Greed 17 < 20"


def test_cli_backfill_replays_core_alone_beside_with_the_deposits_the_run_took(shared_data, dataset, tmp_path):
    """`eternal backfill` starts the report's CORE-alone replay in a child process as soon as the
    replay's deposits are known, while the ledger is saved. 2021-01-01..2021-06-01 with 1,000 USDT
    monthly: the kill switch of May 2021 holds back the deposit of 2021-06-01, so CORE alone gets
    4,000 USDT, not the schedule's 5,000; the report's figure is the one replayed here from the
    same rows, to the cent."""
    import subprocess
    import sys

    from tasks import report

    out = tmp_path / "cli-out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {
        "PREFECT_HOME": str(tmp_path / "prefect-home"), "DO_NOT_TRACK": "1"}
    r = subprocess.run([sys.executable, "-m", "eternal.cli", "backfill", "--start", "2021-01-01", "--end", "2021-06-01",
                        "--monthly-deposit", "1000", "--data-dir", str(shared_data), "--out", str(out),
                        "--no-progress"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    reported = json.loads((out / "summary.json").read_text())["report"]["benchmarks"]["CORE alone"]

    s = load_settings()
    here = run_backfill(dataset, s, start=utc("2021-01-01"), end=utc("2021-06-01"), monthly_deposit=1_000.0,
                        progress=False, compare_breakers=False)
    rows = report.rows_from_result(here, report.closes_frame(dataset))
    assert sum(q for _, q in report.deposits_of(rows)) == 4_000.0
    alone = report.core_alone(dataset, s, rows)
    assert reported["final_equity"] == pytest.approx(float(alone.iloc[-1]), abs=0.005)
    scheduled = run_backfill(dataset, s, sleeves=CORE, start=utc("2021-01-01"), end=utc("2021-06-01"),
                             capital=here.summary["initial_capital"], monthly_deposit=1_000.0, progress=False)
    assert scheduled.equity["core"].iloc[-1] - float(alone.iloc[-1]) > 900.0     # the held-back 1,000 USDT


def test_cli_backfill_with_a_prefect_server_is_one_flow_run_following_the_job_started_before_prefect(
        shared_data, dataset, tmp_path, prefect_harness):
    """With a Prefect server configured `eternal backfill` forks its job before Prefect is imported
    (`tasks.backfill.StartedJob`: the job then forks its own work aside as without Prefect) and the
    flow run follows it. 2023-01-01..2023-04-01 with 20,000 USDT: one completed `backfill` run with
    these parameters, its progress artifact at 100 %, its summary and report artifacts, its log
    line; no SQLite -wal file left; the same summary as the job run here without Prefect."""
    import asyncio
    import subprocess
    import sys

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowFilter,
        FlowFilterName,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.settings import PREFECT_API_URL

    from tasks.backfill import run_job

    out = tmp_path / "flow-out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ETERNAL_"))} | {
        "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    r = subprocess.run([sys.executable, "-m", "eternal.cli", "backfill", "--start", "2023-01-01", "--end", "2023-04-01",
                        "--capital", "20000", "--data-dir", str(shared_data), "--out", str(out), "--no-progress"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "2023-01-01 .. 2023-04-01 (90 days)" in r.stdout
    assert r.stderr == ""           # Prefect's console lines: warnings and errors only (--debug: all)
    assert not [p.name for p in out.iterdir() if p.name.endswith(("-wal", "-shm"))]   # the job's ledger closed

    async def read():
        async with get_client() as client:
            runs = [run for run in await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["backfill"])))
                    if run.parameters.get("out") == str(out)]
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id for run in runs])))
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id for run in runs])))
            return runs, artifacts, logs

    runs, artifacts, logs = asyncio.run(read())
    assert any(log.message.startswith("backfill done: final equity") for log in logs)
    assert [run.state_type.value for run in runs] == ["COMPLETED"]
    assert [a.data for a in artifacts if a.key == "backfill-progress"] == [100.0]
    assert {"backfill-summary", "backfill-report"} <= {a.key for a in artifacts}

    here = run_job(start=utc("2023-01-01"), end=utc("2023-04-01"), capital=20_000.0, data_dir=str(shared_data),
                   out=str(tmp_path / "here"))
    stored = json.loads((out / "summary.json").read_text())
    assert stored["final_equity"] == here["final_equity"] and stored["trades"] == here["trades"]
    assert stored["report"] == json.loads(json.dumps(here["report"]))


STOPPED_LATE = """
import os, signal, sys
import tasks.backfill as job
from eternal.cli import main

when = sys.argv[1]
if when == "artifacts":             # SIGTERM while the flow run writes its artifacts, the job done
    made = job.flow_artifacts
    def flow_artifacts(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        return made(*a, **k)
    job.flow_artifacts = flow_artifacts
elif when == "wrapped":             # the same, the interrupt caught and wrapped as Prefect's serialiser does
    def flow_artifacts(*a, **k):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except KeyboardInterrupt:
            raise RuntimeError("Error calling function `_ser_model`: KeyboardInterrupt: ") from None
    job.flow_artifacts = flow_artifacts
else:                               # SIGTERM once the run has followed the job to its end
    follow = job.StartedJob.follow
    def followed(self):
        summary = follow(self)
        os.kill(os.getpid(), signal.SIGTERM)
        return summary
    job.StartedJob.follow = followed
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("when", ["artifacts", "wrapped", "followed"])
def test_a_backfill_as_a_flow_run_stopped_late_says_what_stays(when, shared_data, tmp_path, prefect_harness):
    """SIGTERM after the job's child had written every output: while the flow run wrote its
    artifacts, the CLI said "nothing of this backfill stays" and every output stayed (a fresh
    user's finding); now they are removed. Once the run had its artifacts, they stay and the CLI
    says they are complete. An interrupt that Prefect caught and wrapped (seen: exit 1 and "error:
    PydanticSerializationError: ... KeyboardInterrupt") is an interrupt too. 2023-01-01..2023-02-01."""
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ETERNAL_"))} | {
        "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    r = subprocess.run([sys.executable, "-c", STOPPED_LATE, when, "backfill", "--start", "2023-01-01", "--end",
                        "2023-02-01", "--data-dir", str(shared_data), "--out", str(out), "--no-progress"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 130, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    if when in ("artifacts", "wrapped"):
        assert last == "error: interrupted: nothing of this backfill stays in its --out; run it again"
        assert sorted(p.name for p in out.iterdir()) == [".backfill.lock"]
    else:
        assert last == f"error: interrupted after the backfill finished: its outputs in {out} are complete"
        assert {"summary.json", "report.md", "backfill.db"} <= {p.name for p in out.iterdir()}


def test_the_ledger_written_by_its_own_process_is_the_ledger_written_in_process(shared_data, tmp_path):
    """A backfill's own ledger (OUT/backfill.db) is created and written by a child forked before the
    replay (the database's library and schema, 0.2-0.3 s, beside the replay); one given with
    --database-url is written in process, after its check. The same backfill (every sleeve,
    2024-01-01..2024-04-01, 1,000 USDT monthly) leaves the same rows in both, table by table, and
    no -wal or -journal file beside its own."""
    import sqlite3

    runs = {"own": _cli(tmp_path, "--start", "2024-01-01", "--end", "2024-04-01", "--monthly-deposit", "1000",
                        "--data-dir", str(shared_data), "--out", str(tmp_path / "own")),
            "given": _cli(tmp_path, "--start", "2024-01-01", "--end", "2024-04-01", "--monthly-deposit", "1000",
                          "--data-dir", str(shared_data), "--out", str(tmp_path / "given"),
                          "--database-url", f"sqlite:///{tmp_path / 'given.db'}")}
    for name, proc in runs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err

    assert sorted(p.name for p in (tmp_path / "own").glob("backfill.db*")) == ["backfill.db",
                                                                                 "backfill.db.schema.lock"]

    def rows(path) -> dict[str, list]:
        db = sqlite3.connect(path)
        try:
            tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            return {t: db.execute(f'SELECT * FROM "{t}" ORDER BY 1').fetchall() for t in tables}
        finally:
            db.close()

    own, given = rows(tmp_path / "own" / "backfill.db"), rows(tmp_path / "given.db")
    assert own == given
    assert len(own["fills"]) > 50 and len(own["equity_snapshots"]) == 5 * 91      # five sleeves, 91 closes
