"""Fear & Greed Index download, against a local alternative.me stub serving the real series."""
from __future__ import annotations

import json
import socket
import threading
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

import pandas as pd
import pytest

from eternal.config import load_settings
from eternal.data.csv_files import read_fear_greed
from eternal.data.fear_greed import fear_greed_on, fetch_fear_greed, update_fear_greed
from eternal.data.store import MarketStore
from eternal.errors import ConfigError, DataError
from eternal.store.db import connect

MISSING_DAYS = ["2018-04-14", "2018-04-15", "2018-04-16", "2024-10-26"]  # genuinely unpublished
FAST = {"timeout_s": 2.0, "retries": 2, "backoff_s": 0.0}


def alternative_me_json(df: pd.DataFrame) -> bytes:
    """The series in the API's shape: newest first, values and timestamps as strings."""
    data = [{"value": str(int(v)), "value_classification": c, "timestamp": str(int(ts.timestamp()))}
            for ts, v, c in zip(df.index[::-1], df["value"][::-1], df["classification"][::-1])]
    data[0]["time_until_update"] = "3600"   # only the newest entry carries it, as the API does
    return json.dumps({"name": "Fear and Greed Index", "data": data,
                       "metadata": {"error": None}}).encode()


class FearGreedStub:
    """http.server on 127.0.0.1 answering /fng/; `script` holds the next answers' faults in order:
    an HTTP status (503, 404, ...), "hang" (sleep past the client's timeout) or raw bytes."""

    def __init__(self, body: bytes, hang_s: float = 1.0):
        self.body, self.hang_s = body, hang_s
        self.script: list = []
        self.always = None      # a fault served to every request, after the script
        self.requests = 0
        self.release = threading.Event()
        self._lock = threading.Lock()

    def next_answer(self):
        with self._lock:
            self.requests += 1
            return self.script.pop(0) if self.script else self.always

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/fng/?limit=0&format=json"

    def __enter__(self) -> Self:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.stub = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()   # wake any handler still hanging
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        # without this each response waits for the client's delayed ACK (~40 ms)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args) -> None:  # quiet test output
        pass

    def do_GET(self) -> None:  # http.server's naming
        stub: FearGreedStub = self.server.stub  # type: ignore[attr-defined]
        answer = stub.next_answer()
        if self.path.split("?")[0] != "/fng/":
            return self._send(404, b'{"error": "not found"}')
        if answer == "hang":
            stub.release.wait(stub.hang_s)
            self.close_connection = True
            return
        if isinstance(answer, int):
            return self._send(answer, f"<html><h1>{answer}</h1></html>".encode(), "text/html")
        self._send(200, answer if isinstance(answer, bytes) else stub.body)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def csv_series(shared_data) -> pd.DataFrame:
    return read_fear_greed(shared_data / "fear_greed_1d.csv")


@pytest.fixture(scope="module")
def payload(csv_series) -> bytes:
    return alternative_me_json(csv_series)


@pytest.fixture
def stub(payload):
    with FearGreedStub(payload) as s:
        yield s


@pytest.fixture
def fetched(stub, loopback_only) -> pd.DataFrame:
    df = fetch_fear_greed(stub.url, **FAST)
    assert loopback_only and all(addr[0] == "127.0.0.1" for addr in loopback_only)
    return df


# parsing the real series ------------------------------------------------------------------------
def test_fetched_frame_equals_the_csv_series(fetched, csv_series):
    assert fetched.index.name == "timestamp" and str(fetched.index.tz) == "UTC"
    assert fetched.index.is_monotonic_increasing and fetched.index.is_unique
    assert fetched["value"].dtype == "int64"
    pd.testing.assert_frame_equal(fetched, csv_series, check_freq=False)


def test_named_days_carry_the_published_values(fetched):
    day = pd.Timestamp("2022-06-18", tz="UTC")
    assert fetched.at[day, "value"] == 6 and fetched.at[day, "classification"] == "Extreme Fear"
    assert fear_greed_on(fetched, date(2022, 6, 18)) == 6
    assert fear_greed_on(fetched, "2020-03-12") == 14
    assert fear_greed_on(fetched, pd.Timestamp("2020-03-12 15:30", tz="UTC")) == 14  # the day containing it


@pytest.mark.parametrize("day", MISSING_DAYS)
def test_unpublished_days_stay_missing_and_mean_no_signal(fetched, day):
    ts = pd.Timestamp(day, tz="UTC")
    assert ts not in fetched.index
    assert fear_greed_on(fetched, day) is None
    # neighbours exist: the gap is a gap, not the edge of the series
    assert fetched.index[0] < ts < fetched.index[-1]


def test_duplicate_days_are_kept_once_newest_answer_first(stub):
    data = [{"value": "40", "value_classification": "Fear", "timestamp": "1655510400"},
            {"value": "6", "value_classification": "Extreme Fear", "timestamp": "1655510400"},
            {"value": "10", "value_classification": "Extreme Fear", "timestamp": "1655424000"}]
    stub.always = json.dumps({"data": data, "metadata": {"error": None}}).encode()
    df = fetch_fear_greed(stub.url, **FAST)
    assert list(df["value"]) == [10, 40] and df.index.is_monotonic_increasing


# retries and failures ---------------------------------------------------------------------------
def test_a_503_is_retried_and_the_retry_succeeds(stub, csv_series):
    stub.script = [503]
    df = fetch_fear_greed(stub.url, **FAST)
    assert stub.requests == 2
    assert len(df) == len(csv_series)


def test_a_stub_that_never_answers_fails_after_retries_plus_one_tries(stub):
    stub.always = "hang"
    with pytest.raises(DataError) as err:
        fetch_fear_greed(stub.url, timeout_s=0.2, retries=2, backoff_s=0.0)
    assert stub.requests == 3
    msg = str(err.value)
    assert f"Fear & Greed index unreachable at {stub.url} after 3 tries" in msg
    assert "Timeout" in msg and "ETERNAL_DATA__FEAR_GREED_URL" in msg


def test_persistent_5xx_fails_naming_the_status(stub):
    stub.always = 502
    with pytest.raises(DataError, match=r"after 2 tries: HTTP 502 Bad Gateway"):
        fetch_fear_greed(stub.url, timeout_s=2.0, retries=1, backoff_s=0.0)
    assert stub.requests == 2


def test_a_404_is_not_retried(stub):
    stub.script = [404]
    with pytest.raises(DataError, match=r"refused the request: HTTP 404 Not Found"):
        fetch_fear_greed(stub.url, **FAST)
    assert stub.requests == 1


def test_a_closed_port_is_unreachable_with_a_clear_error():
    with socket.socket() as s:   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/fng/"
    with pytest.raises(DataError, match=rf"unreachable at {url} after 2 tries: ConnectError"):
        fetch_fear_greed(url, timeout_s=1.0, retries=1, backoff_s=0.0)


def test_credentials_in_the_url_never_reach_the_message():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError) as err:
        fetch_fear_greed(f"http://user:s3cret@127.0.0.1:{port}/fng/", timeout_s=1.0, retries=0, backoff_s=0)
    assert "s3cret" not in str(err.value) and "unreachable" in str(err.value)


# malformed payloads -----------------------------------------------------------------------------
def _entry(**over) -> dict:
    return {"value": "6", "value_classification": "Extreme Fear", "timestamp": "1655510400"} | over


@pytest.mark.parametrize(("body", "problem"), [
    (b"<html>maintenance</html>", "not JSON"),
    (b'{"data": [{"value": "6"', "not JSON"),
    (b'{"name": "Fear and Greed Index"}', "no 'data' list"),
    (b'{"data": [], "metadata": {"error": null}}', "'data' list is empty"),
    (b'{"data": [], "metadata": {"error": "Limit exceeded"}}', "reported an error: Limit exceeded"),
    (json.dumps({"data": [_entry(value="6.5")]}).encode(), r"value='6.5' is not an integer"),
    (json.dumps({"data": [_entry(value=None)]}).encode(), r"value=None is not an integer"),
    (json.dumps({"data": [_entry(timestamp="yesterday")]}).encode(), r"timestamp='yesterday' is not unix"),
    (json.dumps({"data": [_entry(timestamp="1655510401")]}).encode(), r"is not 00:00 UTC"),
    (json.dumps({"data": [_entry(value_classification="")]}).encode(), r"value_classification=''"),
    (json.dumps({"data": ["6"]}).encode(), r"data\[0\] is not an object"),
])
def test_malformed_payloads_are_refused_naming_the_problem(stub, body, problem):
    stub.always = body
    with pytest.raises(DataError, match=problem) as err:
        fetch_fear_greed(stub.url, **FAST)
    assert stub.url in str(err.value)
    assert stub.requests == 1   # a bad answer is not a transient fault


@pytest.mark.parametrize("value", ["150", "-1"])
def test_a_value_outside_0_100_is_refused_by_the_suite_of_every_door_and_nothing_is_stored(stub, tmp_path, value):
    """The index of 2022-06-18 (real value 6) read as 150 or -1: the same rule and message as an import."""
    from eternal.errors import DataQualityError

    stub.always = json.dumps({"data": [_entry(value=value)]}).encode()
    store = MarketStore(connect(f"sqlite:///{tmp_path / 'fg.db'}"))
    with pytest.raises(DataQualityError) as err:
        update_fear_greed(store, stub.url, **FAST)
    assert str(err.value) == (f"data quality failed: Fear & Greed ({stub.url}): value in 0..100 failed on "
                              "2022-06-18T00:00:00+00:00 (1 row)")
    assert len(store.load_fear_greed()) == 0


# storage and CLI --------------------------------------------------------------------------------
def test_upserting_twice_writes_no_duplicates(stub, tmp_path, csv_series):
    store = MarketStore(connect(f"sqlite:///{tmp_path / 'fg.db'}"))
    assert update_fear_greed(store, stub.url, **FAST) == len(csv_series)
    update_fear_greed(store, stub.url, **FAST)
    stored = store.load_fear_greed()
    assert len(stored) == len(csv_series) and stored.index.is_unique
    assert fear_greed_on(stored, "2022-06-18") == 6
    assert all(fear_greed_on(stored, d) is None for d in MISSING_DAYS)


def test_nothing_is_written_when_the_payload_is_refused(stub, tmp_path):
    store = MarketStore(connect(f"sqlite:///{tmp_path / 'fg.db'}"))
    stub.always = json.dumps({"data": [_entry(), _entry(value="150", timestamp="1655424000")]}).encode()
    with pytest.raises(DataError):
        update_fear_greed(store, stub.url, **FAST)
    assert store.load_fear_greed().empty


def test_cli_data_fear_greed_downloads_and_stores(stub, tmp_path, monkeypatch, capsys, csv_series):
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("ETERNAL_DATA__FEAR_GREED_URL", stub.url)
    monkeypatch.setenv("ETERNAL_DATABASE_URL", db)
    from eternal.cli import main

    assert main(["data", "fear-greed"]) == 0
    assert f"fear & greed: {len(csv_series)} rows written" in capsys.readouterr().out
    assert len(MarketStore(connect(db)).load_fear_greed()) == len(csv_series)


def test_cli_reports_an_unreachable_index_as_an_error(stub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ETERNAL_DATA__FEAR_GREED_URL", stub.url)
    monkeypatch.setenv("ETERNAL_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("ETERNAL_DATA__FEAR_GREED_TIMEOUT_S", "0.2")
    monkeypatch.setenv("ETERNAL_DATA__FEAR_GREED_RETRIES", "0")
    stub.always = 503
    from eternal.cli import main

    assert main(["data", "fear-greed"]) == 2
    err = capsys.readouterr().err
    assert f"error: Fear & Greed index unreachable at {stub.url} after 1 tries: HTTP 503" in err


def test_settings_defaults_and_bounds(monkeypatch):
    data = load_settings().data
    assert data.fear_greed_url.get_secret_value() == "https://api.alternative.me/fng/?limit=0&format=json"
    assert (data.fear_greed_timeout_s, data.fear_greed_retries) == (10.0, 3)
    monkeypatch.setenv("ETERNAL_DATA__FEAR_GREED_TIMEOUT_S", "0")
    with pytest.raises(ConfigError, match="ETERNAL_DATA__FEAR_GREED_TIMEOUT_S"):
        load_settings()
    monkeypatch.setenv("ETERNAL_DATA__FEAR_GREED_TIMEOUT_S", "1")
    monkeypatch.setenv("ETERNAL_DATA__FEAR_GREED_RETRIES", "-1")
    with pytest.raises(ConfigError, match="ETERNAL_DATA__FEAR_GREED_RETRIES"):
        load_settings()
