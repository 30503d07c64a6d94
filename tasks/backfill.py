"""The backfill job: data in, the one driver over history (`eternal.replay`), the report out.

One function, `run_job`, does the work wherever it is started: inside the `backfill` Prefect flow
(a deployment, or `eternal backfill` with a Prefect server configured) it also reports to the run
(progress artifact, run logger, summary and report artifacts); started from the CLI with no Prefect
server configured it runs without Prefect at all. An ephemeral Prefect server would hold the run
only until the process ends, and costs about 8 s (imports 3 s, start and health polling 4.5 s, stop
1 s) against a replay of about 1-2 s, so the CLI does not start one (`prefect_configured`).

Prefect is never imported here unless a flow run is active (`in_flow_run`).
"""
from __future__ import annotations

import logging
import math
import os
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from eternal.config import load_settings
from eternal.data.csv_files import read_dir
from eternal.models import PERP_SYMBOLS
from eternal.models import MAX_USDT
from eternal.replay import BackfillError, BackfillResult, check_fresh, parse_sleeves, run_backfill
from eternal.secrets import SecretUrl

log = logging.getLogger("eternal.backfill")


def in_flow_run() -> bool:
    """True inside a Prefect flow run; False (without importing Prefect) when Prefect is not loaded."""
    if "prefect" not in sys.modules:
        return False
    from prefect.context import FlowRunContext

    return FlowRunContext.get() is not None


def prefect_configured(env: dict[str, str] | None = None) -> bool:
    """Whether runs have a Prefect server to go to (`prefect_api_url`)."""
    return prefect_api_url(env) is not None


def prefect_api_url(env: dict[str, str] | None = None) -> str | None:
    """The Prefect server runs go to: PREFECT_API_URL in the environment or in the active Prefect
    profile ($PREFECT_HOME/profiles.toml, PREFECT_PROFILE picks it); None without one. Read without
    importing Prefect; an unreadable profiles file counts as no server."""
    env = os.environ if env is None else env
    if env.get("PREFECT_API_URL"):
        return env["PREFECT_API_URL"]
    home = Path(env.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    try:
        profiles = tomllib.loads((home / "profiles.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    name = env.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    return profiles.get("profiles", {}).get(name, {}).get("PREFECT_API_URL") or None


def check_prefect_server(url: str, timeout_s: float = 5.0) -> None:
    """The configured Prefect server answers at its health endpoint, or ConfigError in one line
    saying what to do, before anything starts: it failed after the job had run ("RuntimeError:
    Failed to reach API"), leaving its outputs behind a failed command. An answer refused for want
    of a key (401, 403: Prefect Cloud) counts as a server; a 404 (a URL without /api) does not.
    httpx, as Prefect's client: credentials in the URL are sent as it sends them."""
    import httpx

    from eternal.errors import ConfigError
    from eternal.secrets import redact_url

    what = "start it (prefect server start) or correct PREFECT_API_URL, or unset it (and the Prefect profile's) " \
           "to run without Prefect"
    try:
        answer = httpx.get(f"{url.rstrip('/')}/health", timeout=timeout_s)
    except (httpx.HTTPError, ValueError) as exc:
        raise ConfigError(f"the Prefect server at {redact_url(url)} does not answer ({exc or type(exc).__name__}): "
                          f"{what}") from None
    if answer.status_code == 404 or answer.status_code >= 500:
        raise ConfigError(f"{redact_url(url)} is not a Prefect API that answers (HTTP {answer.status_code} at "
                          f"/health): {what}")


def load_data(data_dir: Path | None, database_url: str | SecretUrl):
    """From CSV files when a data dir is given, else from the market data in the database."""
    if data_dir is not None:
        return read_dir(data_dir)
    from eternal.data.csv_files import DataSet
    from eternal.data.store import MarketStore
    from eternal.store.db import connect

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


def check_amounts(capital: float | None, monthly_deposit_usdt: float) -> None:
    """A finite capital above 0 and a finite deposit of 0 or more, or BackfillError naming the
    parameter (inf would pass a plain `> 0` and end as Infinity in summary.json)."""
    if capital is not None and not (math.isfinite(capital) and capital > 0):
        raise BackfillError(f"capital must be a finite number above 0, got {capital}")
    if not (math.isfinite(monthly_deposit_usdt) and monthly_deposit_usdt >= 0):
        raise BackfillError(f"monthly_deposit_usdt must be a finite number of 0 or more, got {monthly_deposit_usdt}")
    for name, usdt in (("capital", capital or 0.0), ("monthly_deposit_usdt", monthly_deposit_usdt)):
        if usdt > MAX_USDT:
            raise BackfillError(f"{name} {usdt:g} USDT is more than {MAX_USDT:g}: above that a float keeps no cents "
                                "(money never rounds silently)")


def run_job(start: datetime | None = None, end: datetime | None = None, engines: str | None = None,
            capital: float | None = None, data_dir: str | None = None, out: str = "out/backfill",
            monthly_deposit_usdt: float = 0.0, progress_bar: bool = False, data=None, charts=None) -> dict:
    """The backfill (parameters as the `backfill` flow's) -> its summary (summary.json's dict).
    Its ledger goes to ETERNAL_BACKFILL_DATABASE_URL when set, else to OUT/backfill.db, started
    afresh. `data`: the market data already read from those same sources (the CLI reads it to
    check the window first), else read here. `charts`: the charts' child the caller started for
    OUT (`tasks.charts_child.prime`; `eternal backfill` starts it before its imports), else started
    here; the caller cancels it when this raises. Raises
    BackfillError / DataQualityError / ConfigError (one line each) on bad input, before anything is
    written."""
    return _job(start, end, engines, capital, data_dir, out, monthly_deposit_usdt, progress_bar, data,
                charts=charts)[0]


def _job(start: datetime | None = None, end: datetime | None = None, engines: str | None = None,
         capital: float | None = None, data_dir: str | None = None, out: str = "out/backfill",
         monthly_deposit_usdt: float = 0.0, progress_bar: bool = False, data=None, on_progress=None,
         charts=None) -> tuple:
    """`run_job` -> (its summary, the report built: `eternal.report.Report`); `on_progress(pct)`
    every 5 % of the days replayed, outside a flow run."""
    check_amounts(capital, monthly_deposit_usdt)     # before anything is read or written
    s = load_settings()
    sleeves = parse_sleeves(engines)
    out_dir = Path(out)
    if data is None:
        data = load_data(Path(data_dir) if data_dir else (s.data_dir if s.data_dir else None), s.database_url)
    if out_dir.exists() and not out_dir.is_dir():
        raise BackfillError(f"--out {out_dir} is a file, not a directory: choose a directory for the outputs")
    engine = None
    if s.backfill_database_url is not None:     # the user's ledger: refused before anything is written
        from eternal.store.db import connect

        engine = connect(s.backfill_database_url)
        check_fresh(engine)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / ".backfill.lock").touch()
    except OSError as exc:                   # /proc/x, a read-only or a full disk: said before any replay
        raise BackfillError(f"--out {out_dir} cannot be written: {exc.strerror or exc}: choose a directory "
                            "you can write to") from None
    with _only_writer(out_dir):
        from eternal.aside import Aside, Primed
        from eternal.report import build
        from tasks import report

        # what an earlier run left is removed first: an interrupted run never leaves a mix of two runs
        for name in OUTPUTS:
            (out_dir / name).unlink(missing_ok=True)
        writer = drawing = None
        later: dict = {}

        def replayed(result: BackfillResult) -> None:
            # the report's CORE alone needs this replay's deposits: it starts beside as soon as they
            # are known, while the ledger is saved and the breakers-off replay ends (in process
            # beside other threads: a spawned child's imports cost more than it does); without it
            # the report is built now and its charts drawn beside the ledger's save
            later["rows"] = rows = report.rows_from_result(result, report.closes_frame(data))
            if report.replays_core_alone(rows):
                later["core alone"] = Aside(report.core_alone, data, s, rows, name="the CORE-alone replay",
                                            spawn=False)
            else:
                later["built"] = built = build(rows, report.core_alone(data, s, rows))
                drawing.draw(built)

        try:                # from the first process started on: an interrupt anywhere leaves nothing behind
            if engine is None:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    Path(str(out_dir / "backfill.db") + suffix).unlink(missing_ok=True)   # a replay starts afresh
                # its own process creates it (the database's library and the schema: 0.2-0.3 s) while
                # this one replays, then writes what the replay hands it (in process beside threads)
                writer = Primed(new_ledger, write_ledger, f"sqlite:///{(out_dir / 'backfill.db').resolve()}",
                                name="the ledger's writer")
            drawing = report.Charts(out_dir, primed=charts)     # matplotlib loads beside the replay
            flow_run = in_flow_run()
            bar = (_ProgressArtifact(start, end) if flow_run else
                   _Progress(start, end, on_progress) if on_progress is not None else None)
            result: BackfillResult = run_backfill(data, s, start=start, end=end, sleeves=sleeves, capital=capital,
                                                  out_dir=out_dir, engine=engine, progress=progress_bar,
                                                  on_day=bar, monthly_deposit=monthly_deposit_usdt,
                                                  on_replayed=replayed,
                                                  ledger_to=(lambda *replayed: writer.send(replayed))
                                                  if writer is not None else None)
            if bar is not None:
                bar.update(100.0)
            (_run_logger() if flow_run else log).info("backfill done: final equity %.2f, %d trades",
                                                      result.summary["final_equity"], result.summary["trades"])
            built = write_report(result, data, s, out_dir, flow_run, later.get("rows"), later.get("core alone"),
                                 drawing, later.get("built"))
            if writer is not None:
                writer.result()
        except BaseException:       # interrupted or failed: no outputs that look like a finished run's
            for work in (later.get("core alone"), drawing, writer):
                if work is not None:
                    work.cancel()
            remove_outputs(out_dir, s)
            raise
    return result.summary, built


def new_ledger(url: str):
    """A backfill's own ledger database, created with its schema (`eternal.store.db.connect`)."""
    from eternal.store.db import connect

    return connect(url)


def write_ledger(engine, replayed: tuple) -> None:
    """`eternal.replay.save_ledger`, then the database closed (SQLite checkpointed: no -wal file
    left, whichever process wrote it)."""
    from eternal.replay import save_ledger
    from eternal.store.db import close_all

    save_ledger(engine, *replayed)       # (the replay's MemoryLedger, its end)
    close_all()         # every connection this process opened, one a reference cycle holds too


OUTPUTS = ("trades.csv", "equity.csv", "summary.json", "events.csv", "report.md", "equity.png", "drawdown.png",
           "sleeves.png")
"""The files a backfill writes in its --out (beside its ledger, backfill.db)."""


def remove_outputs(out_dir: Path, settings) -> None:
    """An interrupted or failed backfill leaves no outputs that look like a finished run's, and no
    ledger of its own (one at ETERNAL_BACKFILL_DATABASE_URL is the user's: kept)."""
    for name in OUTPUTS:
        (out_dir / name).unlink(missing_ok=True)
    if settings.backfill_database_url is None:
        for suffix in ("", "-wal", "-shm", "-journal", ".schema.lock"):     # -journal: a writer killed mid-way
            Path(str(out_dir / "backfill.db") + suffix).unlink(missing_ok=True)


@contextmanager
def _only_writer(out_dir: Path) -> Iterator[None]:
    """One backfill at a time per output directory: an exclusive lock on OUT/.backfill.lock, held
    until the job ends (the OS releases it when the process dies); a second one is refused at once."""
    import fcntl

    with open(out_dir / ".backfill.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackfillError(f"another backfill is writing to {out_dir}: wait for it to end, or give "
                                "another --out") from None
        yield


def _run_logger():
    from prefect import get_run_logger

    return get_run_logger()


class _Progress:
    """An on_day callback that calls `report(pct)` every 5 % of the days replayed."""

    def __init__(self, start: datetime | None, end: datetime | None, report) -> None:
        self.start, self.end, self.days, self.shown, self.report = start, end, 0, 0.0, report

    def __call__(self, day: datetime, *_) -> None:
        self.start = self.start or day
        self.days += 1
        pct = min(100.0, 100.0 * self.days / (((self.end or day) - self.start).days or 1))
        if pct - self.shown >= 5.0:
            self.update(pct)

    def update(self, pct: float) -> None:
        self.shown = pct
        self.report(pct)


class _ProgressArtifact(_Progress):
    """A progress artifact on the flow run, moved every 5 %: 20 updates a run (each a request to the
    API: at every 2 % they were 0.8 s of a full backfill's flow run)."""

    def __init__(self, start: datetime | None, end: datetime | None) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        bar = create_progress_artifact(0.0, key="backfill-progress", description="days replayed")
        super().__init__(start, end, lambda pct: update_progress_artifact(bar, pct))


class StartedJob:
    """`eternal backfill`'s job when a Prefect server is configured, started in a child process
    forked before Prefect is imported, while the CLI has one thread: the job forks its own work
    aside (the breakers-off replay, CORE alone, two of the charts) as it does without Prefect.
    Beside Prefect's threads nothing can be forked: the breakers-off replay was spawned (a second
    interpreter importing eternal, about 1 s), CORE alone and the charts ran in process, and
    Prefect's own imports and the run's creation waited for nothing. The `backfill` flow run
    follows it (`follow`): its progress artifact from the child's reports, its log line and its
    artifacts once the child's answer is in. `start` returns None where no child can be forked:
    the flow run then does the job itself, as a deployment's run does."""

    def __init__(self, params: dict, aside, progress) -> None:
        self.params, self.aside, self.progress = params, aside, progress
        self.finished = False           # followed to its end: outputs, log line and artifacts

    @classmethod
    def start(cls, params: dict, progress_bar: bool, data=None) -> StartedJob | None:
        import multiprocessing
        import threading

        from eternal.aside import Aside

        if threading.active_count() != 1 or "fork" not in multiprocessing.get_all_start_methods():
            return None
        progress, child_end = multiprocessing.get_context("fork").Pipe(duplex=False)
        aside = Aside(_started_job, params, progress_bar, data, child_end, name="the backfill", daemon=False)
        child_end.close()               # the child's copy stays open: at its end this one reads EOF
        if aside.proc is None:          # not forked (one core, a process limit): nothing started
            progress.close()
            return None
        return cls(params, aside, progress)

    def follow(self) -> dict:
        """In the flow run: the progress artifact moved as the child reports, then the child's
        summary (its exception raised here, with the child's traceback as a note), the log line
        and the artifacts. Interrupted, the child is interrupted too and its cleanup waited for."""
        written = False
        try:
            bar = _ProgressArtifact(self.params["start"], self.params["end"])
            while True:
                try:
                    pct = self.progress.recv()
                except EOFError:        # the child's job ended (or the child died)
                    break
                bar.report(pct)
            summary, built = self.aside.result()
            written = True
            bar.report(100.0)
            _run_logger().info("backfill done: final equity %.2f, %d trades", summary["final_equity"],
                               summary["trades"])
            flow_artifacts(summary, built, Path(self.params["out"]))
            self.finished = True
            return summary
        except BaseException:
            self.stop()
            if written:         # the run did not end (interrupted, its artifacts refused): nor do its outputs stay
                remove_outputs(Path(self.params["out"]), load_settings())
            raise
        finally:
            self.progress.close()

    def stop(self) -> None:
        """The child interrupted as Ctrl-C does (its outputs removed), and waited for (at most 60 s,
        then killed). SIGINT is sent again every 0.5 s until it ends: the child ignores the ones
        after its first while it cleans up, and one sent before it could take it is not lost."""
        import signal
        import time

        proc = self.aside.proc
        deadline = time.monotonic() + 60
        while proc is not None and proc.is_alive() and time.monotonic() < deadline:
            try:
                os.kill(proc.pid, signal.SIGINT)
            except ProcessLookupError:
                break
            proc.join(0.5)
        self.aside.cancel()


def _started_job(params: dict, progress_bar: bool, data, progress) -> tuple:
    """`StartedJob`'s child: the job, its progress sent to the parent; -> (summary, report built).
    Its ledger's connections are closed before it ends (a forked child ends with `os._exit`: its
    SQLite -wal and -shm files were left beside the ledger)."""
    from eternal.store.db import close_all

    try:
        return _job(**params, progress_bar=progress_bar, data=data, on_progress=progress.send)
    finally:
        progress.close()
        close_all()


def write_report(result: BackfillResult, data, settings, out_dir: Path, flow_run: bool = False,
                 rows=None, core_alone=None, drawing=None, built=None) -> None:
    """report.md, the charts and the report's numbers beside the replay's files, and on the flow
    run when there is one. `rows`: the result's (`tasks.report.rows_from_result`) when the caller
    has them; `core_alone`: an `eternal.aside.Aside` replaying CORE alone for the report
    (`tasks.report.core_alone`), else it is replayed here; `drawing`: the charts' process
    (`tasks.report.Charts`), else they are drawn here; `built`: the report, when the caller has
    built it already (and handed it to `drawing`)."""
    from eternal.report import build
    from tasks import report

    if built is None:
        rows = rows if rows is not None else report.rows_from_result(result, report.closes_frame(data))
        if core_alone is not None and drawing is None:      # replayed beside: the charts' library loads meanwhile
            report.load_matplotlib()
        # the report's parts that do not need CORE alone are built while it is replayed beside
        built = build(rows, core_alone.result if core_alone is not None else
                      report.core_alone(data, settings, rows))
    report.write(built, out_dir, result.summary, drawing)
    result.summary["report"] = report.jsonable(built.summary)
    if flow_run:
        flow_artifacts(result.summary, built, out_dir)
    return built


def flow_artifacts(summary: dict, built, out_dir: Path) -> None:
    """On the flow run: the summary, and the report with its charts and tables (`tasks.report`)."""
    from prefect.artifacts import create_markdown_artifact

    from tasks import report

    create_markdown_artifact(summary_markdown(summary), key="backfill-summary", description="backfill summary")
    report.artifacts(built, out_dir)


def summary_markdown(summary: dict) -> str:
    rows = "\n".join(f"| {k} | {_fmt(v, k)} |" for k, v in summary.items() if not isinstance(v, (dict, list)))
    return f"# Backfill {summary['start']}..{summary['end_exclusive']}\n\n| metric | value |\n|---|---:|\n{rows}\n"


PERCENT_KEYS = {"total_return", "cagr", "max_drawdown"}      # fractions in summary.json, percentages here


def _fmt(v, key: str = "") -> str:
    if isinstance(v, float) and key in PERCENT_KEYS:
        return f"{v:+.2%}"
    return f"{v:,.2f}" if isinstance(v, float) else str(v)
