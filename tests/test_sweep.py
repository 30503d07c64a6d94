"""Issue 15: parameter sweeps on Dask. A grid of TREND-1's SMA lengths runs as Prefect tasks on a
local Dask cluster and gives, point for point, what the same backfills give run one by one; a grid
is checked before anything runs, each refusal one line."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from eternal.cli import main
from eternal.models import Sleeve, utc

FAST, SLOW = [40, 50, 60], [150, 200, 250]
WINDOW = ("2023-01-01", "2024-01-01")      # one year: every one of the nine points trades differently


@pytest.mark.flow
def test_a_3x3_sweep_of_trend1_smas_on_dask_matches_the_nine_backfills_run_one_by_one(
        dataset, shared_data, prefect_harness, tmp_path):
    from distributed import LocalCluster
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from eternal.config import load_settings
    from eternal.replay import run_backfill
    from eternal.sweep import heatmap_frame
    from flows.sweep import sweep

    one_by_one = {}
    for fast in FAST:
        for slow in SLOW:
            settings = load_settings(trend_1={"fast_sma": fast, "slow_sma": slow})
            s = run_backfill(dataset, settings, start=utc(WINDOW[0]), end=utc(WINDOW[1]), sleeves=(Sleeve.TREND_1,),
                             capital=100_000.0, progress=False).summary
            one_by_one[(fast, slow)] = s

    # a local cluster of two workers, reached by its scheduler's address as a remote one would be
    # (threads in this process: worker processes would each import the project again, ~20 s here)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address=None) as cluster:
        state = sweep(grid={"trend_1.fast_sma": FAST, "trend_1.slow_sma": SLOW}, engines="trend-1",
                      start=WINDOW[0], end=WINDOW[1], capital=100_000.0, metric="sharpe",
                      address=cluster.scheduler_address, data_dir=str(shared_data), out=str(tmp_path / "sweep"),
                      return_state=True)
    result = state.result()

    table = pd.read_csv(tmp_path / "sweep" / "sweep.csv")
    assert len(table) == len(result["rows"]) == 9
    for row, written in zip(result["rows"], table.to_dict(orient="records")):
        expected = one_by_one[(row["trend_1.fast_sma"], row["trend_1.slow_sma"])]
        for key in ("final_equity", "total_return", "cagr", "max_drawdown", "sharpe", "trades", "fees"):
            assert row[key] == expected[key], (row, key)       # exactly: the same replay, on a worker
            assert written[key] == expected[key], (written, key)   # and the CSV keeps every digit
    assert [(r["trend_1.fast_sma"], r["trend_1.slow_sma"]) for r in result["rows"]] == [
        (f, s) for f in FAST for s in SLOW]
    assert len({s["final_equity"] for s in one_by_one.values()}) == 9     # each point's SMAs matter
    assert (tmp_path / "sweep" / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pivot, shown = heatmap_frame(table, ("trend_1.fast_sma", "trend_1.slow_sma"), "sharpe")   # what the PNG draws
    assert shown == "sharpe" and list(pivot.index) == FAST and list(pivot.columns) == SLOW
    assert all(pivot.loc[f, s] == one_by_one[(f, s)]["sharpe"] for f in FAST for s in SLOW)

    with get_client(sync_client=True) as client:          # nine Prefect task runs of this flow run
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
            any_=[state.state_details.flow_run_id])))
    replays = [r for r in runs if r.name.startswith("trend_1.fast_sma=")]
    assert len(replays) == 9 and all(r.state.is_completed() for r in replays)


def test_without_a_start_every_point_starts_on_the_first_day_the_longest_warm_up_allows(dataset):
    from eternal.config import load_settings
    from eternal.replay import check_window
    from eternal.sweep import check_sweep, parse_spec

    settings = load_settings()
    plan = check_sweep(parse_spec({"engines": "trend-1", "end": WINDOW[1],
                                   "grid": {"trend_1.slow_sma": [150, 250]}}), settings, dataset)
    alone = {slow: check_window(dataset, load_settings(trend_1={"slow_sma": slow}), (Sleeve.TREND_1,), None,
                                utc(WINDOW[1]))[0] for slow in (150, 250)}
    assert alone[250] > alone[150]                        # 100 more days of SMA warm-up
    assert plan.start == alone[250] and plan.end == utc(WINDOW[1])
    assert [p["trend_1.slow_sma"] for p in plan.points] == [150, 250]
    assert [s["trend_1"]["slow_sma"] for s in plan.settings] == [150, 250]
    assert not any(k in plan.settings[0] for k in ("database_url", "exchange", "bybit", "alert_urls"))


def _refused(tmp_path, capsys, grid_text: str, suffix: str = ".yaml", *extra: str) -> str:
    path = tmp_path / f"grid{suffix}"
    path.write_text(grid_text)
    capsys.readouterr()
    code = main(["sweep", "--grid", str(path), "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not (tmp_path / "out").exists()              # refused before anything ran
    return lines[0]


HEAD = "engines: trend-1\nstart: 2023-01-01\nend: 2024-01-01\n"


@pytest.mark.parametrize("grid_text, suffix, wanted", [
    (HEAD + "grid:\n  trend_1.sma_fast: [40, 50]\n", ".yaml",
     ["unknown parameter 'trend_1.sma_fast'", "trend_1 has fast_sma, slow_sma"]),
    (HEAD + "grid:\n  trend1.fast_sma: [40]\n", ".yaml", ["unknown parameter 'trend1.fast_sma'", "trend_1"]),
    (HEAD + "grid:\n  trend_1.fast_sma: [50, 1]\n", ".yaml",
     ["trend_1.fast_sma=1", "greater than or equal to 2"]),
    (HEAD + "grid:\n  trend_1.fast_sma: [fifty]\n", ".yaml", ["trend_1.fast_sma='fifty'", "valid integer"]),
    (HEAD + "grid: {}\n", ".yaml", ["grid: empty"]),
    (HEAD + "grid:\n  trend_1.fast_sma: []\n", ".yaml", ["trend_1.fast_sma: no values"]),
    (HEAD + "grid:\n  trend_2.fast_sma: [10, 20]\n", ".yaml",
     ["trend_2.fast_sma changes nothing in a replay of trend-1", "select trend-2"]),
    (HEAD + "grid:\n  trend_1: [1]\n", ".yaml", ["'trend_1' is a group", "fast_sma"]),
    (HEAD + "metric: cagr\ngrid:\n  trend_1.fast_sma: [40]\n", ".yaml", ["metric: not a sweep key"]),
    (HEAD + "grid:\n  trend_1.fast_sma: [40\n", ".yaml", ["not valid YAML"]),
    (json.dumps({"engines": "trend-1", "start": "2017-09-01", "grid": {"trend_1.slow_sma": [150, 250]}}), ".json",
     ["grid point trend_1.slow_sma=150", "start 2017-09-01 is before the first day the data allows"]),
    ('engines = "trend-1"\nend = 2027-01-01\n[grid]\n"trend_1.fast_sma" = [40, 50]\n', ".toml",
     ["end 2027-01-01 is after the data, whose last day is 2026-03-03, where the funding of BTC/USDT:USDT ends"]),
    (HEAD + "capital: -5\ngrid:\n  trend_1.fast_sma: [40]\n", ".yaml", ["capital", "greater than 0"]),
    (HEAD + "grid:\n  trend_1.fast_sma: [40, 40]\n", ".yaml", ["given twice"]),
])
def test_a_grid_is_refused_in_one_line_before_anything_runs(tmp_path, capsys, shared_data, grid_text, suffix,
                                                             wanted):
    line = _refused(tmp_path, capsys, grid_text, suffix, "--data-dir", str(shared_data))
    for text in wanted:
        assert text in line, line
