"""Issue 14: the README's examples all run as written on the shipped data.

Every command line of README.md's ```sh blocks is read from the README itself (continuation lines
joined, a `# or ...` alternative in a comment taken as a line of its own, `VAR=value` before a
command set for that command), then run in README order, as written, in a fresh directory beside
which `../shared/data` is the shipped data, on one temporary SQLite ledger
(`ETERNAL_DATABASE_URL`). The order matters: `data import` comes before `run daily`, the deposit
before the close that splits it, `halt` before `resume`.

Optional parts: `[--asof 2025-12-01T00:05Z]` (an example value) is run, `[--capital N]` (a word in
capitals: a value of yours) and `[--engines core|trend-1|...]` (a choice) are left out, as the
README says.

Not run: `make demo` and `make test` (the first replays all history for minutes, the second is
this suite), and `prefect server start`, `make server`, `make serve` (servers that never end; they
are in the README's prose, not in its code blocks, so the parser never meets them).

`eternal` is the console script of `eternal.cli` (pyproject.toml), whose `main` is called in this process
with the README's arguments (a subprocess would start an ephemeral Prefect server per command; the
session's test server stands in for it). No test touches the network: Bybit's and alternative.me's
URLs point at a closed local port (`data download` and `data fear-greed` must refuse in one line
naming the offline way), and any other host is refused at once (conftest's `loopback_only`, and
name lookups here), so nothing can hang on a missing network.
"""
from __future__ import annotations

import json
import re
import shlex
import socket
import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from eternal.models import last_closed_day, utc
from tests.flow_support import run_cli

ROOT = Path(__file__).resolve().parents[1]
NOT_RUN = {"make": "`make demo` replays all history (minutes) and `make test` is this suite"}


@dataclass
class Line:
    text: str                                   # as the README writes it
    argv: list[str]                             # what runs: the optional parts resolved
    env: dict[str, str] = field(default_factory=dict)


def _optional(match: re.Match) -> str:
    """`[--asof 2024-01-01]` -> its contents; `[--capital N]` or `[--engines a|b]` -> nothing."""
    inner = match.group(1)
    return "" if "|" in inner or re.search(r"(?<![\w-])[A-Z]+(?![\w-])", inner) else inner


def readme_lines(text: str) -> list[Line]:
    """Every command line of the README's ```sh blocks, in order."""
    lines = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M):
        for raw in re.sub(r"\\\n\s*", " ", block).splitlines():
            if not raw.strip():
                continue
            code, _, comment = raw.partition(" #")          # a `#` is only ever a comment there
            alternatives = [code.strip()]
            if m := re.search(r"\bor ((?:[A-Z_]+=\S+ )*eternal .*)$", comment.strip()):
                alternatives.append(m.group(1))
            for cmd in alternatives:
                words = shlex.split(re.sub(r"\[([^\[\]]*)\]", _optional, cmd))
                env = {}
                while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
                    k, _, v = words.pop(0).partition("=")
                    env[k] = v
                lines.append(Line(cmd, words, env))
    return lines


def test_the_parser_resolves_the_readmes_notation():
    lines = readme_lines((ROOT / "README.md").read_text())
    by_text = {ln.text: ln for ln in lines}
    backfill = next(ln for ln in lines if ln.argv[1:2] == ["backfill"])
    assert backfill.argv == ["eternal", "backfill", "--start", "2023-01-01", "--end", "2025-01-01",
                             "--data-dir", "../shared/data", "--out", "out/backfill"]
    alt = next(ln for ln in lines if ln.env)
    assert alt.env == {"ETERNAL_DATA_DIR": "../shared/data"} and alt.argv[:3] == ["eternal", "run", "daily"]
    assert not any("[" in w or "|" in w for ln in lines for w in ln.argv)
    assert {ln.argv[0] for ln in lines} == {"eternal", "make"}
    assert "make demo" in by_text and "make test" in by_text
    # the console script the README calls `eternal` is the function run here
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, func = scripts["eternal"].partition(":")      # main, or a wrapper of main (main's `entry`)
    assert module == "eternal.cli" and func in ("main", "entry")


@pytest.fixture
def offline(monkeypatch):
    """Name lookups of any host but this one fail at once (connections: conftest's loopback_only)."""
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise socket.gaierror(socket.EAI_NONAME, f"offline test: no lookup of {host!r}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setenv("ETERNAL_EXCHANGE__PUBLIC_URL", "http://127.0.0.1:9")       # nothing listens there
    monkeypatch.setenv("ETERNAL_DATA__FEAR_GREED_URL", "http://127.0.0.1:9/fng/")
    monkeypatch.setenv("ETERNAL_DATA__FEAR_GREED_RETRIES", "0")                     # refused is refused
    monkeypatch.delenv("ETERNAL_DATA__REFRESH_BEFORE_CYCLE", raising=False)         # the default: refresh on


def _asof(argv: list[str]) -> datetime | None:
    return utc(argv[argv.index("--asof") + 1]) if "--asof" in argv else None


def _check(ln: Line, code: int, out: str, err: str, ledger, seen: set[str]) -> None:
    """What each command must have said, on top of its exit status."""
    a, where = ln.argv[1:], f"README line `{ln.text}`"
    if a[:2] in (["data", "download"], ["data", "fear-greed"]):      # need the internet: refused, offline way named
        lines = [x for x in err.splitlines() if x.strip()]
        assert code == 2 and len(lines) == 1, (where, code, err)
        assert lines[0].startswith("error: no internet:") and "eternal data import DIR" in lines[0], (where, err)
        assert "Traceback" not in err
        return
    assert code == 0, (where, code, err[-2000:])
    if a[:2] == ["data", "import"]:
        written = [int(n) for n in re.findall(r"^(?:candles|funding|fear_greed).*: (\d+) rows written$", out, re.M)]
        assert len(written) == 10, (where, out)            # 6 daily series, 3 funding, Fear & Greed
        assert (sum(written) == 0) == (ln.text in seen), (where, out)     # a re-import is a no-op
    elif a[:2] == ["data", "validate"]:
        assert f"valid as of {_asof(a):%Y-%m-%d %H:%M} UTC" in out and "BTC/USDT" in out, (where, out)
    elif a[:2] == ["run", "daily"]:
        report = json.loads(out)
        assert report["closes"][-1] == f"{last_closed_day(_asof(a)):%Y-%m-%d}", (where, report["closes"])
        assert report["total_equity"] > 0 and not report["halted"], (where, report)
    elif a[:2] == ["run", "funding"]:
        report = json.loads(out)
        asof = _asof(a)
        slot = asof.replace(hour=asof.hour // 8 * 8, minute=0)
        assert f"to the funding settlement {slot:%Y-%m-%d %H:%M}Z" in report["line"], (where, report["line"])
        assert report["payments"] > 0, (where, report)
    elif a[0] == "deposit":
        amount, ref = float(a[1]), a[a.index("--reference") + 1]
        assert f"deposit {ref}: {amount:,.2f} USDT waits for the next daily close" in out, (where, out)
        assert [(d["reference"], d["usdt"]) for d in ledger().deposits] == [(ref, amount)]
    elif a[0] == "rebalance":
        day = last_closed_day(_asof(a))
        assert f"weights after the run, at the close of {day:%Y-%m-%d}" in out, (where, out)
        weights = re.findall(r"^(core|trend-1|trend-2|funding|tactical)\s+[\d,.]+\s+([\d.]+)%\s+([\d.]+)%", out, re.M)
        assert len(weights) == 5 and sum(float(w) for _, w, _ in weights) == pytest.approx(100, abs=0.03), out
        assert not ledger().deposits, "the deposit is split at the first close after it"
    elif a[0] == "status":
        assert re.search(r"^portfolio [\d,]+\.\d\d USDT", out, re.M) and "valued at the close of" in out, (where, out)
        assert "of 101,000.00 put in" in out, (where, out)      # the starting capital and the README's deposit
    elif a[0] == "risk":
        assert out.startswith("breaker level: normal") and "unit value" in out, (where, out)
    elif a[0] == "halt":
        assert "kill switch" in out and ledger().risk.kill_switch is not None, (where, out)
    elif a[0] == "resume":
        assert ledger().risk.kill_switch is None, (where, out)
    elif a[0] == "backfill":
        out_dir = Path(a[a.index("--out") + 1])
        window = f"{a[a.index('--start') + 1]} .. {a[a.index('--end') + 1]}"
        assert re.search(rf"^window\s+{re.escape(window)}", out, re.M) and "final equity" in out, (where, out)
        assert (out_dir / "report.md").read_text().startswith("#")
    elif a[0] == "sweep":
        out_dir = Path(a[a.index("--out") + 1]) if "--out" in a else Path("out/sweep")
        table = (out_dir / "sweep.csv").read_text().splitlines()
        assert len(table) == 1 + 4 and (out_dir / "heatmap.png").stat().st_size > 0, (where, table)   # 2 x 2 points
    elif a[0] == "report":
        assert re.match(r"total return [+-][\d.]+%, max drawdown -?[\d.]+%; \w", out), (where, out)
        assert "written:" in out and (Path(a[1]) / "equity.png").stat().st_size > 0
    elif a[:2] == ["config", "show"]:
        shown = json.loads(out)
        assert shown["database_url"].startswith("sqlite:///"), shown
    else:
        raise AssertionError(f"{where}: no check for it in tests/test_readme.py: add one")


@pytest.mark.flow
def test_every_readme_command_runs_as_written(tmp_path, monkeypatch, shared_data, prefect_harness, offline):
    repo = tmp_path / "checkout"
    repo.mkdir()
    import shutil

    shutil.copytree(ROOT / "examples", repo / "examples")          # the example files the README names
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(shared_data)       # ../shared/data, as beside a checkout
    monkeypatch.chdir(repo)
    url = f"sqlite:///{tmp_path / 'eternal.db'}"
    monkeypatch.setenv("ETERNAL_DATABASE_URL", url)
    monkeypatch.delenv("ETERNAL_DATA_DIR", raising=False)

    from eternal.store.db import connect
    from eternal.store.driver_store import SqlLedger

    def ledger():
        return SqlLedger(connect(url)).load()

    lines = readme_lines((ROOT / "README.md").read_text())
    ran, skipped = [], []
    for ln in lines:
        if ln.argv[0] in NOT_RUN:
            skipped.append(ln.text)
            continue
        assert ln.argv[0] == "eternal", f"README line `{ln.text}`: not an eternal command, not known to this test"
        with monkeypatch.context() as m:
            for k, v in ln.env.items():
                m.setenv(k, v)
            code, out, err = run_cli(ln.argv[1:])
        _check(ln, code, out, err, ledger, set(ran))
        ran.append(ln.text)
    assert skipped == ["make demo", "make test"]
    # every command of the CLI's reference appears (and ran): the offline block's two lines too
    assert len(ran) == len(lines) - 2 and sum(ln.startswith("eternal run daily") or "eternal run daily" in ln
                                              for ln in ran) == 3
    assert ledger().clock.startswith("2026-01-04T00:00:00")     # the last line's run
