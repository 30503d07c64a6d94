"""The `eternal` command line. Every command validates settings first and says what failed."""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from eternal.config import ENV_PREFIX, load_settings  # noqa: E402
from eternal.errors import ConfigError, EternalError  # noqa: E402
from eternal.models import MAX_USDT, UTC, utc  # noqa: E402
from eternal.secrets import SecretUrl, register, reveal, scrub  # noqa: E402


def _date(value: str) -> datetime:
    try:
        return utc(value)  # a date or time without an offset is UTC
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None


def _day(value: str) -> datetime:
    """A day, YYYY-MM-DD (UTC midnight): a backfill replays whole days, so a time is refused, not
    moved silently to a day boundary."""
    ts = _date(value)
    if (ts.hour, ts.minute, ts.second, ts.microsecond) != (0, 0, 0, 0):
        raise argparse.ArgumentTypeError(f"{value!r} has a time of day: a backfill takes whole days (YYYY-MM-DD)")
    return ts


def _out_dir(value: str) -> Path:
    if not value.strip():
        raise argparse.ArgumentTypeError("is empty: give a directory for the outputs")
    return Path(value)


def _number(value: str) -> float:
    """An amount of USDT: a finite number (float() also reads 'inf' and 'nan') of at most
    `eternal.models.MAX_USDT` (a float keeps no cents above it)."""
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value}")
    if v > MAX_USDT:
        raise argparse.ArgumentTypeError(f"{value} USDT is more than {MAX_USDT:g}: above that a float keeps no cents "
                                         "(money never rounds silently)")
    return v


def _not_negative(value: str) -> float:
    if not (v := _number(value)) >= 0:
        raise argparse.ArgumentTypeError(f"must be zero or positive, got {value}")
    return v


def _positive(value: str) -> float:
    if not (v := _number(value)) > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return v


def _secret_url(value: str) -> SecretUrl:
    register(value := SecretUrl(value))    # argparse may echo it in an error: scrubbed from now on
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad argument said in one line (argparse prints its usage block first):
    `eternal backfill: error: argument --capital: must be positive, got -5 (eternal backfill --help
    lists the options)`, exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {scrub(message)} ({self.prog} --help lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="eternal", description="Eternal Engine: a multi-engine crypto portfolio.")
    p.add_argument("--debug", action="store_true", help="on an error, show Prefect's logs and the traceback too "
                   "(anywhere on the command line)")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one flow now")
    run_sub = run.add_subparsers(dest="flow", required=True)
    daily = run_sub.add_parser("daily", help="run the daily cycle (decides on the last closed day)")
    daily.add_argument("--asof", type=_date, help="run as of this UTC time (default: now)")
    daily.add_argument("--mode", choices=["paper", "demo", "testnet", "live"],
                       help="the exchange (default: ETERNAL_MODE, else paper); demo, testnet and live need "
                       "a Bybit key pair per sleeve (ETERNAL_BYBIT__KEYS__<SLEEVE>__API_KEY, __API_SECRET) and "
                       "the master account's (ETERNAL_BYBIT__KEYS__MAIN__API_KEY, __API_SECRET)")
    funding = run_sub.add_parser("funding", help="run one funding tick (books the latest settlement at or "
                                 "before --asof for every perp position, then the FUNDING engine decides)")
    funding.add_argument("--asof", type=_date, help="run as of this UTC time (default: now)")
    funding.add_argument("--mode", choices=["paper", "demo", "testnet", "live"],
                         help="the exchange (default: ETERNAL_MODE, else paper)")

    rebalance = sub.add_parser("rebalance", help="run the quarterly-rebalance flow now: every event due (the "
                               "quarter's first close rebalances the sleeves), then each sleeve's weight vs target")
    rebalance.add_argument("--asof", type=_date, help="run as of this UTC time (default: now)")
    deposit = sub.add_parser("deposit", help="take a deposit (paper): it waits in the ledger for the next daily "
                             "close, which splits it across the sleeves by the deposit rules")
    deposit.add_argument("amount", type=_positive, metavar="AMOUNT", help="USDT, above 0")
    deposit.add_argument("--reference", required=True, help="names the deposit (a bank transfer's id, say): "
                         "booked once per reference, so a repeated command books nothing")
    deposit.add_argument("--asof", type=_date, help="when it arrived, UTC (default: now); the first daily close "
                         "after it splits it, so an offline `run daily --asof` replay takes it; never before the "
                         "ledger's clock")

    bf = sub.add_parser("backfill", help="replay the daily cycle over history")
    bf.add_argument("--start", type=_day, help="first day, YYYY-MM-DD (default: first day of the data)")
    bf.add_argument("--end", type=_day, help="end day, exclusive, YYYY-MM-DD (default: after the last day)")
    bf.add_argument("--engines", help="comma-separated engines: core, trend-1, trend-2, trend (both), funding, "
                    "tactical (default: the whole portfolio); one sleeve alone receives the whole capital")
    bf.add_argument("--capital", type=_positive, help="starting capital in USDT (default: settings)")
    bf.add_argument("--monthly-deposit", type=_not_negative, default=0.0, metavar="USDT",
                    help="deposited on the first day of each month through the deposit rules (default 0)")
    bf.add_argument("--data-dir", type=Path, help="CSV directory (default: ETERNAL_DATA_DIR, else the database)")
    bf.add_argument("--out", type=_out_dir, default=Path("out/backfill"), help="output directory")
    bf.add_argument("--database-url", type=_secret_url, help="where the replay's ledger goes (default: "
                    "ETERNAL_BACKFILL_DATABASE_URL, else OUT/backfill.db); a secret, never a flow parameter")
    bf.add_argument("--no-progress", action="store_true", help="no progress bar")

    sw = sub.add_parser("sweep", help="many backfills with different settings, in parallel on Dask: one table "
                        "(sweep.csv) and a heatmap")
    sw.add_argument("--grid", type=Path, required=True, metavar="FILE", help="YAML, JSON or TOML: engines, start, "
                    "end (exclusive), capital, monthly_deposit_usdt, and grid: {group.field: [values]} named as in "
                    "the settings, e.g. trend_1.fast_sma: [40, 50, 60]")
    sw.add_argument("--metric", choices=["cagr", "max_drawdown", "sharpe"], default="cagr",
                    help="what the heatmap shows (default cagr; the table has all three)")
    sw.add_argument("--address", help="a running Dask scheduler, e.g. tcp://10.0.0.5:8786, whose workers can "
                    "import this project (default: a local cluster for this run)")
    sw.add_argument("--workers", type=int, help="worker processes of the local cluster (default: one per core)")
    sw.add_argument("--data-dir", type=Path, help="CSV directory (default: ETERNAL_DATA_DIR, else the database)")
    sw.add_argument("--out", type=Path, default=Path("out/sweep"), help="output directory")

    data = sub.add_parser("data", help="market data: import, download, validate")
    data_sub = data.add_subparsers(dest="action", required=True)
    imp = data_sub.add_parser("import", help="load the CSV files of a directory into the database")
    imp.add_argument("dir", type=Path)
    imp.add_argument("--timeframes", default="1d", help="comma-separated, e.g. 1d,1h (default 1d)")
    dl = data_sub.add_parser("download", help="download daily candles and funding from Bybit")
    dl.add_argument("--since", type=_date, required=True, help="first day to fetch (YYYY-MM-DD)")
    data_sub.add_parser("fear-greed", help="download the Crypto Fear & Greed Index (alternative.me) "
                        "and store it daily")
    val = data_sub.add_parser("validate", help="run the data quality suite on the stored data")
    val.add_argument("--asof", type=_date, help="check freshness as of this time (default: now)")

    rpt = sub.add_parser("report", help="rebuild a backfill report (report.md, charts) from a ledger")
    rpt.add_argument("source", help="a backfill's output directory (its backfill.db), a .db file or a database URL")
    rpt.add_argument("--out", type=Path, default=None, help="where to write (default: the directory of the ledger)")
    rpt.add_argument("--data-dir", type=Path, default=None, help="CSV data for the benchmarks and "
                     "coins moved in kind (default: ETERNAL_DATA_DIR; without data, no benchmarks)")
    sub.add_parser("status", help="sleeves, positions, last run, engine states")
    cfg = sub.add_parser("config", help="settings")
    cfg_sub = cfg.add_subparsers(dest="action", required=True)
    cfg_sub.add_parser("show", help="print the effective settings, secrets redacted")
    sub.add_parser("demo", help="the main job: backfill all available history and print a summary")

    who = os.environ.get("USER") or "operator"
    halt = sub.add_parser("halt", help="engage the kill switch: no order of any kind leaves, resting orders "
                          "are cancelled (funding, reconciliation and reports go on)")
    halt.add_argument("--reason", required=True, help="why (kept in the ledger's events and alerts)")
    halt.add_argument("--who", default=who, help=f"who decides it (default: $USER, here {who!r})")
    resume = sub.add_parser("resume", help="resume after a circuit breaker or lift the kill switch, "
                            "by the breaker rules")
    resume.add_argument("--reason", required=True, help="why trading may resume now")
    resume.add_argument("--who", default=who, help=f"who decides it (default: $USER, here {who!r})")
    resume.add_argument("--confirm-kill-switch", action="store_true",
                        help="the second confirmation needed to lift the kill switch (L4 included)")
    sub.add_parser("risk", help="breaker level, drawdown, kill switch, halted sleeves and positions")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv               # anywhere: `eternal run daily --debug` as `eternal --debug run daily`
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    args.debug = debug
    try:
        if getattr(args, "mode", None):     # `eternal run daily --mode demo`: as ETERNAL_MODE=demo
            os.environ["ETERNAL_MODE"] = args.mode
        settings = load_settings()          # invalid settings stop everything, before any work
        return COMMANDS[args.command](args, settings)
    except KeyboardInterrupt:
        print("error: interrupted: run the command again (a flow finishes its stored plan first)", file=sys.stderr)
        return 130
    except EternalError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"error: {scrub(str(exc))}", file=sys.stderr)
        return 2
    except Exception as exc:            # a failure nobody refused on purpose: still one line, the trace on demand
        if debug:
            raise
        text = " ".join(scrub(str(exc)).split())
        print(f"error: {type(exc).__name__}: {text[:500]} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    finally:
        while _UNDO:
            try:
                _UNDO.pop()()
            except KeyboardInterrupt:   # the first Ctrl-C or SIGTERM landing as the command ends: it
                pass                    # has said what it did; later ones are ignored (escaping here, it
                                        # printed a traceback, exit -2, and skipped the fast exit)


class _NoFailureReports(logging.Filter):
    """Prefect's console reports of a failed run (its traceback, "Finished in state Failed(...)"):
    the CLI says the same in one line. They still reach the Prefect API, so the UI shows them. And
    its notice at exit that its events worker is still sending ("Still processing items"): it
    waits for them, and says nothing the user can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            return False
        msg = record.getMessage()
        return not (msg.startswith(("Encountered exception", "Task run failed with exception", "Parameter validation failed",
                                    "Crash detected!", "Still processing items"))
                    or "Finished in state Failed" in msg or "Finished in state Crashed" in msg)


_UNDO: list = []
_ENDING = False             # set by `entry`: the process ends when main() returns
_INTERRUPTED = False        # set by a backfill's first SIGINT or SIGTERM


def _quiet_prefect_failures(args) -> None:
    """Before a command starts a flow (unless --debug): Prefect's console handlers show warnings and
    errors only, and not its reports of a failed run (the CLI says it in one line); they are set up
    when prefect is imported (so not before: a command without a flow never pays that import),
    until the command ends."""
    if args.debug:
        return
    import prefect.main  # noqa: F401  (configures logging: a bare `import prefect` no longer does)
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    handlers = {h for lg in loggers for h in lg.handlers if isinstance(h, PrefectConsoleHandler)}
    f = _NoFailureReports()
    levels = {h: h.level for h in handlers}
    for h in handlers:
        h.addFilter(f)
        h.setLevel(max(h.level, logging.WARNING))   # Prefect's INFO lines (servers, runs) only with --debug

    def undo() -> None:
        if _ENDING:         # the console script ends now: Prefect's exit handlers still log, as quietly
            return
        for h in handlers:
            h.removeFilter(f)
            h.setLevel(levels[h])
    _UNDO.append(undo)


def cmd_config(args, s) -> int:
    print(json.dumps(s.redacted(), indent=2, default=str))
    return 0


def cmd_run(args, s) -> int:
    _before_flow_run(args, s)
    _quiet_prefect_failures(args)
    if args.flow == "funding":
        from flows.funding_collection import funding_collection

        report = funding_collection(asof=args.asof)
    else:
        from flows.daily_cycle import daily_cycle

        report = daily_cycle(asof=args.asof)
    print(json.dumps(report, indent=2, default=str))
    return 0


def cmd_rebalance(args, s) -> int:
    _before_flow_run(args, s)
    _quiet_prefect_failures(args)
    from flows.quarterly_rebalance import quarterly_rebalance

    report = quarterly_rebalance(asof=args.asof)
    print(report["line"] + (f" (regime: {report['regime']})" if report.get("regime") else ""))
    print(weights_text(s))
    return 0


def weights_text(s) -> str:
    """Each sleeve's weight against its target after a run: the books valued at the close of the
    ledger's last day (`eternal.valuation`, as `eternal status`)."""
    from eternal.data.store import MarketStore
    from eternal.reporting import sleeve_rows
    from eternal.store.db import connect
    from eternal.store.driver_store import SqlLedger
    from tasks.status import valuation

    engine = connect(s.database_url)
    v = valuation(s, SqlLedger(engine).load(), MarketStore(engine))
    rows = [{k: r[k] for k in ("sleeve", "equity", "weight", "target", "off target")} for r in sleeve_rows(v)]
    width = {k: max(len(k), *(len(r[k]) for r in rows)) for k in rows[0]}
    line = lambda r: "  ".join(r[k].ljust(width[k]) if k == "sleeve" else r[k].rjust(width[k]) for k in r)  # noqa: E731
    return "\n".join([f"weights after the run, at the close of {v.day:%Y-%m-%d} (spot at the close, perps at the mark)",
                      line({k: k for k in rows[0]}), *(line(r) for r in rows)])


def cmd_deposit(args, s) -> int:
    from flows.deposit_intake import check_deposit, deposit_intake

    check_deposit(args.amount, s)          # refused here in a second, not after a Prefect server start
    from eternal.store.db import connect

    engine = connect(s.database_url)      # a SQLite path in a missing directory is refused here too
    if args.asof is not None:
        from eternal.store.driver_store import SqlLedger
        from flows.deposit_intake import check_not_before_clock

        check_not_before_clock(SqlLedger(engine).clock(), args.asof)
    engine.dispose()
    _quiet_prefect_failures(args)
    r = deposit_intake(amount_usdt=args.amount, reference=args.reference, asof=args.asof)
    print(f"deposit {r['reference']}: {r['amount_usdt']:,.2f} USDT "
          + ("was taken before: nothing booked" if r["duplicate"] else "waits for the next daily close "
             f"{'after ' + format(args.asof, '%Y-%m-%d %H:%M') + ' UTC ' if args.asof else ''}"
             "(`eternal run daily`), which splits it across the sleeves"))
    return 0


def _before_flow_run(args, s) -> None:
    """What a flow would refuse, refused before it starts (in a second, not after a Prefect server
    start): a SQLite path in a missing directory, an --asof behind the ledger's clock, market data
    that cannot be brought up to the day decided on (no internet, ETERNAL_DATA_DIR too old)."""
    from eternal.models import UTC as _UTC
    from eternal.store.db import connect
    from tasks.backfill import check_prefect_server, prefect_api_url

    if (url := prefect_api_url()) is not None:
        check_prefect_server(url)
    connect(s.database_url).dispose()
    if args.asof is not None:          # an operator's time: never behind the ledger's clock
        from eternal.store.driver_store import SqlLedger
        from flows.deposit_intake import check_not_before_clock

        check_not_before_clock(SqlLedger(connect(s.database_url)).clock(), args.asof)
    from tasks.refresh import refresh_before_run

    refresh_before_run(s, args.asof or datetime.now(_UTC), logging.getLogger("eternal.cli"))


def _interrupt_on_signals() -> None:
    """SIGTERM (a service manager's stop, `kill`) ends a backfill as Ctrl-C does: its outputs and
    its own ledger are removed, its second replay ends with it, the exit code is 130. The first
    SIGINT or SIGTERM interrupts; later ones (Ctrl-C pressed again) are ignored while it cleans up."""
    import signal
    import threading

    pool_log = logging.getLogger("sqlalchemy.pool")
    pool_level = pool_log.level

    def interrupt(signum, frame):
        global _INTERRUPTED
        _INTERRUPTED = True
        # later ones ignored by a handler that does nothing, not SIG_IGN: a second signal already
        # received (Ctrl-C, then a service manager's TERM 2 ms later) found SIG_IGN when Python came
        # to run its handler and raised "OSError: Signal 15 ignored due to race condition"
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _ignore)
        # landing while SQLAlchemy returns a connection to its pool, the interrupt was logged with a
        # traceback ("Exception during reset or similar") above the CLI's one line, which says it
        pool_log.setLevel(logging.CRITICAL)
        raise KeyboardInterrupt

    def undo() -> None:
        # under the console script the process ends once main() returns (`entry`): a late Ctrl-C
        # stays ignored through that last cleanup (restored, it printed a traceback and exit -2);
        # called in process (tests, scripts), the caller's handlers come back
        global _INTERRUPTED
        ending = _ENDING and "prefect" not in sys.modules
        for sig, handler in previous.items():
            signal.signal(sig, _ignore if ending else handler)
        sys.unraisablehook = unraisable
        pool_log.setLevel(pool_level)
        _INTERRUPTED = False

    unraisable = sys.unraisablehook

    def dropped(hook_args) -> None:
        # an interrupt raised where Python cannot raise it (a weakref callback, a finaliser): not
        # printed as "Exception ignored in ..." with a traceback; `_INTERRUPTED` keeps it for the
        # command, which says it in its one line
        if not isinstance(hook_args.exc_value, KeyboardInterrupt):
            unraisable(hook_args)

    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
        sys.unraisablehook = dropped
        _UNDO.append(undo)


def _ignore(signum, frame) -> None:
    """A signal handler that does nothing (see `_interrupt_on_signals`)."""


def cmd_backfill(args, s) -> int:
    _interrupt_on_signals()
    try:
        return _cmd_backfill(args, s)
    except KeyboardInterrupt:
        kept = (" (the ledger at --database-url or ETERNAL_BACKFILL_DATABASE_URL is kept: give a fresh "
                "one)" if args.database_url is not None or s.backfill_database_url is not None else "")
        print(f"error: interrupted: nothing of this backfill stays in its --out{kept}; run it again",
              file=sys.stderr)
        return 130


def _cmd_backfill(args, s) -> int:
    if args.start and args.end and args.end <= args.start:   # before the slow imports below
        from eternal.models import end_before_start

        raise EternalError(end_before_start(args.start, args.end))
    from tasks.charts_child import prime

    charts = prime(args.out)        # before the imports below: matplotlib loads on the idle core meanwhile
    try:
        return _cmd_backfill_charted(args, s, charts)
    finally:
        charts.cancel()         # refused, interrupted or failed (a child that drew its charts is gone)


def _cmd_backfill_charted(args, s, charts) -> int:
    from eternal.replay import check_window, parse_sleeves

    # refused here, before a Prefect flow run starts: a bad --engines, a window outside the data
    if args.engines is not None and not args.engines.strip(" ,"):
        raise EternalError("--engines is empty: name sleeves (core, trend-1, trend-2, trend, funding, tactical), "
                           "or leave --engines out for the whole portfolio")
    sleeves = parse_sleeves(args.engines)
    data = None
    if args.start or args.end:
        data_dir = args.data_dir or s.data_dir
        if data_dir is not None:
            from eternal.data.csv_files import read_dir

            data = read_dir(data_dir)
        else:
            from tasks.backfill import load_data

            data = load_data(None, s.database_url)
        check_window(data, s, sleeves, args.start, args.end)
    if args.database_url is not None and reveal(args.database_url).startswith("sqlite:///"):
        from eternal.store.db import check_sqlite_dir

        check_sqlite_dir(reveal(args.database_url), "--database-url")      # before the flow starts
    params = dict(start=args.start, end=args.end, engines=args.engines, capital=args.capital,
                  data_dir=str(args.data_dir) if args.data_dir else None, out=str(args.out),
                  monthly_deposit_usdt=args.monthly_deposit)
    summary = None
    try:
        # the URL reaches the job as a setting, never as a parameter (Prefect stores those in the clear)
        with _setting("BACKFILL_DATABASE_URL", reveal(args.database_url)):
            load_settings()
            # what is loaded now (modules, the market data) lives to the end: the cycle collector skips
            # it, 5-8 % of the replay's CPU on the full backfill, in its forked children too
            import gc

            gc.freeze()
            summary = _backfill(args, params, progress_bar=not args.no_progress, data=data, charts=charts)
        if _INTERRUPTED:
            # one Python dropped: raised in a weakref callback while the job's processes were freed
            # as it returned (the backfill exited 0 after a traceback): its outputs are complete
            raise _InterruptedAfterTheBackfill
        print_summary(summary, args.out)
    except KeyboardInterrupt as exc:
        # after the job returned (the setting's restore, the summary): the outputs are complete
        if summary is None and not isinstance(exc, _InterruptedAfterTheBackfill):
            raise
        return _interrupted_after(args.out)
    return 0


def _interrupted_after(out) -> int:
    """Ctrl-C or SIGTERM once the backfill had finished: its outputs stay, complete."""
    print(f"error: interrupted after the backfill finished: its outputs in {out} are complete", file=sys.stderr)
    return 130


class _InterruptedAfterTheBackfill(KeyboardInterrupt):
    """Ctrl-C or SIGTERM once the backfill's outputs were complete (its summary not printed yet)."""


def _backfill(args, params: dict, progress_bar: bool, data=None, charts=None) -> dict:
    """The backfill job: as a Prefect flow run when a Prefect server is configured (the run stays in
    its UI), else directly, without Prefect (an ephemeral server would vanish with the process and
    cost about 8 s; `tasks.backfill`)."""
    from eternal.errors import DatabaseUnavailable

    try:
        return _backfill_job(args, params, progress_bar, data, charts)
    except (ConfigError, DatabaseUnavailable) as exc:
        if args.database_url is None:
            raise
        # the URL came from --database-url (passed on as a setting): name what the user typed
        raise type(exc)(str(exc).replace("ETERNAL_DATABASE_URL", "--database-url")) from None


def _backfill_job(args, params: dict, progress_bar: bool, data=None, charts=None) -> dict:
    """`charts`: the charts' child `_cmd_backfill` started (the job without Prefect draws with it;
    a flow run's job, forked below, starts its own)."""
    from tasks.backfill import StartedJob, check_prefect_server, prefect_api_url, run_job

    if (url := prefect_api_url()) is None:
        return run_job(**params, progress_bar=progress_bar, data=data, charts=charts)    # the data read once
    if charts is not None:
        charts.cancel()                 # not handed to the job's child, forked next
    # the job starts first, in a child forked while this process has one thread (it then forks its
    # own work aside, as without Prefect); the flow run follows it (`tasks.backfill.StartedJob`)
    check_prefect_server(url)
    job = StartedJob.start(params, progress_bar, data)
    try:
        _quiet_prefect_failures(args)
        from flows.backfill import PROGRESS_BAR, STARTED, backfill

        from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

        PROGRESS_BAR.set(progress_bar)
        STARTED.set(job)
        # no flow-run heartbeats for a run the user's own terminal holds: Prefect's heartbeat thread
        # sleeps in whole seconds and the run's end waits for it (0-1 s, about 0.5 s a run); a
        # deployment's run, which a worker holds unseen, keeps them (a server can tell it crashed)
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            return backfill(**params)
    except Exception:
        if not _INTERRUPTED:
            raise
        # the interrupt landed where Prefect wraps what it catches (a result's serialisation: a
        # PydanticSerializationError "KeyboardInterrupt"): an interrupt all the same
        if job is not None and job.finished:
            raise _InterruptedAfterTheBackfill from None
        raise KeyboardInterrupt from None
    except KeyboardInterrupt:
        if job is not None and job.finished:      # while Prefect ended the run: the outputs are complete
            raise _InterruptedAfterTheBackfill from None
        raise
    finally:
        if job is not None:             # ended, or never followed (the run failed to start): stopped
            job.stop()


def cmd_sweep(args, s) -> int:
    from eternal import sweep as sw

    if args.workers is not None and args.workers < 1:
        raise EternalError(f"--workers must be 1 or more, got {args.workers}")
    if args.address is not None and not args.address.strip():
        raise EternalError("--address is empty: give a Dask scheduler's address (tcp://host:8786) or leave it out")
    raw = sw.read_grid(args.grid)
    spec = sw.parse_spec(raw, f"--grid {args.grid}")
    data_dir = args.data_dir or s.data_dir
    if data_dir is not None:
        from eternal.data.csv_files import read_dir

        data = read_dir(data_dir)
    else:
        from flows.backfill import load_data

        data = load_data(None, s.database_url)
    plan = sw.check_sweep(spec, s, data)          # refused here, before a Prefect server or a cluster starts
    _quiet_prefect_failures(args)
    from flows.sweep import sweep

    result = sweep(grid=spec.grid, engines=spec.engines, start=spec.start, end=spec.end, capital=spec.capital,
                   monthly_deposit_usdt=spec.monthly_deposit_usdt, metric=args.metric, address=args.address,
                   workers=args.workers, data_dir=str(args.data_dir) if args.data_dir else None, out=str(args.out))
    import pandas as pd

    frame = sw.table(result["rows"], plan.params)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(frame.to_string(index=False))
    print(f"\n{len(frame)} points, {result['start']} .. {result['end_exclusive']}; written: {result['table']}, "
          f"{result['heatmap']} ({args.metric})")
    return 0


@contextmanager
def _setting(name: str, value: str | None) -> Iterator[None]:
    """ETERNAL_<name>=value while the block runs (nothing when value is None), then as before."""
    var = ENV_PREFIX + name
    before = os.environ.get(var)
    if value is not None:
        os.environ[var] = value
    try:
        yield
    finally:
        if value is not None:
            if before is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = before


def cmd_demo(args, s) -> int:
    """Data from ETERNAL_DATA_DIR when set, otherwise downloaded from Bybit first; then a replay."""
    out = Path("out/demo")
    if s.data_dir is None:
        from eternal.data.download import download_market_data
        from eternal.data.store import MarketStore
        from eternal.store.db import connect

        print("ETERNAL_DATA_DIR is not set: downloading daily history from Bybit ...", file=sys.stderr)
        from eternal.data.download import make_bybit_public

        download_market_data(MarketStore(connect(s.database_url)), since=datetime(2017, 1, 1, tzinfo=UTC),
                             now=datetime.now(UTC), exchange=make_bybit_public(reveal(s.exchange.public_url)))
    summary = _backfill(args, dict(data_dir=str(s.data_dir) if s.data_dir else None, out=str(out)),
                        progress_bar=True)
    print_summary(summary, out)
    return 0


def print_summary(summary: dict, out: Path) -> None:
    rows = [("window", f"{summary['start']} .. {summary['end_exclusive']} ({summary['days']} days)"),
            ("sleeves", ", ".join(summary["sleeves"])),
            ("initial capital", f"{summary['initial_capital']:,.2f} USDT"),
            ("deposits", f"{summary.get('deposits', 0.0):,.2f} USDT"),
            ("final equity", f"{summary['final_equity']:,.2f} USDT"),
            ("total return", f"{summary['total_return']:.2%}" + (" (time-weighted)" if summary.get("deposits") else "")),
            ("CAGR", f"{summary['cagr']:.2%}" if summary["cagr"] is not None else "n/a"),
            ("max drawdown", f"{summary['max_drawdown']:.2%}"),
            ("Sharpe (daily, sqrt 365)", f"{summary['sharpe']:.2f}" if summary["sharpe"] is not None else "n/a"),
            ("trades", str(summary["trades"])),
            ("fees", f"{summary['fees']:,.2f} USDT")]
    if summary.get("exit_reasons"):
        rows.append(("perp exits", ", ".join(f"{k} {v}" for k, v in summary["exit_reasons"].items())))
    if summary.get("funding"):
        rows.append(("funding", f"received {summary.get('funding_received', 0.0):,.2f} USDT, paid "
                                f"{summary.get('funding_paid', 0.0):,.2f} USDT, net {summary['funding']:+,.2f} USDT"))
    if tac := summary.get("tactical_sleeve"):
        rows.append(("tactical", f"{len(tac['deployments'])} deployments, {len(tac['exits'])} exits, "
                                 f"{tac['returned_to_core_usdt']:,.2f} USDT returned to CORE"))
    rows += [(f"  {k}", f"{v:,.2f} USDT") for k, v in summary["final_equity_by_sleeve"].items()]
    if (b := summary.get("breakers")) is not None:
        if not b["enabled"]:
            rows.append(("breakers", f"off ({b.get('off_because')})"))
        else:
            fired = {}
            for e in b["escalations"]:
                fired[f"L{e['to']}"] = fired.get(f"L{e['to']}", 0) + 1
            rows.append(("breakers fired", ", ".join(f"{k} x{v}" for k, v in sorted(fired.items())) or "none"))
            rows.append(("days at level", ", ".join(f"{k} {v:,.0f}" for k, v in b["days_at_level"].items())))
            if b.get("level") or b.get("kill_switch"):
                rows.append(("at the end", f"breaker L{b['level']}" + (", kill switch engaged" if b["kill_switch"]
                                                                        else "") + " (no resume since)"))
            if "without_breakers" in b:
                off = b["without_breakers"]
                rows.append(("without breakers", f"{off['final_equity']:,.2f} USDT, max drawdown "
                             f"{off['max_drawdown']:.2%} (the breakers {'cost' if b['cost_usdt'] >= 0 else 'saved'} "
                             f"{abs(b['cost_usdt']):,.2f} USDT)"))
    if w := summary.get("max_asset_weight"):
        rows.append(("largest asset weight", ", ".join(f"{a} {v['weight']:.1%} ({v['day']})" for a, v in w.items()
                                                       if v["weight"] > 0.001)))
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))
    if (b := (summary.get("report") or {}).get("benchmarks")):
        rows = [(f"benchmark {k}", f"{v['total_return']:+.2%}, max drawdown {v['max_drawdown']:.2%}") for k, v in b.items()]
        width = max(len(k) for k, _ in rows)
        print("\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))
    print(f"\nwritten: {out}/report.md, {out}/equity.png, {out}/drawdown.png, {out}/sleeves.png, {out}/trades.csv, "
          f"{out}/equity.csv, {out}/summary.json, {out}/events.csv")


def cmd_data(args, s) -> int:
    from eternal.data.store import MarketStore
    from eternal.store.db import connect

    if args.action == "import":
        from eternal.data.csv_files import read_dir
        from eternal.data.importer import import_dir

        timeframes = tuple(t.strip() for t in args.timeframes.split(","))
        read_dir(args.dir, timeframes)   # unreadable files are refused before the database is touched
        market, replaced = MarketStore(connect(s.database_url)), []
        written = import_dir(market, args.dir, s, timeframes, events=replaced)
        for series, n in written.items():
            print(f"{series}: {n} rows written")
        for event in replaced:
            print(f"warning: {event.message}")
        if replaced:
            from eternal.store.ledger import LedgerStore

            LedgerStore(market.engine).append_events(replaced)
        return 0
    store = MarketStore(connect(s.database_url))
    if args.action == "fear-greed":
        from eternal.data.fear_greed import update_fear_greed

        with _offline_way("the Fear & Greed index (alternative.me)"):
            n = update_fear_greed(store, reveal(s.data.fear_greed_url), timeout_s=s.data.fear_greed_timeout_s,
                                  retries=s.data.fear_greed_retries)
        print(f"fear & greed: {n} rows written")
        return 0
    if args.action == "download":
        from eternal.data.download import download_market_data

        from eternal.data.download import make_bybit_public

        corrected: list = []
        with _offline_way("Bybit"):
            written = download_market_data(store, since=args.since, now=datetime.now(UTC),
                                           exchange=make_bybit_public(reveal(s.exchange.public_url)),
                                           events=corrected, max_daily_move=s.data.max_daily_move,
                                           max_funding_rate=s.data.max_funding_rate_8h)
        for series, n in written.items():
            print(f"{series}: {n} rows written")
        for event in corrected:
            print(event.message)
        if corrected:
            from eternal.store.ledger import LedgerStore

            LedgerStore(store.engine).append_events(corrected)
        return 0
    from eternal.data.csv_files import DataSet
    from eternal.market import check_dataset
    from eternal.models import Sleeve

    asof = args.asof or datetime.now(UTC)
    day_end = asof.replace(hour=0, minute=0, second=0, microsecond=0)
    data = DataSet({(sym, "1d"): store.load_candles(sym, "1d", end=day_end) for sym in store.candle_symbols("1d")})
    if not data.candles:
        raise EternalError("no candles stored: run `eternal data import DIR` or `eternal data download` first")
    for sym in {sym for (sym, _) in data.candles if sym.endswith(":USDT")}:
        if len(f := store.load_funding(sym, end=asof)):
            data.funding[sym] = f
    fg = store.load_fear_greed()
    data.fear_greed = fg[fg.index < day_end] if len(fg) else None
    sleeves = [sl for sl in Sleeve if getattr(s.weights, sl.weight_field) > 0]
    check_dataset(data, s, sleeves, asof=asof, always_ge=True)      # the suite of every door, and the engines' history
    print(f"{len(data.candles)} daily series, {len(data.funding)} funding series"
          f"{' and Fear & Greed' if data.fear_greed is not None else ''} valid as of {asof:%Y-%m-%d %H:%M} UTC: "
          f"{', '.join(sym for sym, _ in data.candles)}")
    return 0


@contextmanager
def _offline_way(source: str) -> Iterator[None]:
    """A source that cannot be reached: one line saying so and naming the offline way."""
    from eternal.errors import DataUnreachable
    from tasks.refresh import OFFLINE_WAY

    try:
        yield
    except DataUnreachable as exc:
        cause = str(exc).split("; check ")[0].split(". check ")[0]      # its own hint is "check the network"
        raise DataUnreachable(f"no internet: {source} cannot be reached ({cause}); {OFFLINE_WAY}") from None


def cmd_status(args, s) -> int:
    from eternal.store.db import connect
    from tasks.status import status_text

    print(status_text(s, connect(s.database_url)))   # credentials masked
    return 0


def cmd_halt(args, s) -> int:
    from tasks.override import halt

    result = halt(s, _reason(args.reason), args.who, datetime.now(UTC))
    for e in result["events"]:
        print(e["message"])
    if not any(e["kind"] == "kill_switch_engaged" for e in result["events"]):
        ks = result["status"]["kill_switch"]
        print(f"the kill switch was already engaged (by {ks['who']} at {ks['at']}: {ks['reason']}): nothing changed")
    return 0


def cmd_resume(args, s) -> int:
    from tasks.override import resume

    result = resume(s, _reason(args.reason), args.who, datetime.now(UTC), confirm_kill_switch=args.confirm_kill_switch)
    for e in result["events"]:
        print(e["message"])
    return 0


def _reason(text: str) -> str:
    if not text.strip():
        raise EternalError("--reason is empty: say why (it is kept in the ledger's events)")
    return text


def cmd_risk(args, s) -> int:
    from tasks.override import risk_status

    st = risk_status(s)
    ks = st["kill_switch"]
    print(f"breaker level: {st['level_name']}" + (f" (since {st['engaged_at']})" if st["engaged_at"] else ""))
    print(f"drawdown: {st['drawdown']:.2%}   unit value: {st['unit_value']:.4f}   high-water mark: "
          f"{st['high_water_mark']:.4f}   NAV: {st['nav_usdt']:,.2f} USDT")
    print("kill switch: " + ("not engaged" if ks is None else
                             f"ENGAGED by {ks['who']} at {ks['at']}: {ks['reason']}"))
    for sleeve, why in st["halted_sleeves"].items():
        print(f"HALTED {sleeve}: {why}")
    if st["clock"]:
        print(f"clock: {st['clock']}   open orders: {st['open_orders']}")
    print(f"\n{'sleeve':10} {'cash USDT':>14}  positions")
    for sleeve, pos in st["positions"].items():
        held = [f"{a} {q:.8g}" for a, q in pos["coins"].items()]
        held += [f"{sym} {v['qty']:+.8g} @ {v['entry_price']:,.2f}" for sym, v in pos["perps"].items()]
        print(f"{sleeve:10} {pos['cash_usdt']:>14,.2f}  {', '.join(held) or '-'}")
    return 0


def cmd_report(args, s) -> int:
    from tasks.report import rebuild

    data_dir = args.data_dir or s.data_dir
    data = None
    if data_dir is not None:
        from eternal.data.csv_files import read_dir
        data = read_dir(Path(data_dir))
    built, out = rebuild(args.source, args.out, data, s)
    t = built.summary["sleeves"]["total"]
    print("; ".join([f"total return {t['total_return']:+.2%}, max drawdown {t['max_drawdown']:.2%}",   # no stray "; "
                     *(f"{k} {v['total_return']:+.2%}" for k, v in built.summary["benchmarks"].items())]))
    print(f"written: {out}/report.md, {out}/equity.png, {out}/drawdown.png, {out}/sleeves.png, {out}/summary.json")
    return 0


COMMANDS = {"config": cmd_config, "run": cmd_run, "rebalance": cmd_rebalance, "deposit": cmd_deposit,
            "backfill": cmd_backfill, "sweep": cmd_sweep, "report": cmd_report, "demo": cmd_demo, "data": cmd_data, "status": cmd_status,
            "halt": cmd_halt, "resume": cmd_resume, "risk": cmd_risk}

def entry() -> None:
    """The `eternal` console script: main(), then a fast exit. Once the command has returned, every
    file is written and closed and every transaction committed; what is left is the interpreter's
    teardown of the replay's objects and modules (about 2 s; 0.6 s after a flow run), which
    `os._exit` skips after flushing the standard streams and logging. When Prefect is loaded its
    exit handlers run first (they send the last logs and stop a temporary server): the fast exit
    is then the last exit handler. Database connections are closed first
    (`eternal.store.db.close_all`)."""
    import atexit

    global _ENDING
    _ENDING = True
    code: list[int] = []
    atexit.register(_fast_exit, code)       # registered first, run last: after Prefect's handlers
    rc = main()
    code.append(rc)
    if "prefect" in sys.modules:
        sys.exit(rc)
    _fast_exit(code)


def _fast_exit(code: list[int]) -> None:
    if not code:                # main() raised: the interpreter reports it and exits as usual
        return
    if "eternal.store.db" in sys.modules:
        from eternal.store.db import close_all

        close_all()                 # SQLite checkpointed: no -wal file left beside the ledger
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code[0])


if __name__ == "__main__":
    entry()
