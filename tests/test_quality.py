"""Data quality rules (eternal/data/quality.py) proved on real Binance history from ../shared/data.

Every failing case is a corrupted copy of a real series, so a rule that fails here would also have
failed on the day the corruption could really happen; every passing case is the untouched file.
"""

from __future__ import annotations

import functools
import os
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eternal.data.quality import MAX_ROWS_SHOWN, Failure, validate_market_data
from eternal.errors import DataQualityError, StaleDataError
from eternal.models import last_closed_day, utc

DATA = Path(os.environ.get("ETERNAL_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
if not DATA.is_dir():  # loud, never a silent skip
    raise RuntimeError(f"real market data not found at {DATA}: clone with ../shared beside the repo")

LAST_SPOT_DAY = "2026-01-05T00:00:00+00:00"  # last candle of the spot daily files (README)
ASOF_AFTER_SPOT = utc("2026-01-06T08:00:00Z")  # the day after: 2026-01-05 is the last closed day


@functools.cache
def _read(filename: str) -> pd.DataFrame:
    frame = pd.read_csv(DATA / filename)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    return frame.set_index("timestamp")


def candles(pair: str, market: str = "spot") -> pd.DataFrame:
    """Real daily candles, e.g. candles("BTC-USDT"); a fresh copy the test may corrupt."""
    return _read(f"ohlcv_1d_{pair}_{market}.csv")[["open", "high", "low", "close", "volume"]].copy()


def funding(symbol: str) -> pd.DataFrame:
    """Real funding settlements, e.g. funding("BTCUSDT"); a fresh copy the test may corrupt."""
    return _read(f"funding_8h_{symbol}_perp.csv")[["funding_rate"]].copy()


def spot() -> dict[str, pd.DataFrame]:
    return {"BTC/USDT": candles("BTC-USDT"), "ETH/USDT": candles("ETH-USDT")}


def failure_of(error: pytest.ExceptionInfo, series: str, rule: str) -> dict:
    matches = [f for f in error.value.failures if f["series"] == series and f["rule"] == rule]
    assert len(matches) == 1, error.value.failures
    return matches[0]


def ts(day: str) -> pd.Timestamp:
    return pd.Timestamp(day, tz="UTC")


# --- real data passes ----------------------------------------------------------------------------


def test_real_btc_and_eth_spot_daily_history_passes_on_the_day_after_its_last_candle():
    data = spot()
    assert len(data["BTC/USDT"]) == 3064 and data["BTC/USDT"].index[-1].isoformat() == LAST_SPOT_DAY
    validate_market_data(data, {}, ASOF_AFTER_SPOT)


def test_real_sol_funding_in_the_ftx_crash_passes_with_irregular_two_hour_settlements():
    sol = funding("SOLUSDT").loc["2022-11"]
    gaps = sol.index.to_series().diff().dropna()
    assert (gaps == pd.Timedelta(hours=2)).sum() == 98  # Binance shortened the interval (README)
    assert sol["funding_rate"].min() == pytest.approx(-0.02)
    validate_market_data({}, {"SOL/USDT:USDT": sol}, None)


def test_whole_real_history_of_six_daily_series_and_three_funding_series_passes_without_asof():
    pairs = ("BTC-USDT", "ETH-USDT", "SOL-USDT")
    daily = {f"{p.replace('-', '/')}": candles(p) for p in pairs}
    daily |= {f"{p.replace('-', '/')}:USDT": candles(p, "perp") for p in pairs}
    rates = {f"{s}/USDT:USDT": funding(f"{s}USDT") for s in ("BTC", "ETH", "SOL")}
    validate_market_data(daily, rates, None)  # perps end on other days than spot: no asof rule


@pytest.mark.parametrize(
    "asof",
    [
        "2017-08-18T00:00:00Z",  # the first moment the first real candle (2017-08-17) is closed
        "2020-03-13T00:00:01Z",  # the day after the covid crash
        "2021-11-10T23:59:59Z",  # the last second of the BTC all-time-high day
        "2024-02-29T12:00:00Z",  # a leap day
    ],
)
def test_real_history_sliced_to_the_last_closed_day_passes_and_the_open_candle_is_future_data(asof):
    asof = utc(asof)
    btc = candles("BTC-USDT")
    sliced = btc.loc[: last_closed_day(asof)]  # what a cycle does before validating
    validate_market_data({"BTC/USDT": sliced}, {}, asof)
    still_open = btc.loc[: last_closed_day(asof) + timedelta(days=1)]
    with pytest.raises(DataQualityError) as error:
        validate_market_data({"BTC/USDT": still_open}, {}, asof)
    assert [f["rule"] for f in error.value.failures] == ["no_future_candles"]


# --- each candle rule fails on a corrupted copy --------------------------------------------------


def test_high_below_close_fails_high_ge_max_open_close_on_that_date():
    data = spot()
    data["BTC/USDT"].loc[ts("2021-11-10"), "high"] = 60_000.0  # real: high 69,000, close 64,882.43
    with pytest.raises(DataQualityError) as error:
        validate_market_data(data, {}, ASOF_AFTER_SPOT)
    assert type(error.value) is DataQualityError
    assert str(error.value) == (
        "data quality failed: "
        "BTC/USDT: high >= max(open, close) failed on 2021-11-10T00:00:00+00:00 (1 row)"
    )
    assert error.value.failures == [
        {
            "series": "BTC/USDT",
            "expectation": "high >= max(open, close)",
            "rows": ["2021-11-10T00:00:00+00:00"],
            "count": 1,
            "more": 0,
            "rule": "high_ge_body",
            "kind": "candles",
            "detail": "",
        }
    ]


def test_low_above_open_fails_low_le_min_open_close_on_that_date():
    data = spot()
    eth = data["ETH/USDT"]
    eth.loc[ts("2022-11-21"), "low"] = 1_142.21 + 1  # above the real open 1,142.21, below high
    with pytest.raises(DataQualityError) as error:
        validate_market_data(data, {}, ASOF_AFTER_SPOT)
    assert [f["rule"] for f in error.value.failures] == ["low_le_body"]
    assert "ETH/USDT: low <= min(open, close) failed on 2022-11-21T00:00:00+00:00 (1 row)" in str(error.value)


def test_missing_day_fails_consecutive_days_on_the_candle_after_the_gap():
    data = spot()
    data["BTC/USDT"] = data["BTC/USDT"].drop(ts("2022-11-21"))
    with pytest.raises(DataQualityError) as error:
        validate_market_data(data, {}, ASOF_AFTER_SPOT)
    assert [f["rule"] for f in error.value.failures] == ["consecutive_days"]
    assert failure_of(error, "BTC/USDT", "consecutive_days")["rows"] == ["2022-11-22T00:00:00+00:00"]
    assert "BTC/USDT: no missing day (candles exactly 1 day apart) failed on 2022-11-22" in str(error.value)


def test_duplicated_row_fails_unique_and_strictly_increasing_timestamps():
    data = spot()
    btc = data["BTC/USDT"]
    day = ts("2021-11-10")
    data["BTC/USDT"] = pd.concat([btc.loc[:day], btc.loc[[day]], btc.loc[day + pd.Timedelta(days=1) :]])
    assert len(data["BTC/USDT"]) == 3065
    with pytest.raises(DataQualityError) as error:
        validate_market_data(data, {}, ASOF_AFTER_SPOT)
    unique = failure_of(error, "BTC/USDT", "unique_timestamp")
    assert unique["rows"] == ["2021-11-10T00:00:00+00:00"] and unique["count"] == 2  # two rows, one time
    assert failure_of(error, "BTC/USDT", "increasing_timestamp")["rows"] == ["2021-11-10T00:00:00+00:00"]
    assert "BTC/USDT: timestamps unique failed on 2021-11-10T00:00:00+00:00 (2 rows)" in str(error.value)


def test_rows_out_of_order_fail_strictly_increasing_timestamps():
    btc = candles("BTC-USDT")
    order = list(range(len(btc)))
    i = btc.index.get_loc(ts("2022-11-21"))
    order[i], order[i + 1] = order[i + 1], order[i]  # 2022-11-22 now comes before 2022-11-21
    with pytest.raises(DataQualityError) as error:
        validate_market_data({"BTC/USDT": btc.iloc[order]}, {}, None)
    assert failure_of(error, "BTC/USDT", "increasing_timestamp")["rows"] == ["2022-11-21T00:00:00+00:00"]


def test_nan_close_fails_close_is_not_null_and_nothing_else():
    data = spot()
    data["BTC/USDT"].loc[ts("2022-11-21"), "close"] = np.nan  # real: 15,781.29
    with pytest.raises(DataQualityError) as error:
        validate_market_data(data, {}, ASOF_AFTER_SPOT)
    assert str(error.value).removeprefix("data quality failed: ").split("; ") == [
        "BTC/USDT: close is not null failed on 2022-11-21T00:00:00+00:00 (1 row)"
    ]


def test_negative_open_fails_positive_prices():
    data = spot()
    data["ETH/USDT"].loc[ts("2020-03-12"), "open"] = -194.0
    with pytest.raises(DataQualityError) as error:
        validate_market_data(data, {}, ASOF_AFTER_SPOT)
    assert failure_of(error, "ETH/USDT", "positive_price") == {
        "series": "ETH/USDT",
        "expectation": "open > 0",
        "rows": ["2020-03-12T00:00:00+00:00"],
        "count": 1,
        "more": 0,
        "rule": "positive_price",
        "kind": "candles",
        "detail": "",
    }


def test_seventy_percent_jump_fails_daily_move_on_the_day_of_the_jump_only():
    data = spot()
    eth = data["ETH/USDT"]
    day = ts("2021-11-10")
    eth.loc[day, ["high", "close"]] = eth.loc[day, "close"] * 1.7  # +70 %; the next day is -41 %
    with pytest.raises(DataQualityError) as error:
        validate_market_data(data, {}, ASOF_AFTER_SPOT)
    assert [f["rule"] for f in error.value.failures] == ["daily_move"]
    assert "ETH/USDT: |close-to-close move| < 0.6 failed on 2021-11-10T00:00:00+00:00 (1 row)" in str(
        error.value
    )


def test_daily_move_bound_is_a_parameter_and_flags_the_real_covid_crash_at_thirty_percent():
    with pytest.raises(DataQualityError) as error:
        validate_market_data(spot(), {}, ASOF_AFTER_SPOT, max_daily_move=0.30)
    assert failure_of(error, "BTC/USDT", "daily_move")["rows"] == ["2020-03-12T00:00:00+00:00"]  # -39.5 %
    assert failure_of(error, "ETH/USDT", "daily_move")["rows"] == ["2020-03-12T00:00:00+00:00"]  # -44.6 %
    assert "|close-to-close move| < 0.3 failed" in str(error.value)


def test_candles_not_opening_at_midnight_utc_fail_daily_open_time_and_show_ten_rows_plus_a_count():
    btc = candles("BTC-USDT")
    btc.index = btc.index + pd.Timedelta(hours=12)
    with pytest.raises(DataQualityError) as error:
        validate_market_data({"BTC/USDT": btc}, {}, None)
    failure = failure_of(error, "BTC/USDT", "daily_open_time")
    assert len(failure["rows"]) == MAX_ROWS_SHOWN and failure["rows"][0] == "2017-08-17T12:00:00+00:00"
    assert failure["count"] == 3064 and failure["more"] == 3064 - MAX_ROWS_SHOWN
    assert "and 3054 more (3064 rows)" in str(error.value)


def test_empty_series_fails_with_no_data():
    data = spot()
    data["ETH/USDT"] = data["ETH/USDT"].iloc[:0]
    with pytest.raises(DataQualityError) as error:
        validate_market_data(data, {}, ASOF_AFTER_SPOT)
    assert str(error.value).removeprefix("data quality failed: ").split("; ") == ["ETH/USDT: series has data failed: no data"]


def test_naive_timestamps_are_refused_not_guessed():
    btc = candles("BTC-USDT")
    btc.index = btc.index.tz_localize(None)
    with pytest.raises(DataQualityError) as error:
        validate_market_data({"BTC/USDT": btc}, {}, None)
    assert error.value.failures[0]["rule"] == "utc_index"


def test_prices_read_as_text_are_reported_not_crashed_on():
    btc = candles("BTC-USDT")
    btc["close"] = btc["close"].astype(str)  # e.g. a CSV with a stray "n/a" in the column
    with pytest.raises(DataQualityError) as error:
        validate_market_data({"BTC/USDT": btc}, {}, None)
    assert error.value.failures[0]["rule"] == "numeric"
    assert "BTC/USDT: columns open, high, low, close, volume are numeric failed: close is" in str(
        error.value
    )


# --- staleness -----------------------------------------------------------------------------------


def test_candles_three_days_old_raise_stale_data_error_naming_each_series_and_its_last_candle():
    asof = ASOF_AFTER_SPOT + timedelta(days=3)  # last closed day 2026-01-08, data ends 2026-01-05
    with pytest.raises(StaleDataError) as error:
        validate_market_data(spot(), {}, asof)
    assert str(error.value).removeprefix("data quality failed: ").split("; ") == [
        f"{series}: last candle is the last closed UTC day 2026-01-08T00:00:00+00:00 failed on "
        f"{LAST_SPOT_DAY} (1 row)"
        for series in ("BTC/USDT", "ETH/USDT")
    ]


def test_candles_after_the_last_closed_day_are_future_data_not_stale():
    asof = utc("2026-01-04T12:00:00Z")  # 2026-01-03 closed; 2026-01-04 is still open
    with pytest.raises(DataQualityError) as error:
        validate_market_data(spot(), {}, asof)
    assert type(error.value) is DataQualityError
    future = failure_of(error, "BTC/USDT", "no_future_candles")
    assert future["rows"] == ["2026-01-04T00:00:00+00:00", LAST_SPOT_DAY]


def test_stale_data_with_another_failure_raises_data_quality_error_listing_both():
    data = spot()
    data["BTC/USDT"].loc[ts("2021-11-10"), "high"] = 60_000.0
    with pytest.raises(DataQualityError) as error:
        validate_market_data(data, {}, ASOF_AFTER_SPOT + timedelta(days=3))
    assert not isinstance(error.value, StaleDataError)
    assert {f["rule"] for f in error.value.failures} == {"high_ge_body", "last_closed_day"}


def test_asof_none_skips_the_staleness_rule():
    validate_market_data(spot(), {}, None)  # ends 2026-01-05, long before any real "now"


# --- funding -------------------------------------------------------------------------------------


def test_funding_rate_of_five_percent_fails_the_funding_rate_bound():
    btc = funding("BTCUSDT")
    btc.loc[ts("2021-11-10 08:00"), "funding_rate"] = 0.05
    btc.loc[ts("2022-11-21 16:00"), "funding_rate"] = -0.05
    with pytest.raises(DataQualityError) as error:
        validate_market_data({}, {"BTC/USDT:USDT": btc}, None)
    assert str(error.value).removeprefix("data quality failed: ").split("; ") == [
        "BTC/USDT:USDT: |funding_rate| <= 0.03 failed on 2021-11-10T08:00:00+00:00, "
        "2022-11-21T16:00:00+00:00 (2 rows)"
    ]
    assert error.value.failures[0]["kind"] == "funding"


def test_funding_nan_duplicate_and_out_of_order_settlements_fail():
    eth = funding("ETHUSDT")
    eth.loc[ts("2021-11-10 08:00"), "funding_rate"] = np.nan
    eth = pd.concat([eth, eth.loc[[ts("2022-11-21 16:00")]]])  # a settlement repeated at the end
    with pytest.raises(DataQualityError) as error:
        validate_market_data({}, {"ETH/USDT:USDT": eth}, None)
    assert failure_of(error, "ETH/USDT:USDT", "not_null")["rows"] == ["2021-11-10T08:00:00+00:00"]
    assert failure_of(error, "ETH/USDT:USDT", "unique_timestamp")["count"] == 2
    assert failure_of(error, "ETH/USDT:USDT", "increasing_timestamp")["rows"] == [
        "2022-11-21T16:00:00+00:00"
    ]


# --- all failures in one error -------------------------------------------------------------------


def test_failures_of_several_series_and_rules_are_all_reported_in_one_error():
    data = spot()
    data["BTC/USDT"].loc[ts("2021-11-10"), "high"] = 60_000.0
    data["ETH/USDT"] = data["ETH/USDT"].drop(ts("2022-11-21"))
    data["SOL/USDT"] = data["ETH/USDT"].iloc[:0]
    sol = funding("SOLUSDT")
    sol.loc[ts("2022-11-10 04:00"), "funding_rate"] = 0.05  # real: -0.02
    with pytest.raises(DataQualityError) as error:
        validate_market_data(data, {"SOL/USDT:USDT": sol}, ASOF_AFTER_SPOT)
    assert str(error.value).removeprefix("data quality failed: ").split("; ") == [
        "BTC/USDT: high >= max(open, close) failed on 2021-11-10T00:00:00+00:00 (1 row)",
        "ETH/USDT: no missing day (candles exactly 1 day apart) failed on 2022-11-22T00:00:00+00:00 (1 row)",
        "SOL/USDT: series has data failed: no data",
        "SOL/USDT:USDT: |funding_rate| <= 0.03 failed on 2022-11-10T04:00:00+00:00 (1 row)",
    ]
    assert len(error.value.failures) == 4


def test_failure_describes_itself_and_converts_to_a_dict():
    failure = Failure("BTC/USDT", "close is not null", ["2024-03-05T00:00:00+00:00"], 1, rule="not_null")
    assert failure.describe() == "BTC/USDT: close is not null failed on 2024-03-05T00:00:00+00:00 (1 row)"
    assert failure.to_dict()["rows"] == ["2024-03-05T00:00:00+00:00"]


# --- cost and noise ------------------------------------------------------------------------------


def test_six_daily_series_and_three_funding_series_validate_silently(capfd):
    pairs = ("BTC-USDT", "ETH-USDT", "SOL-USDT")
    end = ts("2026-01-05")  # slice every series to the spot end, as a cycle would
    daily = {p.replace("-", "/"): candles(p).loc[:end] for p in pairs}
    daily |= {p.replace("-", "/") + ":USDT": candles(p, "perp").loc[:end] for p in pairs}
    rates = {f"{s}/USDT:USDT": funding(f"{s}USDT").loc[:end] for s in ("BTC", "ETH", "SOL")}
    validate_market_data(daily, rates, ASOF_AFTER_SPOT)  # GE imported and set up on first use
    validate_market_data(daily, rates, ASOF_AFTER_SPOT)  # and the warm path (timing: benchmarks/)
    assert sum(len(frame) for frame in daily.values()) > 14_000
    out, err = capfd.readouterr()
    assert out == "" and err == "", "GE must not print progress bars or logs"


# --- numpy and Great Expectations give one verdict ---------------------------------------------
# The suites' rules are evaluated with numpy first; GE runs only to report what failed. A rule where
# numpy says "holds" and GE says "fails" would let bad data trade, so each corruption of a real
# series below is judged by both, rule by rule.

from hypothesis import HealthCheck, given, settings as hsettings, strategies as st  # noqa: E402

from eternal.data import quality  # noqa: E402

CORRUPTIONS = ("nan", "zero", "negative", "inf", "high_below", "low_above", "duplicate", "swap", "gap",
               "hour", "jump", "future")
PARAMS = {"max_funding_gap": quality.MAX_FUNDING_GAP, "max_daily_move": 0.60, "max_funding_rate": 0.03,
          "min_funding_rate": -0.03}


def _corrupt(frame: pd.DataFrame, how: str, row: int, column: str) -> pd.DataFrame:
    f = frame.copy()
    idx = f.index.to_list()
    if how == "nan":
        f.iloc[row, f.columns.get_loc(column)] = np.nan
    elif how == "zero":
        f.iloc[row, f.columns.get_loc(column)] = 0.0
    elif how == "negative":
        f.iloc[row, f.columns.get_loc(column)] = -abs(f.iloc[row][column]) - 1
    elif how == "inf":
        f.iloc[row, f.columns.get_loc(column)] = np.inf
    elif how == "high_below" and "high" in f:
        f.iloc[row, f.columns.get_loc("high")] = min(f.iloc[row]["open"], f.iloc[row]["close"]) * 0.999
    elif how == "low_above" and "low" in f:
        f.iloc[row, f.columns.get_loc("low")] = max(f.iloc[row]["open"], f.iloc[row]["close"]) * 1.001
    elif how == "duplicate":
        f = pd.concat([f.iloc[: row + 1], f.iloc[row: row + 1], f.iloc[row + 1:]])
    elif how == "swap" and row + 1 < len(f):
        idx[row], idx[row + 1] = idx[row + 1], idx[row]
        f.index = pd.DatetimeIndex(idx, name=f.index.name)
    elif how == "gap":
        f = f.drop(f.index[row])
    elif how == "hour":
        idx[row] = idx[row] + pd.Timedelta(hours=1)
        f.index = pd.DatetimeIndex(idx, name=f.index.name)
    elif how == "jump":
        f.iloc[row:, f.columns.get_loc(column)] = f.iloc[row:][column] * 2.5
    elif how == "future":
        f.index = f.index + pd.Timedelta(days=3)
    return f


def _verdicts(suite: str, kind: str, frame: pd.DataFrame) -> tuple[list, list]:
    """(rules failing with numpy, rules failing in GE) of one stacked frame."""
    labels = {**PARAMS, "last_closed_day": "x"}
    by_numpy = sorted({rule for rule, _, check in quality._rules(suite) if not quality._holds(check, frame, PARAMS)})
    by_ge = sorted({f.rule for f in quality._run_suite(suite, kind, frame, PARAMS, labels, always_ge=True)})
    return by_numpy, by_ge


@hsettings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(how=st.sampled_from(CORRUPTIONS), row=st.integers(1, 40),
       column=st.sampled_from(("open", "high", "low", "close", "volume")))
def test_numpy_and_great_expectations_fail_the_same_candle_rules(how, row, column):
    # ETH spot, 2022-11-01..2022-12-11 (the FTX collapse), corrupted once
    real = candles("ETH-USDT").loc["2022-11-01":"2022-12-11"]
    frame = quality._candle_frame("ETH/USDT", _corrupt(real, how, row, column), utc("2022-12-11T00:00:00Z"))
    by_numpy, by_ge = _verdicts("candles_fresh", "candles", frame)
    assert by_numpy == by_ge


@hsettings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(how=st.sampled_from(("nan", "inf", "negative", "duplicate", "swap", "gap", "hour", "jump")),
       row=st.integers(1, 60))
def test_numpy_and_great_expectations_fail_the_same_funding_rules(how, row):
    # SOL funding around 2022-11-09, when settlements came every 2 hours; rates scaled to bound tests
    real = funding("SOLUSDT").loc["2022-11-01":"2022-11-20"]
    if how == "jump":
        real = real * 40          # some settlements over |0.03| after scaling
    frame = quality._funding_frame("SOL/USDT:USDT", _corrupt(real, how if how != "jump" else "none", row,
                                                              "funding_rate"), None)
    by_numpy, by_ge = _verdicts("funding", "funding", frame)
    assert by_numpy == by_ge


def test_the_real_files_pass_with_numpy_and_great_expectations_alike():
    frame = quality._candle_frame("BTC/USDT", candles("BTC-USDT"), None)
    assert _verdicts("candles", "candles", frame) == ([], [])
