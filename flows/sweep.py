"""A parameter sweep: one backfill per grid point, in parallel as Prefect tasks on Dask, then one
table and a heatmap. Every point is checked before the first one runs (`eternal.sweep.check_sweep`)."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from eternal import sweep as sw
from eternal.config import load_settings
from flows.backfill import load_data
from flows.params import OptionalUtcTime

Metric = Literal["cagr", "max_drawdown", "sharpe"]


@task(name="replay-point", cache_policy=NO_CACHE)   # never skipped: a cache key would hash the whole data set
def replay_point(data, settings: dict, point: dict[str, Any], sleeves: tuple, start, end, capital: float,
                 monthly_deposit_usdt: float) -> dict:
    """One grid point's backfill in memory (the worker needs neither database nor data files)."""
    return sw.run_point(data, settings, point, sleeves, start, end, capital, monthly_deposit_usdt)


def task_runner(address: str | None, workers: int | None):
    """An existing Dask scheduler at `address`, else a LocalCluster of `workers` processes (default:
    one per core), one thread each (a replay is CPU-bound Python: threads would share the GIL)."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                          "host": "127.0.0.1", "dashboard_address": None})   # not on the network


@flow(name="sweep")
def sweep(grid: dict[str, list[Any]], engines: str | None = None, start: OptionalUtcTime = None,
          end: OptionalUtcTime = None, capital: float | None = None, monthly_deposit_usdt: float = 0.0,
          metric: Metric = "cagr", address: str | None = None,
          workers: Annotated[int, Field(ge=1)] | None = None, data_dir: str | None = None,
          out: str = "out/sweep") -> dict:
    """Many backfills with different settings in parallel on Dask, into one table and a heatmap.

    Args:
        grid: Settings to vary and their values, by their names in the settings (group.field, as
            ETERNAL_GROUP__FIELD), e.g. {"trend_1.fast_sma": [40, 50, 60], "trend_1.slow_sma": [150, 200, 250]}.
            Every combination is one backfill.
        engines: Comma-separated sleeves: core, trend-1, trend-2, trend (both), funding, tactical.
            Empty: the whole portfolio; one sleeve alone receives the whole capital.
        start: The first day replayed, UTC (a plain date is 00:00 UTC), the same for every point.
            Empty: the first day every point's warm-up allows.
        end: The day after the last one replayed (exclusive), UTC. Empty: after the data's last day.
        capital: Starting capital in USDT, above 0. Empty: ETERNAL_INITIAL_CAPITAL.
        monthly_deposit_usdt: USDT deposited at each month's end through the deposit rules (0: none).
        metric: What the heatmap shows: cagr, max_drawdown or sharpe (the table has all of them).
        address: A running Dask scheduler (tcp://host:8786) whose workers can import this project.
            Empty: a local cluster started for this run.
        workers: Worker processes of the local cluster. Empty: one per core.
        data_dir: A directory of CSV files on the machine that runs the flow. Empty:
            ETERNAL_DATA_DIR, else the market data stored in the database.
        out: The directory for sweep.csv (one row per point) and heatmap.png (on that machine).
    """
    s = load_settings()
    log = get_run_logger()
    spec = sw.parse_spec({"engines": engines, "start": start, "end": end, "capital": capital,
                          "monthly_deposit_usdt": monthly_deposit_usdt, "grid": grid})
    data = load_data(Path(data_dir) if data_dir else (s.data_dir if s.data_dir else None), s.database_url)
    plan = sw.check_sweep(spec, s, data)          # every refusal before the first point runs
    log.info("sweep: %d points over %s..%s", len(plan.points), f"{plan.start:%Y-%m-%d}", f"{plan.end:%Y-%m-%d}")
    with _api_for_workers(), task_runner(address, workers) as runner:
        futures = [runner.submit(replay_point.with_options(task_run_name=_label(p)),
                                 {"data": data, "settings": values, "point": p, "sleeves": plan.sleeves,
                                  "start": plan.start, "end": plan.end, "capital": plan.capital,
                                  "monthly_deposit_usdt": plan.monthly_deposit_usdt})
                   for p, values in zip(plan.points, plan.settings)]
        rows = [f.result() for f in futures]
    results = sw.table(rows, plan.params)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results.to_csv(out_dir / "sweep.csv", index=False)
    sw.write_heatmap(results, plan.params, metric, out_dir / "heatmap.png")
    create_markdown_artifact(_markdown(results, plan, metric), key="sweep-results", description="sweep table")
    return {"start": f"{plan.start:%Y-%m-%d}", "end_exclusive": f"{plan.end:%Y-%m-%d}", "points": len(rows),
            "metric": metric, "table": str(out_dir / "sweep.csv"), "heatmap": str(out_dir / "heatmap.png"),
            "rows": results.to_dict(orient="records")}


def _api_for_workers():
    """The API this flow run reports to, for the workers' task runs too. Without PREFECT_API_URL the
    flow talks to a temporary server of its own, and each worker process would start another one
    (measured: two more servers, 2 minutes before the first point on a busy 2-core machine)."""
    from prefect.context import get_run_context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        return nullcontext()
    return temporary_settings({PREFECT_API_URL: str(get_run_context().client.api_url).rstrip("/")})


def _label(point: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in point.items())


def _markdown(results, plan, metric: str) -> str:
    head = "| " + " | ".join(results.columns) + " |\n|" + "---|" * len(results.columns) + "\n"
    body = "\n".join("| " + " | ".join(_cell(v) for v in row) + " |" for row in results.itertuples(index=False))
    return (f"# Sweep {plan.start:%Y-%m-%d}..{plan.end:%Y-%m-%d} ({len(results)} points, heatmap of {metric})"
            f"\n\n{head}{body}\n")


def _cell(v) -> str:
    return f"{v:,.4f}" if isinstance(v, float) else str(v)
