"""Ad-hoc backfill: the daily cycle replayed over history, visible as one run in the Prefect UI."""
from __future__ import annotations

import math
from contextvars import ContextVar
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from eternal.config import load_settings
from eternal.data.csv_files import read_dir
from eternal.data.store import MarketStore
from eternal.models import PERP_SYMBOLS
from eternal.replay import BackfillError, BackfillResult, parse_sleeves, run_backfill
from eternal.secrets import SecretUrl
from eternal.store.db import connect
from flows.params import OptionalUtcTime

PROGRESS_BAR: ContextVar[bool] = ContextVar("backfill_progress_bar", default=False)
"""A terminal progress bar (the CLI's, unless --no-progress); never a form field: a worker has no terminal."""


def load_data(data_dir: Path | None, database_url: str | SecretUrl):
    """From CSV files when a data dir is given, else from the market data in the database."""
    if data_dir is not None:
        return read_dir(data_dir)
    from eternal.data.csv_files import DataSet

    store = MarketStore(connect(database_url))
    data = DataSet()
    for sym in store.candle_symbols("1d"):           # spot and perp candles
        data.candles[(sym, "1d")] = store.load_candles(sym, "1d")
    for sym in PERP_SYMBOLS.values():
        if len(f := store.load_funding(sym)):
            data.funding[sym] = f
    fg = store.load_fear_greed()
    data.fear_greed = fg if len(fg) else None
    return data


@flow(name="backfill")
def backfill(start: OptionalUtcTime = None, end: OptionalUtcTime = None, engines: str | None = None,
             capital: float | None = None, data_dir: str | None = None, out: str = "out/backfill",
             monthly_deposit_usdt: float = 0.0) -> dict:
    """The replay as one Prefect run: parameters from the UI form, progress shown as an artifact.
    Its ledger goes to ETERNAL_BACKFILL_DATABASE_URL when set (a setting: a URL may hold a
    password, and Prefect stores parameters in the clear), else to OUT/backfill.db, started afresh.

    Args:
        start: The first day replayed, UTC (a plain date is 00:00 UTC). Empty: the first day the
            data holds the engines' warm-up.
        end: The day after the last one replayed (exclusive), UTC. Empty: after the data's last day.
        engines: Comma-separated sleeves: core, trend-1, trend-2, trend (both), funding, tactical.
            Empty: the whole portfolio; one sleeve alone receives the whole capital.
        capital: Starting capital in USDT, above 0. Empty: ETERNAL_INITIAL_CAPITAL.
        data_dir: A directory of CSV files on the machine that runs the flow. Empty:
            ETERNAL_DATA_DIR, else the market data stored in the database.
        out: The directory for trades.csv, equity.csv, summary.json, events.csv (on that machine).
        monthly_deposit_usdt: USDT deposited at each month's end through the deposit rules (0: none).
    """
    check_amounts(capital, monthly_deposit_usdt)     # before anything is read or written
    s = load_settings()
    log = get_run_logger()
    sleeves = parse_sleeves(engines)
    out_dir = Path(out)
    data = load_data(Path(data_dir) if data_dir else (s.data_dir if s.data_dir else None), s.database_url)
    out_dir.mkdir(parents=True, exist_ok=True)
    db_url = s.backfill_database_url or f"sqlite:///{(out_dir / 'backfill.db').resolve()}"
    if s.backfill_database_url is None and (out_dir / "backfill.db").exists():
        for suffix in ("", "-wal", "-shm"):
            Path(str(out_dir / "backfill.db") + suffix).unlink(missing_ok=True)   # a replay starts afresh
    bar = create_progress_artifact(0.0, key="backfill-progress", description="days replayed")
    done = {"days": 0, "shown": 0.0}
    first = start

    def on_day(day, *_):
        nonlocal first
        first = first or day
        done["days"] += 1
        total = ((end or day) - first).days or 1
        pct = min(100.0, 100.0 * done["days"] / total)
        if pct - done["shown"] >= 2.0:                 # about 50 updates per run
            update_progress_artifact(bar, pct)
            done["shown"] = pct

    result: BackfillResult = run_backfill(data, s, start=start, end=end, sleeves=sleeves, capital=capital,
                                          out_dir=out_dir, engine=connect(db_url), progress=PROGRESS_BAR.get(),
                                          on_day=on_day, monthly_deposit=monthly_deposit_usdt)
    update_progress_artifact(bar, 100.0)
    log.info("backfill done: final equity %.2f, %d trades", result.summary["final_equity"],
             result.summary["trades"])
    create_markdown_artifact(summary_markdown(result.summary), key="backfill-summary",
                             description="backfill summary")
    write_report(result, data, s, out_dir)
    return result.summary


def check_amounts(capital: float | None, monthly_deposit_usdt: float) -> None:
    """A finite capital above 0 and a finite deposit of 0 or more, or BackfillError naming the
    parameter (inf would pass a plain `> 0` and end as Infinity in summary.json)."""
    if capital is not None and not (math.isfinite(capital) and capital > 0):
        raise BackfillError(f"capital must be a finite number above 0, got {capital}")
    if not (math.isfinite(monthly_deposit_usdt) and monthly_deposit_usdt >= 0):
        raise BackfillError(f"monthly_deposit_usdt must be a finite number of 0 or more, got {monthly_deposit_usdt}")


def write_report(result: BackfillResult, data, settings, out_dir: Path) -> None:
    """report.md, the charts and the report's numbers beside the replay's files, and on this run."""
    from eternal.report import build
    from tasks import report

    rows = report.rows_from_result(result, report.closes_frame(data))
    built = build(rows, report.core_alone(data, settings, rows))
    report.write(built, out_dir, result.summary)
    report.artifacts(built, out_dir)
    result.summary["report"] = report.jsonable(built.summary)


def summary_markdown(summary: dict) -> str:
    rows = "\n".join(f"| {k} | {_fmt(v, k)} |" for k, v in summary.items() if not isinstance(v, (dict, list)))
    return f"# Backfill {summary['start']}..{summary['end_exclusive']}\n\n| metric | value |\n|---|---:|\n{rows}\n"


PERCENT_KEYS = {"total_return", "cagr", "max_drawdown"}      # fractions in summary.json, percentages here


def _fmt(v, key: str = "") -> str:
    if isinstance(v, float) and key in PERCENT_KEYS:
        return f"{v:+.2%}"
    return f"{v:,.2f}" if isinstance(v, float) else str(v)
