"""Great Expectations checks run on market data before every trading decision.

`validate_market_data` checks every candle and funding series of a cycle, collects every failure
across all of them, and raises one `DataQualityError` (a `StaleDataError` when staleness is the
only problem) naming each series, the expectation and the offending timestamps. Nothing is traded on
data that fails.

How it uses GE (1.x): one ephemeral context, one pandas data source, one whole-dataframe batch per
kind of data. All candle series are stacked into one frame with a `series` column (all funding
series into another), so a cycle costs two suite runs whatever the number of series: GE spends
~10 ms of bookkeeping per expectation per run, far more than the checks themselves. Rules that are
not a plain column check (gap in days, close-to-close move, max(open, close), which row is the last)
are computed per series with pandas as derived columns, then checked by GE expectations, so every
rule reports its offending rows the same way. GE is imported and set up lazily on the first
validation that needs it and reused: the import alone costs ~3 s. The rules are written once as
data (`NotNull`, `Between`, `PairGreaterThan`, `Unique`, GE's own expectations); numpy evaluates
them first, and GE runs (for its report of the offending rows) only when one fails, or always with
`always_ge` (`eternal data validate`).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from eternal.errors import DataQualityError, StaleDataError
from eternal.models import last_closed_day

# No usage statistics, whatever the GE version (1.24 ships none): set before GE is first imported,
# which this module does lazily in _gx(); nothing imported above imports it.
os.environ["GX_ANALYTICS_ENABLED"] = "False"

CANDLE_COLUMNS = ("open", "high", "low", "close", "volume")
PRICE_COLUMNS = ("open", "high", "low", "close")
FUNDING_COLUMNS = ("funding_rate",)
FEAR_GREED_COLUMNS = ("value",)
FEAR_GREED = "Fear & Greed"   # the series name of the index in failures
MAX_FUNDING_GAP = 1.5         # a gap over 1.5 of the series' own settlement interval is an error
MAX_ROWS_SHOWN = 10
DAY = pd.Timedelta(days=1)

# Rule id of staleness: the only failure that makes the error a StaleDataError.
STALE = "last_closed_day"


@dataclass(frozen=True)
class Failure:
    """One expectation that one series failed."""

    series: str  # the mapping key, e.g. "BTC/USDT" or "BTC/USDT:USDT"
    expectation: str  # the rule in words, e.g. "high >= max(open, close)"
    rows: list[str] = field(default_factory=list)  # offending timestamps (ISO), first few only
    count: int = 0  # offending rows in total (a duplicated timestamp is two rows)
    more: int = 0  # offending timestamps not listed in rows
    rule: str = ""  # stable id, e.g. "high_ge_body"
    kind: str = "candles"  # "candles" or "funding"
    detail: str = ""  # why, when the rows alone do not say it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        text = f"{self.series}: {self.expectation} failed"
        if self.rows:
            shown = ", ".join(self.rows)
            if self.more:
                shown += f" and {self.more} more"
            text += f" on {shown} ({self.count} row{'' if self.count == 1 else 's'})"
        if self.detail:
            text += f": {self.detail}"
        return text


@dataclass(frozen=True)
class HistoryNeed:
    """History an engine declares it needs of one series (spec: SMA warm-up, all-time highs).

    `starts_by`: the series must start on or before this UTC day (all-time highs come from the
    whole history). `rows_before`: (day, n): at least n candles before `day` (indicator warm-up
    before the first decision). `why`: who needs it, in words ("SMA 200 warm-up of TREND-1").
    """

    series: str
    why: str
    starts_by: datetime | None = None
    rows_before: tuple[datetime, int] | None = None


def history_problems(candles: Mapping[str, pd.DataFrame], needs: list[HistoryNeed]) -> list[Failure]:
    """The needs the given series do not meet, as failures (rule `history`)."""
    failures = []
    for need in needs:
        data = candles.get(need.series)
        if data is None or not len(data) or not isinstance(data.index, pd.DatetimeIndex):
            continue   # reported as "series has data" or by the shape rules
        first = data.index[0]
        if need.starts_by is not None and first > pd.Timestamp(need.starts_by):
            failures.append(Failure(
                need.series, f"history from {need.starts_by:%Y-%m-%d} ({need.why})", [first.isoformat()], 1,
                rule="history", detail=f"the series starts {first:%Y-%m-%d}: import the full history "
                                        f"(eternal data import DIR)"))
        if need.rows_before is not None:
            day, n = need.rows_before
            have = int((data.index < pd.Timestamp(day)).sum())
            if have < n:
                earliest = first + pd.Timedelta(days=n)
                failures.append(Failure(
                    need.series, f"{n} daily candles before {day:%Y-%m-%d} ({need.why})", [first.isoformat()],
                    1, rule="history", detail=f"it has {have} (from {first:%Y-%m-%d}): start on or after "
                                              f"{earliest:%Y-%m-%d} or add older candles"))
    return failures


def validate_market_data(
    candles: Mapping[str, pd.DataFrame],
    funding: Mapping[str, pd.DataFrame],
    asof: datetime | None,
    *,
    max_daily_move: float = 0.60,
    max_funding_rate: float = 0.03,
    fear_greed: pd.DataFrame | None = None,
    needs: list[HistoryNeed] = (),
    names: Mapping[str, str] | None = None,
    funding_intervals: Mapping[str, float] | None = None,
    always_ge: bool = False,
) -> None:
    """Raise if any series fails its expectations; return None when all data is fit to trade on.

    `candles`: daily OHLCV frames by series name, index `timestamp` = candle open time (UTC).
    `funding`: frames with a `funding_rate` column by series name, index = settlement time (UTC).
    `asof`: the cycle's time; the last candle must be `last_closed_day(asof)` and none may follow it
    (slice first). None skips that rule: a replay validates the whole history once, then slices
    per day, which keeps every day fresh by construction.
    `max_daily_move`: bound on |close / previous close - 1| (0.60: above any real BTC/ETH/SOL day
    since 2017, the largest being ~0.51, SOL perp on 2022-11-09).
    `max_funding_rate`: bound on |funding_rate| per settlement (0.03; the real extreme is 0.02).
    `fear_greed`: the index (int `value` 0..100, one row per UTC day, days may be missing).
    `needs`: history the engines need (`HistoryNeed`). `names`: how to call a series in the message
    (the CSV file it came from). `funding_intervals`: hours between settlements per funding series
    (default: the most common gap of the series given); a gap over 1.5 intervals is an error.
    `always_ge`: run the Great Expectations suites even when numpy finds every rule holds (by
    default GE, ~3 s to import, runs only to report what failed; the verdict is the same).

    Raises one DataQualityError (StaleDataError when staleness is the only problem) whose message is
    one line: "data quality failed: <series>: <rule> failed on <timestamps>; <next failure>...".
    """
    expected_last = last_closed_day(asof) if asof is not None else None
    params = {
        "max_funding_gap": MAX_FUNDING_GAP,
        "max_daily_move": max_daily_move,
        "max_funding_rate": max_funding_rate,
        "min_funding_rate": -max_funding_rate,
    }
    labels = {**params}
    if expected_last is not None:
        labels["last_closed_day"] = expected_last.isoformat()

    failures: list[Failure] = history_problems(candles, list(needs))
    groups = [("candles", candles), ("funding", funding)]
    if fear_greed is not None:
        groups.append(("fear_greed", {FEAR_GREED: fear_greed}))
    columns = {"candles": CANDLE_COLUMNS, "funding": FUNDING_COLUMNS, "fear_greed": FEAR_GREED_COLUMNS}
    for kind, series in groups:
        frames = []
        for name, data in series.items():
            problem = _shape_problem(data, columns[kind])
            if problem is not None:
                rule, expectation, detail = problem
                failures.append(
                    Failure(str(name), expectation, rule=rule, kind=kind, detail=detail)
                )
            elif kind == "candles":
                frames.append(_candle_frame(str(name), data, expected_last))
            elif kind == "funding":
                hours = (funding_intervals or {}).get(name)
                frames.append(_funding_frame(str(name), data, hours))
            else:
                frames.append(_fear_greed_frame(str(name), data))
        if frames:
            suite = "candles_fresh" if kind == "candles" and expected_last is not None else kind
            stacked = pd.concat(frames, ignore_index=True)
            failures += _run_suite(suite, kind, stacked, params, labels, always_ge)
    if not failures:
        return

    # Report series by series, in the order given, rules in the order they are written.
    position = {str(name): i for i, name in enumerate([*candles, *funding, FEAR_GREED])}
    failures.sort(key=lambda f: (position.get(f.series, len(position)), f.kind != "candles"))
    names = names or {}
    shown = [replace(f, series=names[f.series]) if f.series in names else f for f in failures]
    message = "data quality failed: " + "; ".join(failure.describe() for failure in shown)
    only_stale = all(failure.rule == STALE for failure in failures)
    error = StaleDataError if only_stale else DataQualityError
    raise error(message, [failure.to_dict() for failure in failures])


# --- frames as GE sees them ----------------------------------------------------------------------


def _shape_problem(data: pd.DataFrame, columns: tuple[str, ...]) -> tuple[str, str, str] | None:
    """What makes a series impossible to check at all (the suites need these to hold)."""
    if data is None or len(data) == 0:
        return "not_empty", "series has data", "no data"
    missing = [column for column in columns if column not in data.columns]
    if missing:
        return "columns", f"columns {', '.join(columns)} present", f"missing {', '.join(missing)}"
    not_numbers = [c for c in columns if not pd.api.types.is_numeric_dtype(data[c].dtype)]
    if not_numbers:
        found = ", ".join(f"{c} is {data[c].dtype}" for c in not_numbers)
        return "numeric", f"columns {', '.join(columns)} are numeric", found
    index = data.index
    if not isinstance(index, pd.DatetimeIndex) or index.tz is None:
        return (
            "utc_index",
            "index is a tz-aware UTC DatetimeIndex of timestamps",
            f"got {type(index).__name__} of {index.dtype}",
        )
    return None


def _candle_frame(name: str, candles: pd.DataFrame, expected_last: datetime | None) -> pd.DataFrame:
    """One series' candles with timestamp as a column and the derived columns the rules check."""
    frame = pd.DataFrame({"series": name, "timestamp": candles.index.tz_convert("UTC")})
    for column in CANDLE_COLUMNS:
        frame[column] = candles[column].to_numpy()
    values = frame[list(CANDLE_COLUMNS)].to_numpy(dtype=float)
    # an infinite price or volume passes "> 0": its own rule (a NaN is the not-null rule's)
    frame["finite"] = (~np.isinf(values).any(axis=1)).astype(float)
    body = frame[["open", "close"]]
    frame["body_high"] = body.max(axis=1, skipna=False)
    frame["body_low"] = body.min(axis=1, skipna=False)
    timestamp = frame["timestamp"]
    frame["seconds_into_day"] = (timestamp - timestamp.dt.floor("D")).dt.total_seconds()
    frame["gap_days"] = timestamp.diff() / DAY
    close = frame["close"]
    frame["abs_daily_move"] = (close / close.shift(1) - 1).abs()
    if expected_last is not None:
        days_past = (timestamp - pd.Timestamp(expected_last)) / DAY
        frame["days_past_last_closed"] = days_past
        # staleness is a property of the last candle only: NaN (ignored by GE) on every other row
        frame["last_candle_days_past"] = float("nan")
        if timestamp.notna().any():
            last = timestamp.idxmax()
            frame.loc[last, "last_candle_days_past"] = days_past[last]
    return frame


def funding_interval_hours(funding: pd.DataFrame) -> float:
    """The series' own settlement interval in hours: the gap that covers most of its time (a few
    shortened intervals, like SOL's 2-hourly settlements in Nov 2022, do not make it 2 h; a few
    holes do not make it 16 h); 8 when the series has no gap to measure."""
    gaps = funding.index.to_series().diff().dropna() / pd.Timedelta(hours=1)
    gaps = gaps[gaps > 0]
    if not len(gaps):
        return 8.0
    return float(gaps.groupby(gaps).sum().idxmax())


def _funding_frame(name: str, funding: pd.DataFrame, interval_hours: float | None) -> pd.DataFrame:
    frame = pd.DataFrame({"series": name, "timestamp": funding.index.tz_convert("UTC")})
    frame["funding_rate"] = funding["funding_rate"].to_numpy()
    frame["gap_hours"] = frame["timestamp"].diff() / pd.Timedelta(hours=1)
    # settlements may come sooner than the interval (SOL every 2 h in Nov 2022), never much later
    interval = interval_hours or funding_interval_hours(funding)
    frame["gap_intervals"] = frame["gap_hours"] / interval
    return frame


def _fear_greed_frame(name: str, index: pd.DataFrame) -> pd.DataFrame:
    frame = pd.DataFrame({"series": name, "timestamp": index.index.tz_convert("UTC")})
    value = pd.to_numeric(index["value"], errors="coerce").astype("float64")
    frame["value"] = value.to_numpy()
    frame["fraction_part"] = (value - value.round()).abs().to_numpy()
    timestamp = frame["timestamp"]
    frame["seconds_into_day"] = (timestamp - timestamp.dt.floor("D")).dt.total_seconds()
    frame["gap_days"] = timestamp.diff() / DAY   # days the index did not publish may be missing
    return frame


# --- Great Expectations, set up once -------------------------------------------------------------

_lock = threading.Lock()  # GE is set up once, and its one data source holds one batch at a time


@functools.cache
def _rules(suite: str) -> list[tuple[str, str, Any]]:
    return {"candles": lambda: _candle_rules(fresh=False), "candles_fresh": lambda: _candle_rules(fresh=True),
            "funding": _funding_rules, "fear_greed": _fear_greed_rules}[suite]()


def _run_suite(
    suite: str, kind: str, frame: pd.DataFrame, params: dict[str, float], labels: dict[str, Any],
    always_ge: bool = False,
) -> list[Failure]:
    # The verdict with numpy first (1-25 ms against GE's ~3 s import and ~10 ms per expectation):
    # GE runs only for its report, when a rule fails (or when asked, `eternal data validate`).
    if not always_ge and all(_holds(check, frame, params) for _, _, check in _rules(suite)):
        return []
    with _lock:
        gx = _gx()
        batch = gx.batch_definition.get_batch(batch_parameters={"dataframe": frame})
        # Pass/fail first (half the cost: GE's bookkeeping of offending rows is most of it), the
        # offending rows only when something failed, which is rare.
        outcome = batch.validate(
            gx.suites[suite], result_format="BOOLEAN_ONLY", expectation_parameters=params
        )
        if outcome.success:
            return []
        outcome = batch.validate(
            gx.suites[suite], result_format=gx.result_format, expectation_parameters=params
        )
    # GE does not keep the suite's order; report in the order the rules are written.
    results = sorted(outcome.results, key=lambda result: result.expectation_config.meta["order"])
    failures: list[Failure] = []
    for result in results:
        if result.success:
            continue
        meta = result.expectation_config.meta
        expectation, rule = meta["label"].format(**labels), meta["rule"]
        error = _exception_message(result.exception_info)
        if error is not None:  # GE could not evaluate it: every series fails it, nothing is hidden
            detail = f"could not be evaluated: {error}"
            failures += [
                Failure(name, expectation, rule=rule, kind=kind, detail=detail)
                for name in frame["series"].unique()
            ]
            continue
        by_series: dict[str, list[str]] = {}
        for row in result.result.get("unexpected_index_list") or []:
            by_series.setdefault(row["series"], []).append(_iso(row["timestamp"]))
        for name, stamps in by_series.items():
            distinct = list(dict.fromkeys(stamps))  # a duplicate's two rows share one timestamp
            shown, more = distinct[:MAX_ROWS_SHOWN], max(len(distinct) - MAX_ROWS_SHOWN, 0)
            failures.append(Failure(name, expectation, shown, len(stamps), more, rule, kind))
    return failures


def _exception_message(info: Any) -> str | None:
    """GE reports an expectation that crashed in exception_info, flat or keyed by metric."""
    if not info:
        return None
    infos = [info] if "raised_exception" in info else list(info.values())
    messages = [i.get("exception_message") or "error" for i in infos if i.get("raised_exception")]
    return "; ".join(dict.fromkeys(messages)) or None


def _iso(value: Any) -> str:
    return "NaT" if pd.isna(value) else pd.Timestamp(value).isoformat()


@functools.cache
def _gx() -> SimpleNamespace:
    # GE logs its import and setup at DEBUG/INFO; keep warnings only. One module pins its own
    # logger to INFO on import ("Created temporary directory ... for ephemeral docs site").
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    # tqdm "Calculating Metrics" bars would otherwise print on every run with enough metrics
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch_definition = (
        context.data_sources.add_pandas("market_data")
        .add_dataframe_asset("series")
        .add_batch_definition_whole_dataframe("all_rows")
    )
    suites = {
        name: _suite(gx, name, _rules(name)) for name in ("candles", "candles_fresh", "funding", "fear_greed")
    }
    # COMPLETE: every offending row, so a series is never hidden behind another's many failures
    result_format = {
        "result_format": "COMPLETE",
        "unexpected_index_column_names": ["series", "timestamp"],
    }
    return SimpleNamespace(
        batch_definition=batch_definition, suites=suites, result_format=result_format
    )


def _suite(gx: Any, name: str, rules: list[tuple[str, str, Any]]) -> Any:
    suite = gx.ExpectationSuite(name=name)
    for order, (rule, label, check) in enumerate(rules):
        expectation = _expectation(check)
        expectation.meta = {"rule": rule, "label": label, "order": order}
        suite.add_expectation(expectation)
    return suite


def _param(name: str) -> dict[str, str]:
    return {"$PARAMETER": name}


# --- the rules, written once ----------------------------------------------------------------------
# Each rule is (rule id, words, check); a check is one of the four Great Expectations expectations
# the suites use, as data: `_expectation` builds the GE object, `_holds` evaluates the same rule on
# the same frame with numpy, with GE's semantics (a null is ignored by Between and, with
# "either_value_is_missing", by PairGreaterThan; NotNull is where a null fails).


@dataclass(frozen=True)
class NotNull:
    column: str


@dataclass(frozen=True)
class Between:
    column: str
    min_value: Any = None
    max_value: Any = None
    strict_min: bool = False
    strict_max: bool = False


@dataclass(frozen=True)
class PairGreaterThan:
    column_A: str
    column_B: str
    or_equal: bool = False


@dataclass(frozen=True)
class Unique:
    column_list: tuple[str, ...]


def _expectation(check: Any) -> Any:
    """The Great Expectations expectation of a check."""
    import great_expectations.expectations as gxe

    if isinstance(check, NotNull):
        return gxe.ExpectColumnValuesToNotBeNull(column=check.column)
    if isinstance(check, Between):
        return gxe.ExpectColumnValuesToBeBetween(
            column=check.column, min_value=check.min_value, max_value=check.max_value,
            strict_min=check.strict_min, strict_max=check.strict_max)
    if isinstance(check, PairGreaterThan):
        return gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A=check.column_A, column_B=check.column_B, or_equal=check.or_equal,
            ignore_row_if="either_value_is_missing")    # a NaN is reported once, by its not-null rule
    return gxe.ExpectCompoundColumnsToBeUnique(column_list=list(check.column_list))


def _holds(check: Any, frame: pd.DataFrame, params: Mapping[str, float]) -> bool:
    """Whether every row of `frame` passes the check, evaluated with numpy (GE's verdict, without GE)."""
    def bound(value: Any) -> Any:
        return params[value["$PARAMETER"]] if isinstance(value, dict) else value

    if isinstance(check, NotNull):
        return not frame[check.column].isna().any()
    if isinstance(check, Unique):
        return not frame.duplicated(list(check.column_list), keep=False).any()
    if isinstance(check, PairGreaterThan):
        a, b = frame[check.column_A].to_numpy(float), frame[check.column_B].to_numpy(float)
        keep = ~(np.isnan(a) | np.isnan(b))
        a, b = a[keep], b[keep]
        return bool(np.all(a >= b) if check.or_equal else np.all(a > b))
    values = frame[check.column].to_numpy(float)
    values = values[~np.isnan(values)]
    lo, hi = bound(check.min_value), bound(check.max_value)
    ok = np.ones(len(values), dtype=bool)
    if lo is not None:
        ok &= values > lo if check.strict_min else values >= lo
    if hi is not None:
        ok &= values < hi if check.strict_max else values <= hi
    return bool(ok.all())


def _order_rules(noun: str, gap_column: str) -> list[tuple[str, str, Any]]:
    """Unique and strictly increasing times per series, for every kind of series."""
    return [
        ("unique_timestamp", f"{noun} unique", Unique(("series", "timestamp"))),
        ("increasing_timestamp", f"{noun} strictly increasing", Between(gap_column, min_value=0, strict_min=True)),
    ]


def _candle_rules(*, fresh: bool) -> list[tuple[str, str, Any]]:
    """(rule id, words, expectation); words may name a parameter, filled in when reporting."""
    between = Between
    rules: list[tuple[str, str, Any]] = [
        ("not_null", f"{column} is not null", NotNull(column))
        for column in ("timestamp", *CANDLE_COLUMNS)
    ]
    rules += [
        ("positive_price", f"{column} > 0", between(column=column, min_value=0, strict_min=True))
        for column in PRICE_COLUMNS
    ]
    rules += [
        ("volume_not_negative", "volume >= 0", between(column="volume", min_value=0)),
        ("finite", "prices and volume are finite", between(column="finite", min_value=1)),
        (
            "high_ge_body",
            "high >= max(open, close)",
            PairGreaterThan("high", "body_high", or_equal=True),
        ),
        (
            "low_le_body",
            "low <= min(open, close)",
            PairGreaterThan("body_low", "low", or_equal=True),
        ),
        *_order_rules("timestamps", "gap_days"),
        (
            "consecutive_days",
            "no missing day (candles exactly 1 day apart)",
            between(column="gap_days", min_value=1, max_value=1),
        ),
        (
            "daily_open_time",
            "candle opens at 00:00 UTC",
            between(column="seconds_into_day", min_value=0, max_value=0),
        ),
        (
            "daily_move",
            "|close-to-close move| < {max_daily_move:g}",
            between(column="abs_daily_move", max_value=_param("max_daily_move"), strict_max=True),
        ),
    ]
    if fresh:
        rules += [
            (
                STALE,
                "last candle is the last closed UTC day {last_closed_day}",
                between(column="last_candle_days_past", min_value=0),
            ),
            (
                "no_future_candles",
                "no candle after the last closed UTC day {last_closed_day}",
                between(column="days_past_last_closed", max_value=0),
            ),
        ]
    return rules


def _funding_rules() -> list[tuple[str, str, Any]]:
    between = Between
    return [
        (
            "not_null",
            "funding timestamp is not null",
            NotNull("timestamp"),
        ),
        (
            "not_null",
            "funding_rate is not null",
            NotNull("funding_rate"),
        ),
        (
            "funding_rate_bound",
            "|funding_rate| <= {max_funding_rate:g}",
            between(
                column="funding_rate",
                min_value=_param("min_funding_rate"),
                max_value=_param("max_funding_rate"),
            ),
        ),
        *_order_rules("funding timestamps", "gap_hours"),
        (
            "funding_gap",
            "no missing settlement (gap <= {max_funding_gap:g} of the series' interval)",
            between(column="gap_intervals", max_value=_param("max_funding_gap")),
        ),
    ]


def _fear_greed_rules() -> list[tuple[str, str, Any]]:
    between = Between
    return [
        ("not_null", "index date is not null", NotNull("timestamp")),
        ("not_null", "value is a number", NotNull("value")),
        ("integer", "value is an integer", between(column="fraction_part", max_value=0)),
        ("fear_greed_range", "value in 0..100", between(column="value", min_value=0, max_value=100)),
        *_order_rules("index dates", "gap_days"),
        (
            "daily_open_time",
            "index date at 00:00 UTC",
            between(column="seconds_into_day", min_value=0, max_value=0),
        ),
    ]
