"""The `eternal` command line, run in-process (`main([...])`) and once as the installed script.

Every command validates settings and arguments first: a bad one exits 2 with a message naming
it, and nothing is created. Data commands run against real CSV data from ../shared/data and, for
`data download`, against the local Bybit emulator (tests/bybit_stub.py): no test leaves 127.0.0.1.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from eternal.cli import main
from eternal.data import download

try:  # tests/ as a package (python -m pytest from the repo root) or as rootdir-less modules
    from tests.bybit_stub import BybitStub
except ImportError:
    from bybit_stub import BybitStub

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "eternal"   # the console script of this venv
DATA = ROOT.parent / "shared" / "data"
SPOT_FILES = ("ohlcv_1d_BTC-USDT_spot.csv", "ohlcv_1d_ETH-USDT_spot.csv")
SECRET = "s3cret-value"


@pytest.fixture
def db_file(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "x.db"
    monkeypatch.setenv("ETERNAL_DATABASE_URL", f"sqlite:///{path}")
    return path


@pytest.fixture
def csv_dir(tmp_path) -> Path:
    """A data directory holding copies of the real BTC and ETH daily spot candles."""
    d = tmp_path / "csv"
    d.mkdir()
    for name in SPOT_FILES:
        shutil.copy(DATA / name, d / name)
    return d


@pytest.fixture
def imported(csv_dir, db_file, capsys) -> Path:
    assert main(["data", "import", str(csv_dir)]) == 0
    capsys.readouterr()
    return db_file


def _count(db: Path, table: str) -> dict[str, int]:
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(f"SELECT symbol, COUNT(*) FROM {table} GROUP BY symbol")).all()
    finally:
        engine.dispose()
    return dict(rows)


def _rows(db: Path, table: str) -> int:
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            return conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one()
    finally:
        engine.dispose()


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    """main(argv) in-process: (exit code, stdout, stderr); argparse's SystemExit counts as exit."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _script(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ETERNAL_")}
    clean.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", **env)
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=clean,
                          cwd=os.getcwd(), timeout=60)


# --help -------------------------------------------------------------------------------------
HELP = {
    (): ["run", "backfill", "data", "status", "config", "demo"],
    ("run",): ["daily"],
    ("run", "daily"): ["--asof"],
    ("backfill",): ["--start", "--end", "--engines", "--capital", "--data-dir", "--out",
                    "--database-url", "--no-progress"],
    ("data",): ["import", "download", "validate"],
    ("data", "import"): ["dir", "--timeframes"],
    ("data", "download"): ["--since"],
    ("data", "validate"): ["--asof"],
    ("status",): ["-h, --help"],
    ("config",): ["show"],
    ("config", "show"): ["-h, --help"],
    ("demo",): ["-h, --help"],
}


@pytest.mark.parametrize("command", list(HELP), ids=lambda c: " ".join(c) or "eternal")
def test_help_of_every_command_exits_0_and_lists_its_options(command, capsys, tmp_path):
    code, out, err = _run([*command, "--help"], capsys)
    assert code == 0 and err == ""
    assert out.startswith(f"usage: {' '.join(['eternal', *command])}")
    for option in HELP[command]:
        assert option in out
    assert not list(tmp_path.iterdir())  # help creates nothing


def test_installed_script_help_exits_0_and_lists_the_commands(tmp_path):
    result = _script("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: eternal")
    for command in HELP[()]:
        assert command in result.stdout


def test_no_command_is_an_argparse_error_exit_2(capsys):
    code, out, err = _run([], capsys)
    assert code == 2 and err == ("eternal: error: the following arguments are required: command (eternal --help "
                                 "lists the options)\n")


# bad settings -------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [["status"], ["config", "show"], ["data", "validate"],
                                     ["run", "daily"], ["backfill"], ["demo"]],
                         ids=" ".join)
def test_bad_settings_exit_2_naming_field_and_value_and_create_nothing(command, monkeypatch,
                                                                         capsys, tmp_path):
    monkeypatch.setenv("ETERNAL_WEIGHTS__CORE", "0.9")
    code, out, err = _run(command, capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: invalid settings, nothing was run")
    assert "ETERNAL_WEIGHTS__CORE='0.9'" in err and "must sum to 1" in err
    assert not (tmp_path / "var").exists() and not list(tmp_path.iterdir())


def test_installed_script_exits_2_on_bad_settings_and_creates_no_database(tmp_path):
    result = _script("status", ETERNAL_CORE__CASH_BUFFER="1.5")
    assert result.returncode == 2
    assert "ETERNAL_CORE__CASH_BUFFER='1.5'" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "var" / "eternal.db").exists() and not list(tmp_path.iterdir())


def test_unparseable_group_setting_exits_2_not_a_traceback(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("ETERNAL_WEIGHTS", "core=0.6")
    code, out, err = _run(["status"], capsys)
    assert code == 2 and "ETERNAL_WEIGHTS='core=0.6'" in err
    assert not list(tmp_path.iterdir())


# bad arguments ------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["backfill", "--capital", "-5"], "argument --capital: must be positive, got -5"),
    (["backfill", "--capital", "0"], "argument --capital: must be positive, got 0"),
    (["backfill", "--capital", "lots"], "argument --capital: 'lots' is not a number"),
    (["backfill", "--start", "notadate"], "argument --start: 'notadate' is not a date (YYYY-MM-DD)"),
    (["backfill", "--end", "2024-13-01"], "argument --end: '2024-13-01' is not a date (YYYY-MM-DD)"),
    (["data", "download", "--since", "yesterday"], "argument --since: 'yesterday' is not a date"),
    (["data", "download"], "the following arguments are required: --since"),
    (["data", "validate", "--asof", "1/6/2026"], "argument --asof: '1/6/2026' is not a date"),
])
def test_bad_arguments_are_argparse_errors_exit_2_with_a_clear_message(argv, message, capsys,
                                                                        tmp_path):
    code, out, err = _run(argv, capsys)
    assert code == 2 and out == ""
    words = next((argv[:i] for i, a in enumerate(argv) if a.startswith("-")), argv)
    prog = " ".join(["eternal", *words])
    assert err.startswith(f"{prog}: error: ") and message in err and err.endswith(f"({prog} --help lists the options)\n")
    assert err.count("\n") == 1                         # one line: no usage block
    assert not list(tmp_path.iterdir())


def test_date_arguments_are_read_as_utc():
    # the same parser main() uses: dates and times without an offset are UTC, Z is accepted
    from eternal.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["backfill", "--start", "2024-01-05"]).start == datetime(2024, 1, 5, tzinfo=UTC)
    assert parser.parse_args(["run", "daily", "--asof", "2024-01-05T06:30:00Z"]).asof == datetime(
        2024, 1, 5, 6, 30, tzinfo=UTC)
    assert parser.parse_args(["data", "validate", "--asof", "2024-01-05T02:00:00+02:00"]).asof == datetime(
        2024, 1, 5, tzinfo=UTC)


@pytest.mark.parametrize("engines", ["", " , "])
def test_backfill_with_empty_engines_is_refused_not_read_as_the_whole_portfolio(engines, capsys, tmp_path):
    code, out, err = _run(["backfill", "--engines", engines], capsys)
    assert code == 2 and out == "" and err.strip().splitlines() == [
        "error: --engines is empty: name sleeves (core, trend-1, trend-2, trend, funding, tactical), or leave "
        "--engines out for the whole portfolio"]
    assert not list(tmp_path.iterdir())


def test_backfill_unknown_engine_exits_2_naming_it_before_any_flow_runs(capsys, tmp_path):
    code, out, err = _run(["backfill", "--engines", "core,nosuch"], capsys)
    assert code == 2 and out == ""
    assert "unknown engine 'nosuch'" in err and "known: core" in err
    assert not list(tmp_path.iterdir())          # no output dir, no database
    assert "Flow run" not in err and "Traceback" not in err


def test_backfill_to_an_out_that_cannot_be_written_is_one_line_exit_2(capsys, shared_data):
    """A fresh user's `--out /proc/foo` printed "error: FileNotFoundError: ..." and exited 1."""
    code, out, err = _run(["backfill", "--engines", "trend-1", "--start", "2024-01-01", "--end", "2024-02-01",
                           "--data-dir", str(shared_data), "--out", "/proc/foo", "--no-progress"], capsys)
    assert code == 2 and out == ""
    assert err.strip() == "error: --out /proc/foo cannot be written: No such file or directory: choose a directory " \
                          "you can write to"


@pytest.mark.parametrize("option, value, said", [
    ("--out", "", "argument --out: is empty: give a directory for the outputs"),
    ("--start", "2023-01-01T12:00", "argument --start: '2023-01-01T12:00' has a time of day: a backfill takes "
                                    "whole days (YYYY-MM-DD)"),
    ("--monthly-deposit", "1e300", "argument --monthly-deposit: 1e300 USDT is more than 1e+12: above that a float "
                                   "keeps no cents (money never rounds silently)"),
])
def test_a_backfill_refuses_an_empty_out_a_time_of_day_and_more_usdt_than_a_float_keeps(
        option, value, said, capsys, shared_data, tmp_path):
    """A fresh user's `--out ""` wrote into the current directory (deleting a report.md there),
    `--start 2023-01-01T12:00` replayed from 2023-01-02 while summary.json said 2023-01-01, and a
    1e300 deposit reported -100 % with a matplotlib overflow."""
    args = {"--start": "2023-01-01", "--end": "2023-02-01", "--out": str(tmp_path / "out"), option: value}
    code, out, err = _run(["backfill", "--data-dir", str(shared_data), "--no-progress",
                           *[x for kv in args.items() for x in kv]], capsys)
    assert code == 2 and out == ""
    assert said in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())          # nothing written, here (the cwd) either


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _backfill_started(tmp_path, out: str, data: Path, prefect_api_url: str | None = None,
                      progress: bool = False, children: int = 3) -> subprocess.Popen:
    """The full backfill (2020-09-14..2026-01-01, 1,000 USDT monthly) in a process of its own,
    returned once it has `children` processes of its own: by default once its second replay
    (breakers off) runs in its third child, after the ledger's writer and the charts' (with a
    Prefect server at `prefect_api_url`: in its job's child, one more)."""
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETERNAL_", "PREFECT_API"))}
    if prefect_api_url is not None:
        env |= {"PREFECT_API_URL": prefect_api_url, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    proc = subprocess.Popen([str(SCRIPT), "backfill", "--start", "2020-09-14", "--end", "2026-01-01",
                             "--monthly-deposit", "1000", *([] if progress else ["--no-progress"]),
                             "--data-dir", str(data), "--out", out],
                            env={**env, "DO_NOT_TRACK": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while len(_children(proc.pid)) < children + (prefect_api_url is not None):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    return proc


def _gone(pids: list[int], within_s: float = 10.0) -> bool:
    import time

    import psutil

    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
            return True
        time.sleep(0.05)
    return False


def test_a_backfill_killed_with_sigkill_leaves_no_replay_running_and_the_next_run_goes_ahead(tmp_path, shared_data):
    """A fresh user's SIGKILL left the second replay running on (re-parented to init) with the
    --out lock, and the next run was refused: "another backfill is writing"."""
    import signal

    proc = _backfill_started(tmp_path, "out", shared_data)
    child = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = _script("backfill", "--engines", "trend-1", "--start", "2024-01-01", "--end", "2024-02-01",
                    "--no-progress", "--data-dir", str(shared_data), "--out", str(tmp_path / "out"))
    assert again.returncode == 0, again.stderr          # the --out lock died with the killed backfill
    assert _gone(child), f"the second replay {child} still runs after its backfill was killed"
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["start"] == "2024-01-01"


def test_a_backfill_stopped_with_sigterm_leaves_no_outputs_and_no_replay_running(tmp_path, shared_data):
    """SIGTERM ends a backfill as Ctrl-C does (exit 130, its one line, a second signal ignored
    while it cleans up: it printed 36 lines of tracebacks and sometimes exited 143), and what it
    says holds: no outputs in its --out, its ledger removed, its second replay gone."""
    import signal

    proc = _backfill_started(tmp_path, "out", shared_data)
    child = _children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)        # a second one (`kill` twice, Ctrl-C again) while it cleans up
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip() == "error: interrupted: nothing of this backfill stays in its --out; run it again"
    assert _gone(child)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".backfill.lock"]


def test_an_interrupted_backfill_clears_its_progress_bar_before_its_one_line(tmp_path, shared_data):
    """The bar's last state stayed on the terminal and the error was written after it on the same
    line ("... 0/1935 [00:00<?, ?day/s]error: interrupted: ...")."""
    import signal

    proc = _backfill_started(tmp_path, "out", shared_data, progress=True)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    # (read as text, the bar's carriage returns are line ends)
    assert err.splitlines()[-1] == "error: interrupted: nothing of this backfill stays in its --out; run it again"


@pytest.mark.parametrize("children", [3, 1], ids=["mid-replay", "as-its-ledger-is-created"])
def test_a_backfill_as_a_flow_run_stopped_with_sigterm_leaves_no_outputs_and_no_job_running(
        tmp_path, shared_data, prefect_harness, children):
    """With a Prefect server configured the job runs in a child started before Prefect is imported
    (`tasks.backfill.StartedJob`): SIGTERM to the CLI still ends it as Ctrl-C does, the job's child
    interrupted and its cleanup waited for: exit 130, its one line last, no outputs, no process left.
    Also as soon as the ledger's writer is forked (it creates backfill.db beside the replay): it was
    started before the job's cleanup took over (the charts' process was forked in between), so an
    interrupt landing there left backfill.db and its -journal in --out (seen once in the suite)."""
    import signal

    from prefect.settings import PREFECT_API_URL

    proc = _backfill_started(tmp_path, "out", shared_data, PREFECT_API_URL.value(), children=children)
    children = _children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == ("error: interrupted: nothing of this backfill stays in its --out; "
                                            "run it again")
    assert _gone(children)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".backfill.lock"]


# config show --------------------------------------------------------------------------------
def test_config_show_prints_effective_settings_as_json_with_the_secret_redacted(monkeypatch, capsys):
    monkeypatch.setenv("ETERNAL_EXCHANGE__API_SECRET", SECRET)
    monkeypatch.setenv("ETERNAL_CORE__DRIFT_THRESHOLD", "0.2")
    monkeypatch.setenv("ETERNAL_MODE", "replay")
    code, out, err = _run(["config", "show"], capsys)
    assert code == 0 and err == ""
    assert SECRET not in out and "**********" in out
    shown = json.loads(out)
    assert shown["exchange"]["api_secret"] == "**********"
    assert shown["mode"] == "replay" and shown["core"]["drift_threshold"] == 0.2
    assert shown["trend_2"]["fast_sma"] == 20 and shown["weights"]["core"] == 0.6
    assert shown["database_url"] == "sqlite:///var/eternal.db"


def test_config_show_masks_every_credential_in_a_url_but_shows_the_host(monkeypatch, capsys):
    monkeypatch.setenv("ETERNAL_DATABASE_URL", "postgresql+psycopg2://eternal:db-pw-3141@db.example:5432/eternal")
    monkeypatch.setenv("ETERNAL_DATA__FEAR_GREED_URL", "https://fg:fg-pw-2718@proxy.example/fng/?limit=0&token=fg-tok-1618")
    monkeypatch.setenv("ETERNAL_EXCHANGE__PUBLIC_URL", "https://bb-proxy.example/?api_key=bb-tok-1414")
    monkeypatch.setenv("ETERNAL_EXCHANGE__API_KEY", "key-abc-123")
    code, out, err = _run(["config", "show"], capsys)
    assert code == 0 and err == ""
    for secret in ("db-pw-3141", "eternal:", "fg-pw-2718", "fg-tok-1618", "bb-tok-1414", "key-abc-123"):
        assert secret not in out
    shown = json.loads(out)
    assert shown["database_url"] == "postgresql+psycopg2://***:***@db.example:5432/eternal"
    assert shown["data"]["fear_greed_url"] == "https://***:***@proxy.example/fng/?limit=0&token=***"
    assert shown["exchange"]["public_url"] == "https://bb-proxy.example/?api_key=***"
    assert shown["exchange"]["api_key"] == "**********"


def test_a_malformed_exchange_json_exits_2_without_echoing_its_api_secret(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("ETERNAL_EXCHANGE", '{"api_key": "k", "api_secret": "' + SECRET + '"')
    code, out, err = _run(["status"], capsys)
    assert code == 2 and out == "" and "ETERNAL_EXCHANGE=<not shown" in err
    assert SECRET not in err and not list(tmp_path.iterdir())


def test_an_unreachable_database_error_masks_its_password(monkeypatch, capsys):
    import socket

    with socket.socket() as sock:           # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("ETERNAL_DATABASE_URL", f"postgresql+psycopg2://eternal:db-pw-3141@127.0.0.1:{port}/x")
    code, out, err = _run(["status"], capsys)
    assert code == 2 and err.startswith(f"error: database postgresql+psycopg2://***:***@127.0.0.1:{port}/x is unreachable")
    assert "db-pw-3141" not in err


# numbers are finite -------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_an_infinite_initial_capital_is_refused_before_the_ledger_gets_a_balance(value, db_file, monkeypatch,
                                                                                  capsys, dataset):
    from eternal.store.db import connect
    from tests.flow_support import store_market

    store_market(connect(f"sqlite:///{db_file}"), dataset, "2023-12-01", "2024-01-03")
    monkeypatch.setenv("ETERNAL_INITIAL_CAPITAL", value)
    code, out, err = _run(["run", "daily", "--asof", "2024-01-02T00:05:00Z"], capsys)
    assert code == 2 and out == ""
    assert err == ("error: invalid settings, nothing was run:\n"
                   f"  ETERNAL_INITIAL_CAPITAL={value!r}: Input should be a finite number\n")
    assert _rows(db_file, "sleeves") == _rows(db_file, "balances") == _rows(db_file, "cycle_runs") == 0


def test_installed_script_refuses_an_infinite_initial_capital_and_creates_no_database(tmp_path):
    result = _script("run", "daily", "--asof", "2024-01-02T00:05:00Z", ETERNAL_INITIAL_CAPITAL="inf",
                     ETERNAL_DATABASE_URL=f"sqlite:///{tmp_path / 'x.db'}")
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert "ETERNAL_INITIAL_CAPITAL='inf': Input should be a finite number" in result.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, message", [
    (["--monthly-deposit", "inf"], "argument --monthly-deposit: must be a finite number, got inf"),
    (["--monthly-deposit", "nan"], "argument --monthly-deposit: must be a finite number, got nan"),
    (["--monthly-deposit", "-1"], "argument --monthly-deposit: must be zero or positive, got -1"),
    (["--capital", "inf"], "argument --capital: must be a finite number, got inf"),
    (["--capital", "NaN"], "argument --capital: must be a finite number, got NaN"),
])
def test_backfill_amounts_must_be_finite_refused_with_one_line_and_nothing_written(argv, message, capsys, tmp_path):
    code, out, err = _run(["backfill", "--out", str(tmp_path / "out"), *argv], capsys)
    assert code == 2 and out == ""
    assert err == f"eternal backfill: error: {message} (eternal backfill --help lists the options)\n"
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kwargs, message", [
    ({"monthly_deposit_usdt": float("inf")}, "monthly_deposit_usdt must be a finite number of 0 or more, got inf"),
    ({"monthly_deposit_usdt": -1.0}, "monthly_deposit_usdt must be a finite number of 0 or more, got -1.0"),
    ({"monthly_deposit_usdt": float("nan")}, "monthly_deposit_usdt must be a finite number of 0 or more, got nan"),
    ({"capital": float("inf")}, "capital must be a finite number above 0, got inf"),
    ({"capital": 0.0}, "capital must be a finite number above 0, got 0.0"),
])
def test_backfill_flow_refuses_an_infinite_amount_before_reading_or_writing(kwargs, message, tmp_path,
                                                                           prefect_harness):
    from eternal.replay import BackfillError
    from flows.backfill import backfill

    with pytest.raises(BackfillError) as info:
        backfill(out=str(tmp_path / "out"), data_dir=str(DATA), **kwargs)
    assert str(info.value) == message
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kwargs", [{"capital": float("inf")}, {"monthly_deposit": float("inf")},
                                    {"monthly_deposit": float("nan")}, {"capital": float("nan")}])
def test_run_backfill_refuses_an_infinite_amount(kwargs, dataset):
    from eternal.config import load_settings
    from eternal.replay import BackfillError, run_backfill

    with pytest.raises(BackfillError, match="must be a finite number"):
        run_backfill(dataset, load_settings(), progress=False, **kwargs)


def test_backfill_database_url_is_refused_masked_when_unreachable_and_is_no_flow_parameter(capsys, tmp_path):
    import inspect
    import socket

    from flows.backfill import backfill

    assert "database_url" not in inspect.signature(backfill.fn).parameters   # a setting, never a parameter
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, out, err = _run(["backfill", "--data-dir", str(DATA), "--start", "2024-01-01", "--end", "2024-01-03",
                           "--out", str(tmp_path / "out"), "--no-progress",
                           "--database-url", f"postgresql+psycopg2://u:bf-pw-7071@127.0.0.1:{port}/x"], capsys)
    assert code == 2 and "bf-pw-7071" not in out + err
    assert f"error: database postgresql+psycopg2://***:***@127.0.0.1:{port}/x is unreachable" in err
    assert "ETERNAL_BACKFILL_DATABASE_URL" not in os.environ       # set for the run only


# data import --------------------------------------------------------------------------------
def test_data_import_prints_row_counts_and_reimport_writes_no_duplicates(csv_dir, db_file, capsys):
    code, out, err = _run(["data", "import", str(csv_dir)], capsys)
    assert code == 0
    assert out.splitlines() == ["candles BTC/USDT 1d: 3064 rows written", "candles ETH/USDT 1d: 3064 rows written"]
    assert _count(db_file, "candles") == {"BTC/USDT": 3064, "ETH/USDT": 3064}

    code, out, err = _run(["data", "import", str(csv_dir)], capsys)
    assert code == 0
    assert out.splitlines() == ["candles BTC/USDT 1d: 0 rows written", "candles ETH/USDT 1d: 0 rows written"]
    assert _count(db_file, "candles") == {"BTC/USDT": 3064, "ETH/USDT": 3064}
    # the stored values are the file's
    engine = create_engine(f"sqlite:///{db_file}")
    with engine.connect() as conn:
        row = conn.execute(text("SELECT open, high, low, close FROM candles WHERE symbol='BTC/USDT' "
                                "AND ts LIKE '2021-11-10%'")).one()
    engine.dispose()
    assert tuple(row) == (66947.67, 69000.0, 62822.9, 64882.43)


def test_data_import_of_a_missing_dir_exits_2_naming_it(db_file, capsys, tmp_path):
    missing = tmp_path / "nowhere"
    code, out, err = _run(["data", "import", str(missing)], capsys)
    assert code == 2 and out == ""
    assert err == f"error: data directory {missing} does not exist\n"
    assert not db_file.exists()                  # refused before the database was created


def test_data_import_of_a_dir_without_data_files_exits_2(db_file, capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.csv").write_text("a,b\n1,2\n")
    code, out, err = _run(["data", "import", str(empty)], capsys)
    assert code == 2 and f"no market data files found in {empty}" in err


# data validate ------------------------------------------------------------------------------
def test_data_validate_passes_on_imported_data_then_fails_naming_a_corrupted_row(imported, capsys):
    code, out, err = _run(["data", "validate", "--asof", "2026-01-06"], capsys)
    assert code == 0, err
    assert out == "2 daily series, 0 funding series valid as of 2026-01-06 00:00 UTC: BTC/USDT, ETH/USDT\n"

    engine = create_engine(f"sqlite:///{imported}")
    with engine.begin() as conn:
        changed = conn.execute(text("UPDATE candles SET high = 1 WHERE symbol = 'BTC/USDT' "
                                    "AND ts LIKE '2021-11-10%'")).rowcount
    engine.dispose()
    assert changed == 1

    code, out, err = _run(["data", "validate", "--asof", "2026-01-06"], capsys)
    assert code == 2 and out == ""
    assert "BTC/USDT" in err and "2021-11-10" in err and "high" in err
    assert "ETH/USDT" not in err


def test_data_validate_on_an_empty_database_exits_2_saying_what_to_do(db_file, capsys):
    code, out, err = _run(["data", "validate"], capsys)
    assert code == 2 and "no candles stored" in err and "eternal data import" in err


# data download against the local Bybit emulator ---------------------------------------------
def _read(name: str) -> pd.DataFrame:
    df = pd.read_csv(DATA / name, index_col="timestamp", parse_dates=["timestamp"])
    return df.drop(columns=["symbol"], errors="ignore").astype("float64").loc["2025-11-01":"2026-01-05"]


def test_data_download_stores_the_exchange_rows_since_the_given_day(db_file, monkeypatch, capsys):
    since = pd.Timestamp("2025-12-01", tz="UTC")
    frames = {}
    with BybitStub() as stub:   # the stub's clock is the real one: all its data is in the past
        for asset in ("BTC", "ETH", "SOL"):
            sym = f"{asset}USDT"
            frames["spot", asset] = _read(f"ohlcv_1d_{asset}-USDT_spot.csv")
            frames["perp", asset] = _read(f"ohlcv_1d_{asset}-USDT_perp.csv")
            frames["funding", asset] = _read(f"funding_8h_{sym}_perp.csv")
            stub.set_klines("spot", sym, frames["spot", asset])
            stub.set_klines("linear", sym, frames["perp", asset])
            stub.set_funding("linear", sym, frames["funding", asset])
        monkeypatch.setenv("ETERNAL_EXCHANGE__PUBLIC_URL", stub.url)
        # the CLI's own client, minus ccxt's request pacing (~0.1 s a request) the stub needs not
        real_client, urls = download.make_bybit_public, []

        def unpaced_client(url):
            urls.append(url)
            client = real_client(url)
            client.enableRateLimit = False
            return client

        monkeypatch.setattr(download, "make_bybit_public", unpaced_client)

        code, out, err = _run(["data", "download", "--since", "2025-12-01"], capsys)
        assert code == 0, err
        assert urls == [stub.url]   # ETERNAL_EXCHANGE__PUBLIC_URL reached the client
        assert stub.counts["/v5/market/kline"] > 0 and not stub.unknown

        today = pd.Timestamp(datetime.now(UTC)).floor("D")
        want_candles, want_funding = {}, {}
        for asset in ("BTC", "ETH", "SOL"):
            for kind, symbol in (("spot", f"{asset}/USDT"), ("perp", f"{asset}/USDT:USDT")):
                df = frames[kind, asset]
                want_candles[symbol] = int(((df.index >= since) & (df.index < today)).sum())
            df = frames["funding", asset]
            want_funding[f"{asset}/USDT:USDT"] = int((df.index >= since).sum())
        assert want_candles["BTC/USDT"] == 36   # 2025-12-01 .. 2026-01-05
        assert _count(db_file, "candles") == want_candles
        assert _count(db_file, "funding_rates") == want_funding
        for symbol, n in want_candles.items():
            assert f"{symbol} 1d: {n} rows written" in out
        for symbol, n in want_funding.items():
            assert f"{symbol} funding: {n} rows written" in out

        # a second download resumes after the stored rows: nothing new
        code, out, err = _run(["data", "download", "--since", "2025-12-01"], capsys)
        assert code == 0, err
        assert set(line.rsplit(": ", 1)[1] for line in out.splitlines()) == {"0 rows written"}
        assert _count(db_file, "candles") == want_candles


# status -------------------------------------------------------------------------------------
def test_status_on_an_empty_database_says_there_is_no_portfolio_yet(db_file, capsys):
    code, out, err = _run(["status"], capsys)
    assert code == 0
    assert out.splitlines() == [f"mode: paper   database: sqlite:///{db_file}",
                                "no portfolio yet: run `eternal run daily` to start one"]


@pytest.mark.parametrize("url, said", [
    ("garbage://x", "--database-url='garbage://x' cannot be used"),
    ("postgresql+psycopg2://bob:hunter2@127.0.0.1:1/db", "Start it or fix --database-url."),
])
def test_a_bad_backfill_database_url_is_one_line_naming_the_flag_typed(url, said, capsys, tmp_path):
    code, out, err = _run(["backfill", "--engines", "core", "--start", "2023-01-01", "--end", "2023-02-01",
                           "--data-dir", str(DATA), "--out", str(tmp_path / "out"), "--database-url", url,
                           "--no-progress"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and said in lines[0], err
    assert "hunter2" not in err and "ETERNAL_DATABASE_URL" not in err
    assert not (tmp_path / "out").exists()          # refused before --out was made (it held a lock file)


LATE_INTERRUPTS = """
import contextlib, os, signal, sys, weakref
import eternal.cli as c

out, how = sys.argv[1], sys.argv[2]
real_backfill, real_setting = c._backfill, c._setting

def backfill(*args, **kwargs):          # the job, then an interrupt Python drops: raised in a weakref
    summary = real_backfill(*args, **kwargs)            # callback, as the job's processes are freed
    class Freed: pass
    freed = Freed()
    watch = weakref.ref(freed, lambda _: os.kill(os.getpid(), signal.SIGINT))
    del freed
    return summary if watch() is None else None

@contextlib.contextmanager
def setting(*args):                     # the interrupt lands as the setting is restored, the job done
    with real_setting(*args):
        yield
    os.kill(os.getpid(), signal.SIGTERM)

def two_at_once():                      # Ctrl-C and a TERM both received before Python runs a handler
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})

if how == "dropped":
    c._backfill = backfill
elif how == "restoring":
    c._setting = setting
else:
    c.print_summary = lambda *_: two_at_once()
rc = c.main(["backfill", "--engines", "core", "--start", "2023-01-01", "--end", "2023-02-01",
             "--data-dir", sys.argv[3], "--out", out, "--no-progress"])
print("rc", rc, sorted(os.listdir(out)))
"""


@pytest.mark.parametrize("how", ["dropped", "restoring", "two-at-once"])
def test_an_interrupt_once_the_backfill_is_done_says_its_outputs_are_complete(how, tmp_path, shared_data):
    """Three interrupts a fresh user found in a backfill's last milliseconds, each once its job had
    written everything: one Python dropped (raised in a weakref callback while the job's
    processes were freed: exit 0 after a traceback), one landing as the --database-url setting was
    restored (exit 130 with "nothing of this backfill stays", every output there), and Ctrl-C with
    a TERM 2 ms later ("OSError: Signal 15 ignored due to race condition" above the line). Each
    now ends with exit 130 and the one line saying the outputs are complete, which they are."""
    done = subprocess.run([sys.executable, "-c", LATE_INTERRUPTS, str(tmp_path / "out"), how, str(shared_data)],
                          capture_output=True, text=True, timeout=300)
    assert done.stderr.strip() == (f"error: interrupted after the backfill finished: its outputs in "
                                   f"{tmp_path / 'out'} are complete"), done.stderr
    assert done.stdout.splitlines()[-1] == ("rc 130 ['.backfill.lock', 'backfill.db', 'backfill.db.schema.lock', "
                                            "'drawdown.png', 'equity.csv', 'equity.png', 'events.csv', 'report.md', "
                                            "'sleeves.png', 'summary.json', 'trades.csv']"), done.stdout


def test_a_backfill_under_the_console_script_ignores_a_late_ctrl_c_until_it_exits():
    """Ctrl-C pressed several times: the first interrupts, the others are ignored while the backfill
    cleans up, and still once its command has returned, while the console script closes the
    database and exits (before, the default handler came back there: a KeyboardInterrupt
    traceback and exit -2 in about 6 runs of 20). Called in process, main() gives the caller's
    handlers back."""
    code = ("import signal, sys, eternal.cli as c\n"
            "for ending in (False, True):\n"
            "    c._ENDING = ending\n"
            "    rc = c.main(['backfill', '--engines', ' , '])\n"
            "    print(rc, signal.getsignal(signal.SIGINT) is (c._ignore if ending else signal.default_int_handler),\n"
            "          signal.getsignal(signal.SIGTERM) is (c._ignore if ending else signal.SIG_DFL))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "True", "True", "2", "True", "True"], done.stdout + done.stderr


INTERRUPTED_IN_THE_POOL = """
import os, signal, sys
from sqlalchemy import event, text
from eternal import cli
from eternal.store.db import connect

cli._interrupt_on_signals()
engine = connect(sys.argv[1], migrate=False)
# the interrupt lands while the pool resets a connection given back to it (as a Ctrl-C did once
# during a backfill's ledger save)
event.listen(engine.pool, "reset", lambda *a: os.kill(os.getpid(), signal.SIGINT))
try:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
"""


def test_an_interrupt_landing_in_sqlalchemys_pool_prints_no_traceback(tmp_path):
    """SIGINT or SIGTERM during a backfill: the CLI's one line, not SQLAlchemy's "Exception during
    reset or similar" and its traceback above it (seen once when Ctrl-C landed while the ledger's
    connection went back to its pool)."""
    import sys

    done = subprocess.run([sys.executable, "-c", INTERRUPTED_IN_THE_POOL, f"sqlite:///{tmp_path / 'l.db'}"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "interrupted"


@pytest.mark.parametrize("argv", [["backfill", "--start", "2021-01-01", "--end", "2021-06-01", "--no-progress"],
                                  ["run", "daily", "--asof", "2026-01-03"]])
def test_a_configured_prefect_server_that_does_not_answer_is_one_line_before_anything_runs(argv, tmp_path,
                                                                                            shared_data,
                                                                                            prefect_harness):
    """PREFECT_API_URL set, its server down, or a URL that answers but is no Prefect API (the
    server's root, without /api): "RuntimeError: Failed to reach API" came after the backfill's job
    had run, its outputs left behind a failed command (fresh users' findings). Now one line saying
    what to do, exit 2, nothing written."""
    import socket

    from prefect.settings import PREFECT_API_URL

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                      # closed again: nothing answers there
    root = PREFECT_API_URL.value().removesuffix("/api")
    what = ("start it (prefect server start) or correct PREFECT_API_URL, or unset it (and the Prefect profile's) "
            "to run without Prefect")
    for url, said in ((f"http://127.0.0.1:{port}/api", f"error: the Prefect server at http://127.0.0.1:{port}/api "
                       f"does not answer ([Errno 111] Connection refused): {what}"),
                      (root, f"error: {root} is not a Prefect API that answers (HTTP 404 at /health): {what}")):
        out = tmp_path / "out"
        extra = ["--data-dir", str(shared_data), "--out", str(out)] if argv[0] == "backfill" else []
        done = _script(*argv, *extra, PREFECT_API_URL=url, PREFECT_HOME=str(tmp_path / "prefect-home"),
                       ETERNAL_DATA_DIR=str(shared_data), ETERNAL_DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}")
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip() == said
        assert not out.exists() and not (tmp_path / "ledger.db").exists()


def test_a_refused_backfill_as_a_flow_run_is_one_line_naming_what_the_user_typed(tmp_path, shared_data,
                                                                                  prefect_harness):
    """With a Prefect server configured, a refusal printed Prefect's report of the failed run (30
    lines of traceback) above the CLI's line, and named ETERNAL_DATABASE_URL for a --database-url
    (a fresh user's findings): Prefect's console handlers were looked for before Prefect had set
    its logging up, so none was quietened."""
    from prefect.settings import PREFECT_API_URL

    (tmp_path / "afile").write_text("not a directory")
    env = {"PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_HOME": str(tmp_path / "prefect-home")}
    common = ["backfill", "--start", "2023-01-01", "--end", "2023-02-01", "--no-progress", "--data-dir", str(shared_data)]
    done = _script(*common, "--out", str(tmp_path / "afile"), **env)
    assert done.returncode == 2 and done.stderr == (f"error: --out {tmp_path / 'afile'} is a file, not a directory: "
                                                    "choose a directory for the outputs\n")
    done = _script(*common, "--out", str(tmp_path / "out"), "--database-url", "postgresql://u:pw@127.0.0.1:1/x", **env)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "Start it or fix --database-url" in done.stderr and "pw" not in done.stderr


def test_a_rerun_refused_for_its_ledger_leaves_the_previous_runs_outputs(tmp_path, shared_data):
    """Bad input never half-applies: a rerun into an --out holding a finished backfill, refused
    because its --database-url ledger already holds a portfolio, removed that run's report.md,
    summary.json, charts and CSVs first (a fresh user's finding). Now refused before anything goes."""
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    common = ["backfill", "--engines", "trend-1", "--start", "2024-01-01", "--end", "2024-02-01", "--no-progress",
              "--data-dir", str(shared_data), "--out", str(tmp_path / "out"), "--database-url", ledger]
    first = _script(*common)
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir() if p.is_file()}
    again = _script(*common)
    assert again.returncode == 2 and again.stderr.startswith("error: sqlite:///") and "already holds a portfolio" in again.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir() if p.is_file()} == before
