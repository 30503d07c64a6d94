"""A parameter sweep: the same backfill (`eternal.replay.run_backfill`) once per point of a grid of
settings, over one window, and its results as one table and a heatmap.

A grid file (YAML, JSON or TOML) names the window and the settings to vary, by their names in
`eternal.config.Settings` (`group.field`, as ETERNAL_GROUP__FIELD):

    engines: trend-1            # as `eternal backfill --engines` (empty: the whole portfolio)
    start: 2023-01-01           # UTC; empty: the first day every point's warm-up allows
    end: 2024-01-01             # exclusive; empty: after the data's last day
    capital: 100000             # USDT; empty: ETERNAL_INITIAL_CAPITAL
    monthly_deposit_usdt: 0
    grid:
      trend_1.fast_sma: [40, 50, 60]
      trend_1.slow_sma: [150, 200, 250]

Everything is checked before any point runs (`check_sweep`): an unknown key or parameter, a value
the settings model refuses, an empty grid, a parameter no selected engine reads, a window outside
the data for any point. A point is replayed from plain data (`point_settings`: the effective
settings with the point applied, no secret in them), so it gives the same result on any worker.
"""
from __future__ import annotations

import itertools
import json
import math
import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from eternal.config import Settings
from eternal.data.csv_files import DataSet
from eternal.errors import ConfigError, EternalError
from eternal.models import Sleeve, utc

METRICS = ("cagr", "max_drawdown", "sharpe")
"""What a heatmap can show (fractions, except the Sharpe ratio)."""
TABLE_METRICS = ("final_equity", "total_return", "cagr", "max_drawdown", "sharpe", "trades", "fees")
"""The columns of `sweep.csv` after the parameters: `eternal.replay.summarise`'s figures."""

ENGINE_GROUPS = {"core": Sleeve.CORE, "trend_1": Sleeve.TREND_1, "trend_2": Sleeve.TREND_2,
                 "funding": Sleeve.FUNDING, "tactical": Sleeve.TACTICAL}
PORTFOLIO_GROUPS = ("weights", "allocation", "risk")
"""Read only by a whole-portfolio replay (a partial selection has no orchestration, no breakers)."""
SWEPT_GROUPS = (*ENGINE_GROUPS, "fees", *PORTFOLIO_GROUPS)
"""The settings a grid may vary: what a replay reads. Never mode, URLs, keys or alert settings."""

NOT_SHIPPED: dict[str, Any] = {"database_url": True, "backfill_database_url": True, "exchange": True,
                               "bybit": True, "alert_urls": True, "data": {"fear_greed_url"}}
"""Settings a point never carries to a worker: credentials, and nothing a replay reads."""


def _day(value: Any) -> Any:
    if value is None or value == "":
        return None
    try:
        return utc(value if not isinstance(value, str) else value.strip())
    except (TypeError, ValueError):
        return value          # pydantic says what is wrong with it


class SweepSpec(BaseModel):
    """A grid file's content. `grid`: parameter (`group.field`) -> the values it takes."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    engines: str | None = None
    start: Annotated[datetime | None, BeforeValidator(_day)] = None
    end: Annotated[datetime | None, BeforeValidator(_day)] = None
    capital: float | None = Field(None, gt=0)
    monthly_deposit_usdt: float = Field(0.0, ge=0)
    grid: dict[str, list[Any]]


@dataclass(frozen=True)
class SweepPlan:
    """A checked sweep: the window every point replays, and each point with its settings."""

    params: tuple[str, ...]
    points: list[dict[str, Any]]           # parameter -> value, in grid order
    settings: list[dict]                   # per point: `Settings` as plain data, no secrets
    sleeves: tuple[Sleeve, ...]
    start: datetime
    end: datetime
    capital: float
    monthly_deposit_usdt: float


def read_grid(path: Path | str) -> dict:
    """A grid file as a mapping (by its suffix: .yaml/.yml, .json, .toml), or ConfigError in one line."""
    path = Path(path)
    kind = {".yaml": "YAML", ".yml": "YAML", ".json": "JSON", ".toml": "TOML"}.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(f"--grid {path}: give a .yaml, .yml, .json or .toml file")
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"--grid {path}: cannot be read ({exc.strerror or exc})") from None
    try:
        if kind == "YAML":
            import yaml

            raw = yaml.safe_load(text)
        elif kind == "JSON":
            raw = json.loads(text)
        else:
            raw = tomllib.loads(text)
    except Exception as exc:  # each parser has its own error class; the message says where
        raise ConfigError(f"--grid {path}: not valid {kind}: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--grid {path}: a mapping with a `grid` key is expected, got {type(raw).__name__}")
    return raw


def parse_spec(raw: dict, source: str = "grid") -> SweepSpec:
    """`raw` (a grid file's mapping, or a flow's parameters) as a SweepSpec, or ConfigError in one line."""
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "the file"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"not a sweep key (keys: {', '.join(SweepSpec.model_fields)})"
        elif err["type"] == "missing":
            msg = "missing: give `grid: {parameter: [values, ...]}`"
        else:
            msg = f"{msg}, got {err.get('input')!r}"
        raise ConfigError(f"{source}: {where}: {msg}") from None


def points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every combination of the grid's values, the first parameter varying slowest."""
    names = list(spec.grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(spec.grid[n] for n in names))]


def shipped(settings: Settings) -> dict:
    """`settings` as plain data without credentials: what a point carries to a worker."""
    return settings.model_dump(mode="json", exclude=NOT_SHIPPED)


def point_settings(base: dict, point: dict[str, Any]) -> dict:
    """`base` (from `shipped`) with each `group.field` of `point` set; checked by the settings
    model (ConfigError naming the parameter and value it refuses)."""
    values = json.loads(json.dumps(base))
    for name, value in point.items():
        *groups, leaf = name.split(".")
        node = values
        for g in groups:
            node = node[g]
        node[leaf] = value
    try:
        Settings.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        at = ".".join(str(p) for p in err["loc"])
        named = next((n for n in point if at == n or at.startswith(n + ".")), None)
        shown = f"{named}={point[named]!r}" if named else ", ".join(f"{k}={v!r}" for k, v in point.items())
        raise ConfigError(f"grid: {shown}: {msg}") from None
    return values


def settings_of(shipped_settings: dict) -> Settings:
    """A point's settings as the model (on a worker): every replayed field comes from the point."""
    return Settings.model_validate(shipped_settings)


def check_params(spec: SweepSpec, base: dict, sleeves: tuple[Sleeve, ...]) -> None:
    """Each parameter names a field a replay of `sleeves` reads, with at least one distinct value."""
    if not spec.grid:
        raise ConfigError("grid: empty: give at least one parameter and its values, e.g. "
                          "`grid: {trend_1.fast_sma: [40, 50, 60]}`")
    whole = set(sleeves) == set(Sleeve)
    for name, values in spec.grid.items():
        parts = name.split(".")
        if parts[0] not in SWEPT_GROUPS:
            raise ConfigError(f"grid: unknown parameter {name!r}: name a setting as group.field, the groups being "
                              f"{', '.join(SWEPT_GROUPS)} (e.g. trend_1.fast_sma)")
        node: Any = base
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                where = ".".join(parts[:i])
                known = ", ".join(node) if isinstance(node, dict) else "no fields (it is a value)"
                raise ConfigError(f"grid: unknown parameter {name!r}: {where} has {known}")
            node = node[part]
        if isinstance(node, dict):
            raise ConfigError(f"grid: {name!r} is a group: name one of its fields ({', '.join(node)})")
        sleeve = ENGINE_GROUPS.get(parts[0])
        if (sleeve is not None and sleeve not in sleeves) or (parts[0] in PORTFOLIO_GROUPS and not whole):
            raise ConfigError(f"grid: {name} changes nothing in a replay of {', '.join(s.value for s in sleeves)}"
                              f": {'select ' + sleeve.value if sleeve else 'select every engine'} in `engines` "
                              "or drop the parameter")
        if not values:
            raise ConfigError(f"grid: {name}: no values: give a list of at least one")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise ConfigError(f"grid: {name}: a value is given twice in {values!r}")


def check_sweep(spec: SweepSpec, settings: Settings, data: DataSet) -> SweepPlan:
    """Every refusal before any point runs (ConfigError or BackfillError, one line each): the
    parameters and their values, the engines, the amounts, and the window for every point (a longer
    SMA needs a longer warm-up). Without `start`, every point starts on the first day all of them allow."""
    from eternal.market import check_history
    from eternal.replay import BackfillError, check_window, parse_sleeves

    sleeves = parse_sleeves(spec.engines)
    base = shipped(settings)
    check_params(spec, base, sleeves)
    capital = settings.initial_capital if spec.capital is None else spec.capital
    pts = points(spec)
    chosen = [point_settings(base, p) for p in pts]
    windows = []
    for p, values in zip(pts, chosen):
        try:
            windows.append(check_window(data, settings_of(values), sleeves, spec.start, spec.end))
        except BackfillError as exc:
            raise BackfillError(f"grid point {_label(p)}: {exc}".replace("--start", "start").replace(
                "--end", "end")) from None
    start, end = max(w[0] for w in windows), min(w[1] for w in windows)
    if start >= end:
        raise BackfillError(f"grid: no day every point can replay (their warm-ups end by {start:%Y-%m-%d}, "
                            f"the window ends {end:%Y-%m-%d}): give an earlier start or a later end")
    for p, values in zip(pts, chosen):
        try:
            check_history(data, settings_of(values), sleeves, start)
        except EternalError as exc:
            raise type(exc)(f"grid point {_label(p)}: {exc}") from None
    return SweepPlan(tuple(spec.grid), pts, chosen, sleeves, start, end, capital, spec.monthly_deposit_usdt)


def _label(point: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in point.items())


def run_point(data: DataSet, shipped_settings: dict, point: dict[str, Any], sleeves: tuple[Sleeve, ...],
              start: datetime, end: datetime, capital: float, monthly_deposit_usdt: float = 0.0) -> dict:
    """One grid point: the backfill in memory (no database, no files) -> the point's parameters
    and `TABLE_METRICS` (one row of the table). Pure in its inputs: the same on any worker."""
    from eternal.replay import run_backfill

    result = run_backfill(data, settings_of(shipped_settings), start=start, end=end, sleeves=sleeves,
                          capital=capital, progress=False, monthly_deposit=monthly_deposit_usdt,
                          compare_breakers=False)
    return {**point, **{k: result.summary[k] for k in TABLE_METRICS}}


def table(rows: list[dict], params: tuple[str, ...]) -> pd.DataFrame:
    """The rows (from `run_point`) as one frame: the parameters, then `TABLE_METRICS`."""
    return pd.DataFrame(rows, columns=[*params, *TABLE_METRICS])


def heatmap_frame(results: pd.DataFrame, params: tuple[str, ...], metric: str) -> tuple[pd.DataFrame, str]:
    """The metric with the first parameter down the rows and the second across (one parameter: one
    row). With more parameters, each cell is the best value over the others (highest CAGR or
    Sharpe, smallest drawdown). Returns (frame, what a cell shows)."""
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric!r}: choose one of {', '.join(METRICS)}")
    frame = results.copy()
    frame[metric] = pd.to_numeric(frame[metric], errors="coerce")   # None (no CAGR, no Sharpe) -> NaN
    rows = params[0]
    cols = params[1] if len(params) > 1 else None
    if cols is None:
        pivot = frame.set_index(rows)[[metric]].T
        return pivot, metric
    pivot = frame.pivot_table(index=rows, columns=cols, values=metric, aggfunc="max", dropna=False)
    shown = metric if len(params) == 2 else f"best {metric} over {', '.join(params[2:])}"
    return pivot, shown


def write_heatmap(results: pd.DataFrame, params: tuple[str, ...], metric: str, path: Path) -> Path:
    """The heatmap PNG of `metric` (matplotlib's Agg backend, no display) at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pivot, shown = heatmap_frame(results, params, metric)
    values = pivot.to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * values.shape[1], 1.4 + 0.8 * values.shape[0]))
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    ax.set_xticks(range(values.shape[1]), [str(c) for c in pivot.columns])
    ax.set_yticks(range(values.shape[0]), [str(i) for i in pivot.index])
    ax.set_xlabel(params[1] if len(params) > 1 else "")
    ax.set_ylabel(params[0] if len(params) > 1 else "")
    fmt = "{:.2f}" if metric == "sharpe" else "{:.1%}"
    for (i, j), v in pd.DataFrame(values).stack(future_stack=True).items():
        ax.text(j, i, "n/a" if math.isnan(v) else fmt.format(v), ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(image, ax=ax, label=shown)
    ax.set_title(shown)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
