"""The backfill report's charts' child (`eternal.aside.Primed`), started from a module that imports
neither pandas nor matplotlib: `eternal backfill` starts it before its own imports, so
matplotlib's import and warm-up (about 0.6 s of CPU) run on the idle core, not beside the two
replays; `tasks.report.Charts` starts it the same way when it is handed none."""
from __future__ import annotations

from pathlib import Path


def prime(out_dir: Path):
    """The charts' child, started now: it imports matplotlib and draws a warm-up chart
    (`tasks.report._load_charts`), then draws the report it is sent into `out_dir`. It writes
    nothing before that; whoever starts it cancels it however the backfill ends. Not daemonic: it
    forks two of the charts aside itself (`tasks.report.charts`)."""
    from eternal.aside import Primed

    return Primed(_ready, _draw, out_dir, name="the charts", daemon=False)


def _ready(out_dir: Path) -> Path:
    from tasks.report import _load_charts

    return _load_charts(out_dir)


def _draw(out_dir: Path, report) -> None:
    from tasks.report import charts

    charts(report, out_dir)
