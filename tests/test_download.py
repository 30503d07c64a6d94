"""`eternal data download`: the real ccxt Bybit client against the local V5 emulator, fed with real
daily candles and funding settlements from ../shared/data (Binance history standing in for Bybit's).
"""
from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from eternal.data.download import CANDLE_COLUMNS, download_market_data, make_bybit_public
from eternal.errors import ConfigError, DataError
try:  # tests/ as a package (python -m pytest from the repo root) or as rootdir-less modules
    from tests.bybit_stub import BybitStub
except ImportError:
    from bybit_stub import BybitStub

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ASSETS = ("BTC", "ETH", "SOL")
SINCE = datetime(2022, 1, 1, tzinfo=UTC)
NOW = datetime(2024, 12, 31, 12, tzinfo=UTC)      # 2024-12-31 is the open day: not stored
LATER = datetime(2025, 1, 10, 6, tzinfo=UTC)       # after the stub gained ten more days
DAY = timedelta(days=1)
KLINE, FUNDING = "/v5/market/kline", "/v5/market/funding/history"


# real data ---------------------------------------------------------------------------------
def _read(name: str) -> pd.DataFrame:
    df = pd.read_csv(DATA / name, index_col="timestamp", parse_dates=["timestamp"])
    assert str(df.index.tz) == "UTC"
    return df.drop(columns=["symbol"], errors="ignore").astype("float64")


@pytest.fixture(scope="module")
def market() -> dict[tuple[str, str], pd.DataFrame]:
    """(category, Bybit symbol) -> candles, and ("funding", symbol) -> settlements, 2022-2025."""
    frames = {}
    for asset in ASSETS:
        sym = f"{asset}USDT"
        frames["spot", sym] = _read(f"ohlcv_1d_{asset}-USDT_spot.csv").loc["2021-11":"2025-01"]
        frames["linear", sym] = _read(f"ohlcv_1d_{asset}-USDT_perp.csv").loc["2021-11":"2025-01"]
        frames["funding", sym] = _read(f"funding_8h_{sym}_perp.csv").loc["2021-11":"2025-01"]
    return frames


def _feed(stub: BybitStub, market, upto: datetime) -> None:
    """Serve everything up to `upto` (the open day's candle included, as Bybit does)."""
    for (category, sym), df in market.items():
        df = df.loc[:upto]
        if category == "funding":
            stub.set_funding("linear", sym, df)
        else:
            stub.set_klines(category, sym, df)


def _expected(market, since: datetime, now: datetime) -> dict[str, pd.DataFrame]:
    today = pd.Timestamp(now).floor("D")
    out = {}
    for asset in ASSETS:
        sym = f"{asset}USDT"
        for category, symbol in (("spot", f"{asset}/USDT"), ("linear", f"{asset}/USDT:USDT")):
            df = market[category, sym]
            out[f"{symbol} 1d"] = df[(df.index >= since) & (df.index < today)][CANDLE_COLUMNS]
        df = market["funding", sym]
        out[f"{asset}/USDT:USDT funding"] = df[(df.index >= since) & (df.index <= now)]
    return out


# the fake store ----------------------------------------------------------------------------
class MemorySink:
    """MarketSink in memory; checks every frame it is given against the DataFrame conventions."""

    def __init__(self):
        self.frames: dict[str, pd.DataFrame] = {}
        self.calls: list[tuple[str, int]] = []

    def _last(self, key: str) -> datetime | None:
        df = self.frames.get(key)
        return None if df is None or df.empty else df.index[-1].to_pydatetime()

    def _upsert(self, key: str, df: pd.DataFrame, columns: list[str]) -> int:
        assert isinstance(df.index, pd.DatetimeIndex) and str(df.index.tz) == "UTC"
        assert df.index.name == "timestamp" and df.index.is_monotonic_increasing and df.index.is_unique
        assert list(df.columns) == columns and all(str(t) == "float64" for t in df.dtypes)
        old = self.frames.get(key)
        merged = df if old is None else pd.concat([old, df])
        self.frames[key] = merged[~merged.index.duplicated(keep="last")].sort_index()
        self.calls.append((key, len(df)))
        return len(df)

    def last_candle_ts(self, symbol: str, timeframe: str) -> datetime | None:
        return self._last(f"{symbol} {timeframe}")

    def upsert_candles(self, symbol: str, timeframe: str, df: pd.DataFrame) -> int:
        return self._upsert(f"{symbol} {timeframe}", df, CANDLE_COLUMNS)

    def _load(self, key: str, columns: list[str], start, end) -> pd.DataFrame:
        df = self.frames.get(key)
        if df is None:
            return pd.DataFrame(columns=columns, dtype="float64", index=pd.DatetimeIndex([], tz="UTC", name="timestamp"))
        return df[(df.index >= (start or df.index[0])) & ((df.index < end) if end is not None else True)]

    def load_candles(self, symbol: str, timeframe: str = "1d", start=None, end=None) -> pd.DataFrame:
        return self._load(f"{symbol} {timeframe}", CANDLE_COLUMNS, start, end)

    def load_funding(self, symbol: str, start=None, end=None) -> pd.DataFrame:
        return self._load(f"{symbol} funding", ["funding_rate"], start, end)

    def last_funding_ts(self, symbol: str) -> datetime | None:
        return self._last(f"{symbol} funding")

    def upsert_funding(self, symbol: str, df: pd.DataFrame) -> int:
        return self._upsert(f"{symbol} funding", df, ["funding_rate"])


# fixtures ----------------------------------------------------------------------------------
@pytest.fixture
def stub(market):
    with BybitStub(now=NOW) as stub:
        _feed(stub, market, NOW)
        yield stub
    assert not stub.unknown, f"ccxt asked the stub for unserved paths: {stub.unknown}"


@pytest.fixture
def exchange(stub):
    exchange = make_bybit_public(stub.url)
    exchange.enableRateLimit = False  # the live client keeps ccxt's pacing; the stub needs none
    return exchange


def _download(sink, exchange, now=NOW, since=SINCE, **kw):
    return download_market_data(sink, since=since, now=now, exchange=exchange, progress=False, **kw)


def _assert_stored(sink: MemorySink, expected: dict[str, pd.DataFrame]) -> None:
    assert set(sink.frames) == set(expected)
    for key, want in expected.items():
        pd.testing.assert_frame_equal(sink.frames[key], want, check_exact=True, check_freq=False,
                                      check_index_type=False, obj=key)


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


# tests -------------------------------------------------------------------------------------
def test_download_from_since_stores_exactly_the_exchange_rows_in_pages(stub, exchange, market):
    sink = MemorySink()
    written = _download(sink, exchange)

    expected = _expected(market, SINCE, NOW)
    _assert_stored(sink, expected)
    assert written == {key: len(df) for key, df in expected.items()}
    assert written["BTC/USDT 1d"] == (NOW.date() - SINCE.date()).days == 1095
    # 1095 days do not fit one 1000-candle page: two pages for each of the six candle series
    pages = stub.requests_to(KLINE)
    assert len(pages) == 12
    assert {(r.params["category"], r.params["symbol"]) for r in pages} == {
        (c, f"{a}USDT") for a in ASSETS for c in ("spot", "linear")}
    assert all(r.params["interval"] == "D" and r.params["limit"] == "1000" for r in pages)
    # funding pages hold at most 200 settlements: 3 x 3,290 settlements need >= 17 pages each
    assert stub.counts[FUNDING] >= 3 * 17
    assert all(int(r.params["limit"]) <= 200 for r in stub.requests_to(FUNDING))
    assert stub.counts["/v5/market/instruments-info"] == 3  # spot, linear, linear PreLaunch


def test_the_open_day_candle_is_never_stored(stub, exchange):
    sink = MemorySink()
    _download(sink, exchange)
    for key in ("BTC/USDT 1d", "SOL/USDT:USDT 1d"):
        assert sink.frames[key].index[-1] == pd.Timestamp("2024-12-30", tz="UTC")
    # the stub does serve the open candle: the downloader, not the exchange, drops it
    assert stub.klines["spot", "BTCUSDT", "D"].rows[-1][0] == str(_ms(datetime(2024, 12, 31, tzinfo=UTC)))


@pytest.mark.parametrize("now, last_closed", [
    (datetime(2024, 12, 31, 0, 0, tzinfo=UTC), "2024-12-30"),                   # closed on the dot
    (datetime(2024, 12, 30, 23, 59, 59, 999000, tzinfo=UTC), "2024-12-29"),     # 1 ms short
])
def test_a_candle_counts_as_closed_from_its_close_time(stub, exchange, now, last_closed):
    stub.now = now
    sink = MemorySink()
    _download(sink, exchange, now=now, since=datetime(2024, 12, 1, tzinfo=UTC), assets=("BTC",))
    assert sink.frames["BTC/USDT 1d"].index[-1] == pd.Timestamp(last_closed, tz="UTC")
    assert sink.frames["BTC/USDT:USDT funding"].index[-1] <= pd.Timestamp(now)


def test_second_run_resumes_after_the_last_stored_row(stub, exchange, market):
    sink = MemorySink()
    _download(sink, exchange)
    last = {key: df.index[-1] for key, df in sink.frames.items()}

    # same day, later: nothing new has closed or settled
    stub.reset_counts()
    later_same_day = NOW + timedelta(hours=3)
    stub.now = later_same_day
    assert set(_download(sink, exchange, now=later_same_day).values()) == {0}
    assert stub.counts[KLINE] == 0  # the next candle (2024-12-31) has not closed: nothing to ask
    for r in stub.requests_to(FUNDING):
        assert int(r.params["startTime"]) > _ms(last[f"{r.params['symbol'][:-4]}/USDT:USDT funding"])

    # ten more days on the exchange: only those are fetched and written
    _feed(stub, market, LATER)
    stub.now = LATER
    stub.reset_counts()
    written = _download(sink, exchange, now=LATER)
    expected = _expected(market, SINCE, LATER)
    _assert_stored(sink, expected)
    for key, df in expected.items():
        assert written[key] == int((df.index > last[key]).sum())
    assert written["BTC/USDT 1d"] == 10  # 2024-12-31 .. 2025-01-09; 2025-01-10 is still open
    assert len(stub.requests_to(KLINE)) == 6  # one page per candle series
    # from the last stored candle (2024-12-30), fetched again to see it is the exchange's final one
    assert {int(r.params["start"]) for r in stub.requests_to(KLINE)} == {_ms(datetime(2024, 12, 30, tzinfo=UTC))}
    for r in stub.requests_to(FUNDING):
        assert int(r.params["startTime"]) > _ms(last[f"{r.params['symbol'][:-4]}/USDT:USDT funding"])


def test_funding_pages_backwards_when_settlements_come_faster_than_8h(market):
    # SOLUSDT settled every 2 h during the FTX crash (2022-11-09 .. 2022-11-18): a 199-interval
    # window then holds more than one page of settlements
    now = datetime(2023, 1, 15, tzinfo=UTC)
    since = datetime(2022, 10, 1, tzinfo=UTC)
    with BybitStub(now=now) as stub:
        _feed(stub, market, now)
        exchange = make_bybit_public(stub.url)
        exchange.enableRateLimit = False
        sink = MemorySink()
        _download(sink, exchange, now=now, since=since, assets=("SOL",))
        assert not stub.unknown
        # two 199 x 8 h windows, and the first (with the crash) needed a second, older page
        assert stub.counts[FUNDING] == 3
    want = market["funding", "SOLUSDT"].loc[since:now]
    assert len(want) > 200 and (want.index.to_series().diff() < pd.Timedelta(hours=8)).sum() > 90
    pd.testing.assert_frame_equal(sink.frames["SOL/USDT:USDT funding"], want, check_exact=True,
                                  check_freq=False, check_index_type=False)


@pytest.mark.parametrize("mode, kind", [("503", "ExchangeNotAvailable"), ("502", "ExchangeNotAvailable"),
                                        ("close", "NetworkError"), ("error", "ExchangeError")])
def test_exchange_failure_raises_data_error_naming_the_series(stub, exchange, mode, kind):
    stub.fail(KLINE, mode)
    with pytest.raises(DataError) as info:
        _download(MemorySink(), exchange)
    message = str(info.value)
    assert "BTC/USDT 1d candles from 2022-01-01" in message
    assert "rerun" in message
    assert info.value.__cause__ is None   # the ccxt error (its URL may carry credentials) is not chained
    if kind != "NetworkError":
        assert kind in message


def test_markets_unavailable_raises_data_error(stub, exchange):
    stub.fail("/v5/market/instruments-info", "close")
    with pytest.raises(DataError, match="loading Bybit markets.*network connection"):
        _download(MemorySink(), exchange)


def test_failed_download_keeps_earlier_pages_and_a_rerun_completes(stub, exchange, market):
    sink = MemorySink()
    stub.fail(FUNDING, "503", times=1)  # the first funding request (BTC) fails
    with pytest.raises(DataError, match="BTC/USDT:USDT funding history"):
        _download(sink, exchange)
    assert set(sink.frames) == {"BTC/USDT 1d", "BTC/USDT:USDT 1d"}  # both written before it
    _download(sink, exchange)
    _assert_stored(sink, _expected(market, SINCE, NOW))


def test_progress_goes_to_stderr_only(stub, exchange, capsys):
    download_market_data(MemorySink(), since=datetime(2024, 12, 1, tzinfo=UTC), now=NOW,
                         exchange=exchange, assets=("ETH",), progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "bybit" in err and "3/3" in err


def test_naive_or_inverted_dates_are_refused_before_any_request(stub, exchange):
    with pytest.raises(ConfigError, match="timezone-aware"):
        _download(MemorySink(), exchange, since=datetime(2024, 1, 1))
    with pytest.raises(ConfigError, match="not before now"):
        _download(MemorySink(), exchange, since=NOW + DAY)
    assert not stub.requests


def test_no_request_leaves_loopback(stub, exchange, loopback_only):
    assert {url for url in exchange.urls["api"].values()} == {stub.url}
    _download(MemorySink(), exchange, since=datetime(2024, 12, 1, tzinfo=UTC), assets=("BTC",))
    assert loopback_only and all(address[0] == "127.0.0.1" for address in loopback_only)
    with pytest.raises(AssertionError, match="tests stay on 127.0.0.1"):  # the guard does bite
        socket.create_connection(("192.0.2.1", 443), timeout=0.01)
