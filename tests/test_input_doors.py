"""Every bad input refused at every door with the same one-line message, nothing written, nothing traded.

Doors: `eternal data import DIR` (CLI), `eternal data download` (the downloader against a Bybit stub
on 127.0.0.1), the `backfill` flow over a CSV directory, and the gather of the daily, funding and
quarterly flows over a database that holds the bad rows (written by an older version or by hand).
Each bad-input kind is a corruption of real Binance history (../shared/data) on a named day; the
expectation and the timestamp in the message are the suite's (eternal/data/quality.py).

Kinds that cannot reach a door are left out of its table and say why: the database's key makes a
duplicated timestamp impossible in the store; a truncated line, a header-only file and a naive
timestamp exist only in files; the engines' history is a need of a trading run (flows, backfill,
import), not of a download, which stores what the exchange has.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eternal.data.csv_files import DataSet
from eternal.data.store import MarketStore
from eternal.errors import ConfigError, DataQualityError
from eternal.store.db import connect
from eternal.store.models import CandleRow, EventRow, FearGreedRow, FundingRateRow, OrderRow, PaperOrderRow
from tests.flow_support import count, daily, funding, quarterly, store_market

DAY = "2023-12-20"                      # the corrupted day, inside every flow's stored window
BTC_FILE, ETH_FILE = "ohlcv_1d_BTC-USDT_spot.csv", "ohlcv_1d_ETH-USDT_spot.csv"
FUNDING_FILE, FG_FILE = "funding_8h_BTCUSDT_perp.csv", "fear_greed_1d.csv"


@dataclass(frozen=True)
class Bad:
    """One kind of bad input: how to corrupt the data and what the message must say."""

    kind: str
    series: str            # the series named in the message
    file: str              # the file it comes from
    rule: str              # the rule's words in the message
    stamp: str             # the timestamp in the message


def _ts(day: str) -> pd.Timestamp:
    return pd.Timestamp(day, tz="UTC")


def corrupt(dataset: DataSet, kind: str) -> DataSet:
    """A copy of the real data with one corruption (only the touched frames are copied)."""
    out = DataSet(dict(dataset.candles), dict(dataset.funding), dataset.fear_greed, dict(dataset.files))
    btc, eth = out.candles[("BTC/USDT", "1d")].copy(), out.candles[("ETH/USDT", "1d")].copy()
    fund, fg = out.funding["BTC/USDT:USDT"].copy(), out.fear_greed.copy()
    day = _ts(DAY)
    if kind == "duplicate":                 # real close of 2022-03-15: 39,280.33; a second copy says 40,065.94
        extra = btc.loc[[_ts("2022-03-15")]].assign(close=40_065.94, high=40_100.0)
        btc = pd.concat([btc, extra]).sort_index(kind="stable")
    elif kind == "nan_close":
        btc.loc[day, "close"] = np.nan
    elif kind == "negative_close":          # real ETH close 2,202.17
        eth.loc[day, ["close", "low"]] = -2_202.17
    elif kind == "spike_100x":              # real BTC close 43,668.93: a hundred times that
        btc.loc[day, ["close", "high"]] = btc.loc[day, "close"] * 100
    elif kind == "high_below_close":
        btc.loc[day, "high"] = btc.loc[day, "close"] - 100
    elif kind == "infinite_volume":         # "inf" parses as a number and passes volume >= 0
        btc.loc[day, "volume"] = np.inf
    elif kind == "missing_day":
        btc = btc.drop(day)
    elif kind == "funding_gap":             # two settlements removed: 00:00 to 24:00 with none between
        fund = fund.drop([day + pd.Timedelta(hours=8), day + pd.Timedelta(hours=16)])
    elif kind == "funding_rate_bound":      # 5 % in one settlement; the real extreme is 2 %
        fund.loc[day + pd.Timedelta(hours=8), "funding_rate"] = 0.05
    elif kind == "fear_greed_range":
        fg.loc[day, "value"] = -3
    elif kind == "short_history":           # five days of BTC: the all-time high would come from them
        btc = btc.loc["2023-12-01":"2023-12-05"]
    out.candles[("BTC/USDT", "1d")], out.candles[("ETH/USDT", "1d")] = btc, eth
    out.funding["BTC/USDT:USDT"], out.fear_greed = fund, fg
    return out


EXPECTED = {
    "duplicate": Bad("duplicate", "BTC/USDT", BTC_FILE, "timestamps unique", "2022-03-15T00:00:00+00:00"),
    "nan_close": Bad("nan_close", "BTC/USDT", BTC_FILE, "close is not null", f"{DAY}T00:00:00+00:00"),
    "negative_close": Bad("negative_close", "ETH/USDT", ETH_FILE, "close > 0", f"{DAY}T00:00:00+00:00"),
    "spike_100x": Bad("spike_100x", "BTC/USDT", BTC_FILE, "|close-to-close move| < 0.6", f"{DAY}T00:00:00+00:00"),
    "high_below_close": Bad("high_below_close", "BTC/USDT", BTC_FILE, "high >= max(open, close)",
                            f"{DAY}T00:00:00+00:00"),
    "infinite_volume": Bad("infinite_volume", "BTC/USDT", BTC_FILE, "prices and volume are finite",
                           f"{DAY}T00:00:00+00:00"),
    "missing_day": Bad("missing_day", "BTC/USDT", BTC_FILE, "no missing day", "2023-12-21T00:00:00+00:00"),
    "funding_gap": Bad("funding_gap", "BTC/USDT:USDT", FUNDING_FILE, "no missing settlement",
                       "2023-12-21T00:00:00+00:00"),
    "funding_rate_bound": Bad("funding_rate_bound", "BTC/USDT:USDT", FUNDING_FILE, "|funding_rate| <= 0.03",
                              f"{DAY}T08:00:00+00:00"),
    "fear_greed_range": Bad("fear_greed_range", "Fear & Greed", FG_FILE, "value in 0..100", f"{DAY}T00:00:00+00:00"),
    "short_history": Bad("short_history", "BTC/USDT", BTC_FILE, "history from 2017-08-17",
                         "2023-12-01T00:00:00+00:00"),
}
FILE_ONLY = {   # kinds that exist only as text in a file
    "truncated_last_line": Bad("truncated_last_line", "BTC/USDT", BTC_FILE, "close is not null",
                               "2026-01-05T00:00:00+00:00"),
    "header_only": Bad("header_only", "BTC/USDT", BTC_FILE, "series has data", ""),
    "naive_timestamps": Bad("naive_timestamps", BTC_FILE, BTC_FILE, "timestamps are UTC", "2017-08-17T00:00:00"),
}
# the store's key forbids duplicates; its NOT NULL columns refuse a NaN (SQLite stores NaN as NULL)
IN_A_STORE = [k for k in EXPECTED if k not in ("duplicate", "nan_close")]
FROM_AN_EXCHANGE = [k for k in EXPECTED if k != "short_history"]  # a download stores what Bybit has


TOUCHED = {"duplicate": [BTC_FILE], "nan_close": [BTC_FILE], "negative_close": [ETH_FILE],
           "spike_100x": [BTC_FILE], "infinite_volume": [BTC_FILE], "high_below_close": [BTC_FILE], "missing_day": [BTC_FILE],
           "funding_gap": [FUNDING_FILE], "funding_rate_bound": [FUNDING_FILE], "fear_greed_range": [FG_FILE],
           "short_history": [BTC_FILE], "truncated_last_line": [BTC_FILE], "header_only": [BTC_FILE],
           "naive_timestamps": [BTC_FILE]}


def write_files(data: DataSet, directory: Path, names: list[str] | None = None, kind: str | None = None) -> Path:
    """The data as ../shared/data's CSV files (ISO UTC timestamps), all or only `names`, then the
    file-only corruption of `kind`."""
    directory.mkdir(parents=True, exist_ok=True)
    by_file = {data.files[sym]: df for (sym, tf), df in data.candles.items() if tf == "1d"}
    by_file |= {data.files[f"{sym} funding"]: df for sym, df in data.funding.items()}
    by_file[FG_FILE] = data.fear_greed
    for name in names or list(by_file):
        df = by_file[name]
        columns = (["value", "classification"] if name == FG_FILE else ["funding_rate"] if name.startswith("funding")
                   else ["open", "high", "low", "close", "volume"])
        text = df[columns].copy()
        text.insert(0, "timestamp", df.index.strftime("%Y-%m-%dT%H:%M:%SZ"))
        text.to_csv(directory / name, index=False)
    btc = directory / BTC_FILE
    if kind == "truncated_last_line":       # the copy stopped in the middle of the last row
        text = btc.read_text()
        btc.write_text(text[: text.rstrip("\n").rfind(",", 0, len(text) - 30)] + "\n")
    elif kind == "header_only":
        btc.write_text(btc.read_text().splitlines()[0] + "\n")
    elif kind == "naive_timestamps":
        btc.write_text(btc.read_text().replace("Z,", ","))
    return directory


@pytest.fixture(scope="module")
def good_dir(dataset, tmp_path_factory) -> Path:
    """Every real daily series, funding series and the index, written once for the module."""
    return write_files(dataset, tmp_path_factory.mktemp("good"))


def bad_dir(good_dir: Path, dataset: DataSet, kind: str, directory: Path) -> Path:
    """The good files (linked) with the kind's files replaced by their corrupted copies."""
    directory.mkdir(parents=True)
    for path in good_dir.iterdir():
        if path.name not in TOUCHED[kind]:
            (directory / path.name).symlink_to(path)
    return write_files(corrupt(dataset, kind) if kind in EXPECTED else dataset, directory, TOUCHED[kind], kind)


def file_label(kind: str, bad: Bad) -> str:
    """How a series read from a file is named in the message."""
    if kind == "naive_timestamps":           # refused while reading: the file alone
        return bad.file
    if bad.series.endswith(":USDT"):
        return f"{bad.series} funding ({bad.file})"
    return f"{bad.series} ({bad.file})"


def assert_message(error: BaseException, bad: Bad, label: str) -> None:
    message = str(error)
    assert "\n" not in message, message
    assert message.startswith("data quality failed: "), message
    assert f"{label}: {bad.rule}" in message, message
    assert bad.stamp in message, message


# --- import ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", [*EXPECTED, *FILE_ONLY])
def test_import_refuses_and_writes_nothing(kind, dataset, tmp_path, monkeypatch, capsys):
    from eternal.cli import main

    url = f"sqlite:///{tmp_path / 'eternal.db'}"
    monkeypatch.setenv("ETERNAL_DATABASE_URL", url)
    bad = EXPECTED.get(kind) or FILE_ONLY[kind]
    # the files the kind corrupts, alone: an import may bring one series
    directory = write_files(corrupt(dataset, kind) if kind in EXPECTED else dataset, tmp_path / "data",
                            TOUCHED[kind], kind)

    assert main(["data", "import", str(directory)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: data quality failed: "), err
    label = file_label(kind, bad)
    assert_message(DataQualityError(err.removeprefix("error: ")), bad, label)
    engine = connect(url)
    for table in (CandleRow, FundingRateRow, FearGreedRow):
        assert count(engine, table) == 0


def test_import_of_good_files_then_a_file_that_breaks_the_stored_series_keeps_the_store(dataset, good_dir, tmp_path,
                                                                                         monkeypatch):
    """An import is checked merged with what is stored: a file with one wrong day is refused whole."""
    from eternal.cli import main

    url = f"sqlite:///{tmp_path / 'eternal.db'}"
    monkeypatch.setenv("ETERNAL_DATABASE_URL", url)
    assert main(["data", "import", str(good_dir)]) == 0
    engine = connect(url)
    before = count(engine, CandleRow), count(engine, FundingRateRow), count(engine, FearGreedRow)
    assert before[0] == 3064 * 2 + 1974 + 2443 + 2363 + 2051
    spike = corrupt(dataset, "spike_100x")
    only_btc = DataSet({("BTC/USDT", "1d"): spike.daily("BTC/USDT").loc["2023-12-15":]}, files=dataset.files)
    directory = tmp_path / "update"
    directory.mkdir()
    frame = only_btc.daily("BTC/USDT")
    text = frame.copy()
    text.insert(0, "timestamp", frame.index.strftime("%Y-%m-%dT%H:%M:%SZ"))
    text.to_csv(directory / BTC_FILE, index=False)
    assert main(["data", "import", str(directory)]) == 2
    assert (count(engine, CandleRow), count(engine, FundingRateRow), count(engine, FearGreedRow)) == before
    stored = MarketStore(engine).load_candles("BTC/USDT").loc[DAY, "close"]
    assert stored == dataset.daily("BTC/USDT").loc[DAY, "close"] == 43_668.93


def test_an_import_that_rewrites_stored_rows_says_so_and_a_reimport_writes_nothing(dataset, good_dir, tmp_path,
                                                                                    monkeypatch, capsys):
    """2026-01-04's stored BTC close is 91,529.73; a file of 2026-01-03..05 that says 91,629.73 for it
    is accepted (it passes the suite) and writes that one row, with a warning and an event;
    importing the good files again writes no row."""
    from eternal.cli import main
    from eternal.store.models import EventRow

    url = f"sqlite:///{tmp_path / 'eternal.db'}"
    monkeypatch.setenv("ETERNAL_DATABASE_URL", url)
    btc = dataset.daily("BTC/USDT")
    assert main(["data", "import", str(good_dir)]) == 0
    assert main(["data", "import", str(good_dir)]) == 0
    assert set(capsys.readouterr().out.splitlines()[-10:]) == {
        f"{series}: 0 rows written" for series in ("candles BTC/USDT 1d", "candles ETH/USDT 1d", "candles SOL/USDT 1d",
                                                  "candles BTC/USDT:USDT 1d", "candles ETH/USDT:USDT 1d",
                                                  "candles SOL/USDT:USDT 1d", "funding BTC/USDT:USDT",
                                                  "funding ETH/USDT:USDT", "funding SOL/USDT:USDT", "fear_greed")}
    update = tmp_path / "update"
    changed = btc.loc["2026-01-03":].copy()
    assert changed.loc["2026-01-04", "close"] == 91_529.73
    changed.loc["2026-01-04", "close"] = 91_629.73
    write_files(DataSet({("BTC/USDT", "1d"): changed}, files=dataset.files), update, [BTC_FILE])
    assert main(["data", "import", str(update)]) == 0
    out = capsys.readouterr().out
    assert "candles BTC/USDT 1d: 1 rows written" in out
    assert "warning: BTC/USDT 1d: the import replaced 1 stored row(s) with other values: 2026-01-04 00:00" in out
    engine = connect(url)
    assert count(engine, EventRow, EventRow.kind == "stored_rows_replaced") == 1
    assert MarketStore(engine).load_candles("BTC/USDT").loc["2026-01-04", "close"] == 91_629.73


# --- backfill ----------------------------------------------------------------------------------

@pytest.mark.flow
@pytest.mark.parametrize("kind", [*EXPECTED, *FILE_ONLY])
def test_backfill_refuses_and_writes_nothing(kind, dataset, good_dir, tmp_path, prefect_harness):
    from flows.backfill import backfill

    bad = EXPECTED.get(kind) or FILE_ONLY[kind]
    directory = bad_dir(good_dir, dataset, kind, tmp_path / "data")
    out = tmp_path / "out"
    with pytest.raises(DataQualityError) as error:
        backfill(data_dir=str(directory), out=str(out), start=datetime(2023, 6, 1, tzinfo=UTC),
                 end=datetime(2024, 1, 1, tzinfo=UTC))
    assert_message(error.value, bad, file_label(kind, bad))
    assert not (out / "summary.json").exists() and not (out / "trades.csv").exists()


# --- the flows' gather -------------------------------------------------------------------------

FLOWS = {"daily": (daily, "2024-01-03T00:05:00Z"), "funding": (funding, "2024-01-03T08:00:00Z"),
         "quarterly": (quarterly, "2024-01-01T00:15:00Z")}


@pytest.mark.db
@pytest.mark.flow
@pytest.mark.parametrize("kind", IN_A_STORE)
def test_every_flow_refuses_stored_bad_data_and_trades_nothing(kind, dataset, tmp_path, monkeypatch,
                                                               prefect_harness):
    """The daily, funding and quarterly flows, one after the other on the same stored rows."""
    url = f"sqlite:///{tmp_path / 'eternal.db'}"
    monkeypatch.setenv("ETERNAL_DATABASE_URL", url)
    engine = connect(url)
    store_market(engine, corrupt(dataset, kind), "2023-01-01", "2024-01-10")
    bad = EXPECTED[kind]
    for n, (flow, (run, asof)) in enumerate(FLOWS.items(), start=1):
        with pytest.raises(DataQualityError) as error:
            run(asof)
        assert_message(error.value, bad, bad.series)
        assert count(engine, OrderRow) == 0 and count(engine, PaperOrderRow) == 0, flow
        assert count(engine, EventRow, EventRow.kind == "data_quality_failed") == n, flow


# --- download ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", FROM_AN_EXCHANGE)
def test_download_refuses_a_bad_series_and_writes_none_of_it(kind, dataset, tmp_path):
    from eternal.data.download import download_market_data, make_bybit_public
    from tests.bybit_stub import BybitStub

    data = corrupt(dataset, kind)
    bad = EXPECTED[kind]
    market = MarketStore(connect(f"sqlite:///{tmp_path / 'eternal.db'}"))
    since, now = datetime(2022, 1, 1, tzinfo=UTC), datetime(2024, 1, 10, tzinfo=UTC)
    if kind == "fear_greed_range":           # the index has its own download: the same suite runs on it
        import httpx

        from eternal.data.fear_greed import update_fear_greed

        fg = data.fear_greed.loc["2023-09-01":"2024-01-09"].iloc[::-1]
        body = {"data": [{"value": str(int(v)), "value_classification": c, "timestamp": str(int(t.timestamp()))}
                         for t, v, c in zip(fg.index, fg["value"], fg["classification"])], "metadata": {"error": None}}
        client = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200, json=body)))
        with pytest.raises(DataQualityError) as error:
            update_fear_greed(market, "http://127.0.0.1:9/fng", timeout_s=1, retries=0, client=client)
        assert_message(error.value, bad, "Fear & Greed (http://127.0.0.1:9/fng)")
        assert count(market.engine, FearGreedRow) == 0
        return
    with BybitStub(now=now, bases=("BTC", "ETH")) as stub:
        for asset in ("BTC", "ETH"):
            stub.set_klines("spot", f"{asset}USDT", data.daily(f"{asset}/USDT").loc["2022-01-01":])
            stub.set_klines("linear", f"{asset}USDT", data.daily(f"{asset}/USDT:USDT").loc["2022-01-01":])
            stub.set_funding("linear", f"{asset}USDT", data.funding[f"{asset}/USDT:USDT"].loc["2022-01-01":])
        exchange = make_bybit_public(stub.url)
        exchange.enableRateLimit = False
        with pytest.raises(DataQualityError) as error:
            download_market_data(market, since=since, now=now, exchange=exchange, assets=("BTC", "ETH"),
                                 progress=False)
    assert_message(error.value, bad, f"{bad.series} (Bybit)")
    if bad.series.endswith(":USDT"):
        assert market.last_funding_ts(bad.series) is None
    else:
        assert market.last_candle_ts(bad.series, "1d") is None


# --- closed candles only -------------------------------------------------------------------------

def test_the_exchanges_clock_not_ours_decides_which_candle_is_closed_and_a_wrong_one_is_corrected(dataset, tmp_path):
    """Our clock at 2024-01-03 00:05, Bybit's at 2024-01-02 14:00: the 2024-01-02 candle is still open
    there (its close so far 45,637.93, the 13:00 hourly close) and is not stored. A candle stored
    wrong earlier (that same 45,637.93, as an older version did) is corrected to the final 44,946.91
    by the next download, with an event."""
    from eternal.data.download import download_market_data, make_bybit_public
    from tests.bybit_stub import BybitStub

    btc = dataset.daily("BTC/USDT").loc["2023-12-01":"2024-01-05"]
    partial = btc.copy()
    partial.loc[_ts("2024-01-02"), ["high", "close"]] = [45_705.8, 45_637.93]   # the day up to 14:00
    market = MarketStore(connect(f"sqlite:///{tmp_path / 'eternal.db'}"))
    since = datetime(2023, 12, 1, tzinfo=UTC)
    with BybitStub(now=datetime(2024, 1, 2, 14, tzinfo=UTC), bases=("BTC",)) as stub:
        for category in ("spot", "linear"):
            stub.set_klines(category, "BTCUSDT", partial.loc[:"2024-01-02"])
        stub.set_funding("linear", "BTCUSDT", dataset.funding["BTC/USDT:USDT"].loc["2023-12-01":"2024-01-05"])
        exchange = make_bybit_public(stub.url)
        exchange.enableRateLimit = False
        download_market_data(market, since=since, now=datetime(2024, 1, 3, 0, 5, tzinfo=UTC), exchange=exchange,
                             assets=("BTC",), progress=False)
        assert market.last_candle_ts("BTC/USDT", "1d") == datetime(2024, 1, 1, tzinfo=UTC)

        # an older version stored the open candle as the day's close; the exchange now has the final one
        market.upsert_candles("BTC/USDT", "1d", partial.loc[["2024-01-02"]])
        stub.now = datetime(2024, 1, 4, 0, 5, tzinfo=UTC)
        stub.set_klines("spot", "BTCUSDT", btc)
        stub.set_klines("linear", "BTCUSDT", btc)
        events: list = []
        download_market_data(market, since=since, now=stub.now, exchange=exchange, assets=("BTC",),
                             progress=False, events=events)
    stored = market.load_candles("BTC/USDT")
    assert stored.loc["2024-01-02", "close"] == 44_946.91 and stored.index[-1] == _ts("2024-01-03")
    assert [e.kind for e in events] == ["candle_corrected"]
    assert "BTC/USDT 2024-01-02" in events[0].message and "close 45637.9 -> 44946.9" in events[0].message


# --- the deposit door ------------------------------------------------------------------------------

@pytest.mark.flow
@pytest.mark.parametrize("amount", [float("inf"), float("nan"), -1.0, 0.0])
def test_deposit_intake_refuses_amounts_that_are_not_a_positive_number(amount, tmp_path, monkeypatch,
                                                                      prefect_harness):
    """The deposit flow reads no market data (the next close, which splits the deposit, checks it);
    its own input is the amount."""
    from flows.deposit_intake import deposit_intake

    url = f"sqlite:///{tmp_path / 'eternal.db'}"
    monkeypatch.setenv("ETERNAL_DATABASE_URL", url)
    with pytest.raises(ConfigError, match="amount_usdt must be a positive number of USDT"):
        deposit_intake(amount_usdt=amount, reference="bad")


@pytest.mark.db
@pytest.mark.flow
def test_a_store_of_400_days_is_refused_where_it_would_hide_btcs_all_time_high(dataset, tmp_path, monkeypatch,
                                                                                 prefect_harness):
    """A store that holds 400 days (as the cycle's own refresh used to fill a fresh database): the
    all-time high would come from a look-back, not the whole history, so the daily flow refuses it
    (on 2022-06-18, close 18,970.79, BTC is 71.9 % below its 67,525.83 high of 2021-11-08, TACTICAL's
    level-1 and level-2 territory: a look-back that missed that high would see no drawdown)."""
    url = f"sqlite:///{tmp_path / 'eternal.db'}"
    monkeypatch.setenv("ETERNAL_DATABASE_URL", url)
    engine = connect(url)
    store_market(engine, dataset, "2021-05-14", "2022-06-19")
    from sqlalchemy import delete

    with engine.begin() as conn:
        conn.execute(delete(CandleRow).where(CandleRow.ts < _ts("2021-05-14")))
    with pytest.raises(DataQualityError) as error:
        daily("2022-06-19T00:05:00Z")
    message = str(error.value)
    assert "BTC/USDT: history from 2017-08-17 (all-time high of CORE, TACTICAL) failed on 2021-05-14" in message
    assert "ETH/USDT: history from 2017-08-17 (all-time high of CORE) failed on 2021-05-14" in message
    assert count(engine, OrderRow) == 0


def test_two_imports_started_together_on_a_new_database_both_land(tmp_path, shared_data):
    """Two processes that find no schema: one creates it (under the schema lock), the other waits
    and writes its rows (it used to fail with "table balances already exists")."""
    import os
    import subprocess
    import sys

    spot, funding_dir = tmp_path / "spot", tmp_path / "funding"
    for directory, names in ((spot, [BTC_FILE, ETH_FILE]), (funding_dir, [FUNDING_FILE])):
        directory.mkdir()
        for name in names:
            (directory / name).symlink_to(shared_data / name)
    url = f"sqlite:///{tmp_path / 'eternal.db'}"
    env = {**os.environ, "ETERNAL_DATABASE_URL": url}
    runs = [subprocess.Popen([sys.executable, "-m", "eternal.cli", "data", "import", str(d)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for d in (spot, funding_dir)]
    outcomes = [(run.wait(timeout=120), run.stderr.read()) for run in runs]
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    engine = connect(url)
    assert count(engine, CandleRow) == 3064 * 2 and count(engine, FundingRateRow) == 7102
