"""A local Bybit V5 public-API emulator for tests: the real ccxt client talks HTTP to 127.0.0.1.

    with BybitStub(now=datetime(2025, 1, 1, 12, tzinfo=UTC)) as stub:
        stub.set_klines("spot", "BTCUSDT", candles_df)           # index: open time, UTC
        stub.set_funding("linear", "BTCUSDT", funding_df)        # column funding_rate
        exchange = make_bybit_public(stub.url)
        ...
        assert stub.counts["/v5/market/kline"] == 2 and not stub.unknown

Served (GET): /v5/market/instruments-info (spot, linear; inverse and option answer an empty
list), /v5/market/time, /v5/market/kline and /v5/market/funding/history. The two history
endpoints behave like Bybit: newest first, at most `limit` rows (the newest ones) of the range,
kline returns the candle containing `start`, rows after the stub's `now` do not exist yet, and
funding refuses a startTime without an endTime. Bad parameters get Bybit's retCode 10001, so a
client bug shows up as an error rather than as silently different data.

Every request is recorded (`requests`, `counts` by path); unknown paths answer a Bybit-style
error with HTTP 404 and are listed in `unknown`. `fail()` injects faults: HTTP 5xx, a dropped
connection, or a Bybit error code.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pandas as pd

MINUTE_MS = 60_000
KLINE_INTERVALS_MS = {
    **{str(m): m * MINUTE_MS for m in (1, 3, 5, 15, 30, 60, 120, 240, 360, 720)},
    "D": 1440 * MINUTE_MS,
    "W": 7 * 1440 * MINUTE_MS,
}

# Minimal instruments-info rows, in the shape and with the values Bybit V5 publishes
# (https://bybit-exchange.github.io/docs/v5/market/instrument); ccxt's bybit fetch_markets reads
# symbol, baseCoin, quoteCoin, status, lotSizeFilter, priceFilter (+ contractType, settleCoin,
# leverageFilter, fundingInterval, launchTime for linear).
_SPOT_FILTERS = {
    "BTC": ("0.000001", "0.000048", "71.73956243", "0.01"),
    "ETH": ("0.00001", "0.00062", "1229.2336343", "0.01"),
    "SOL": ("0.001", "0.017", "8000", "0.01"),
}
_LINEAR_FILTERS = {  # tickSize, qtyStep, minQty, maxQty, maxLeverage, launchTime
    "BTC": ("0.10", "0.001", "0.001", "1190.000", "100.00", "1585526400000"),
    "ETH": ("0.01", "0.01", "0.01", "7240.00", "100.00", "1615766400000"),
    "SOL": ("0.010", "0.1", "0.1", "79770.0", "100.00", "1635811200000"),
}


def spot_instrument(base: str, quote: str = "USDT") -> dict:
    base_precision, min_qty, max_qty, tick = _SPOT_FILTERS.get(base, ("0.0001", "0.01", "100000", "0.0001"))
    return {
        "symbol": f"{base}{quote}", "baseCoin": base, "quoteCoin": quote, "innovation": "0",
        "status": "Trading", "marginTrading": "utaOnly", "stTag": "0",
        "lotSizeFilter": {"basePrecision": base_precision, "quotePrecision": "0.0000001",
                          "minOrderQty": min_qty, "maxOrderQty": max_qty,
                          "minOrderAmt": "5", "maxOrderAmt": "8000000"},
        "priceFilter": {"tickSize": tick},
        "riskParameters": {"priceLimitRatioX": "0.01", "priceLimitRatioY": "0.02"},
    }


def linear_instrument(base: str, quote: str = "USDT", funding_interval_min: int = 480) -> dict:
    tick, step, min_qty, max_qty, max_lev, launch = _LINEAR_FILTERS.get(
        base, ("0.0001", "1", "1", "1000000", "25.00", "1640995200000"))
    return {
        "symbol": f"{base}{quote}", "contractType": "LinearPerpetual", "status": "Trading",
        "baseCoin": base, "quoteCoin": quote, "launchTime": launch, "deliveryTime": "0",
        "deliveryFeeRate": "", "priceScale": str(len(tick.split(".")[1])),
        "leverageFilter": {"minLeverage": "1", "maxLeverage": max_lev, "leverageStep": "0.01"},
        "priceFilter": {"minPrice": tick, "maxPrice": "1999999.80", "tickSize": tick},
        "lotSizeFilter": {"maxOrderQty": max_qty, "minOrderQty": min_qty, "qtyStep": step,
                          "postOnlyMaxOrderQty": max_qty, "maxMktOrderQty": max_qty,
                          "minNotionalValue": "5"},
        "unifiedMarginTrade": True, "fundingInterval": funding_interval_min,
        "settleCoin": quote, "copyTrading": "both", "upperFundingRate": "0.005",
        "lowerFundingRate": "-0.005", "isPreListing": False, "preListingInfo": None,
    }


@dataclass(frozen=True)
class Request:
    path: str
    params: dict[str, str]
    at: float


class _Series:
    """Rows sorted by time, pre-rendered as Bybit strings (floats via repr: exact round trip)."""

    def __init__(self, stamps_ms: np.ndarray, rows: list):
        order = np.argsort(stamps_ms, kind="stable")
        self.stamps_ms = stamps_ms[order]
        self.rows = [rows[i] for i in order]

    def window(self, lo_ms: int | None, hi_ms: int, limit: int) -> list:
        """The newest `limit` rows with lo <= stamp <= hi, newest first (Bybit's order)."""
        start = 0 if lo_ms is None else int(np.searchsorted(self.stamps_ms, lo_ms, "left"))
        stop = int(np.searchsorted(self.stamps_ms, hi_ms, "right"))
        start = max(start, stop - limit)
        return self.rows[start:stop][::-1]


def _stamps_ms(index: pd.Index) -> np.ndarray:
    idx = pd.DatetimeIndex(index)
    if idx.tz is None:
        raise ValueError("stub data needs a tz-aware UTC DatetimeIndex")
    return np.asarray(idx.tz_convert("UTC").as_unit("ms").asi8, dtype=np.int64)


class BybitStub:
    """Bybit V5 public REST on 127.0.0.1:<free port>, served from a background thread."""

    def __init__(self, now: datetime | None = None, bases: tuple[str, ...] = ("BTC", "ETH", "SOL")):
        self.now = now  # the exchange clock; None = the real clock
        self.instruments = {
            "spot": [spot_instrument(b) for b in bases],
            "linear": [linear_instrument(b) for b in bases],
            "inverse": [],
            "option": [],
        }
        self.klines: dict[tuple[str, str, str], _Series] = {}
        self.funding: dict[tuple[str, str], _Series] = {}
        self.requests: list[Request] = []
        self.counts: Counter[str] = Counter()
        self.unknown: list[Request] = []
        self._faults: list[dict] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # data ----------------------------------------------------------------------------------
    def set_klines(self, category: str, symbol: str, df: pd.DataFrame, interval: str = "D") -> None:
        """Candles (index: open time; open, high, low, close, volume[, turnover])."""
        turnover = df["turnover"] if "turnover" in df else df["close"] * df["volume"]
        rows = [[None, repr(float(o)), repr(float(h)), repr(float(lo)), repr(float(c)),
                 repr(float(v)), repr(float(t))]
                for o, h, lo, c, v, t in zip(df["open"], df["high"], df["low"], df["close"],
                                             df["volume"], turnover)]
        stamps = _stamps_ms(df.index)
        for row, ts in zip(rows, stamps):
            row[0] = str(int(ts))
        with self._lock:
            self.klines[(category, symbol, interval)] = _Series(stamps, rows)

    def set_funding(self, category: str, symbol: str, df: pd.DataFrame) -> None:
        """Funding settlements (index: settlement time; column funding_rate)."""
        stamps = _stamps_ms(df.index)
        rows = [{"symbol": symbol, "fundingRate": repr(float(rate)), "fundingRateTimestamp": str(int(ts))}
                for rate, ts in zip(df["funding_rate"], stamps)]
        with self._lock:
            self.funding[(category, symbol)] = _Series(stamps, rows)

    def fail(self, path: str = "", mode: str = "503", times: int | None = None,
             ret_code: int = 10016) -> None:
        """Make requests whose path starts with `path` fail `times` times (None: always).

        mode: an HTTP status ("500", "502", "503", ...) with an HTML body like a load balancer's,
        "close" (drop the connection without answering) or "error" (HTTP 200 with `ret_code`).
        """
        with self._lock:
            self._faults.append({"path": path, "mode": mode, "times": times, "ret_code": ret_code})

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.counts.clear()
            self.unknown.clear()

    def requests_to(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    # lifecycle -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "BybitStub is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> BybitStub:
        """Serve on 127.0.0.1 (a free port) in a daemon thread; a subclass names its own
        `server_class` and `handler_class` (the emulator does)."""
        server = getattr(self, "server_class", ThreadingHTTPServer)(("127.0.0.1", 0),
                                                                    getattr(self, "handler_class", _Handler))
        server.daemon_threads = True
        server.stub = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self) -> BybitStub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # serving -------------------------------------------------------------------------------
    def now_ms(self) -> int:
        now = self.now or datetime.now(UTC)
        return int(now.timestamp() * 1000)

    def _record(self, path: str, params: dict[str, str], known: bool) -> dict | None:
        req = Request(path, params, time.monotonic())
        with self._lock:
            self.requests.append(req)
            self.counts[path] += 1
            if not known:
                self.unknown.append(req)
            for fault in self._faults:
                if path.startswith(fault["path"]) and fault["times"] != 0:
                    if fault["times"] is not None:
                        fault["times"] -= 1
                    return fault
        return None

    def handle(self, path: str, params: dict[str, str]) -> tuple[int, dict]:
        route = _ROUTES.get(path)
        if route is None:
            return 404, self._error(10404, f"stub: unknown path {path}")
        try:
            return 200, self._ok(route(self, params))
        except _BadRequest as exc:
            return 200, self._error(10001, str(exc))

    def _ok(self, result: dict) -> dict:
        return {"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}, "time": self.now_ms()}

    def _error(self, code: int, msg: str) -> dict:
        return {"retCode": code, "retMsg": msg, "result": {}, "retExtInfo": {}, "time": self.now_ms()}

    def _time(self, params: dict[str, str]) -> dict:
        ms = self.now_ms()
        return {"timeSecond": str(ms // 1000), "timeNano": str(ms * 1_000_000)}

    def _instruments(self, params: dict[str, str]) -> dict:
        category = params.get("category")
        if category not in self.instruments:
            raise _BadRequest(f"Illegal category {category!r}")
        rows = self.instruments[category]
        if params.get("status") == "PreLaunch":
            rows = []
        if "symbol" in params:
            rows = [r for r in rows if r["symbol"] == params["symbol"]]
        if "baseCoin" in params:
            rows = [r for r in rows if r["baseCoin"] == params["baseCoin"]]
        return {"category": category, "list": rows, "nextPageCursor": ""}

    def _kline(self, params: dict[str, str]) -> dict:
        category, symbol = params.get("category"), params.get("symbol")
        if category not in ("spot", "linear", "inverse"):
            raise _BadRequest(f"Illegal category {category!r}")
        interval = params.get("interval")
        if interval not in KLINE_INTERVALS_MS:
            raise _BadRequest("Invalid period!")
        limit = _int_param(params, "limit", 200, 1, 1000)
        series = self.klines.get((category, symbol, interval))
        if series is None:
            raise _BadRequest("Not supported symbols")
        end = min(_int_param(params, "end", self.now_ms()), self.now_ms())
        start = params.get("start")
        # the candle that contains `start` is included (open time > start - one interval)
        lo = None if start is None else _int_param(params, "start", 0) - KLINE_INTERVALS_MS[interval] + 1
        return {"symbol": symbol, "category": category, "list": series.window(lo, end, limit)}

    def _funding_history(self, params: dict[str, str]) -> dict:
        category, symbol = params.get("category"), params.get("symbol")
        if category not in ("linear", "inverse"):
            raise _BadRequest(f"Illegal category {category!r}")
        limit = _int_param(params, "limit", 200, 1, 200)
        if "startTime" in params and "endTime" not in params:
            raise _BadRequest("endTime is required when startTime is passed")
        series = self.funding.get((category, symbol))
        if series is None:
            raise _BadRequest("Not supported symbols")
        end = min(_int_param(params, "endTime", self.now_ms()), self.now_ms())
        lo = _int_param(params, "startTime", 0) if "startTime" in params else None
        return {"category": category, "list": series.window(lo, end, limit)}


class _BadRequest(Exception):
    pass


def _int_param(params: dict[str, str], name: str, default: int, lo: int | None = None,
               hi: int | None = None) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _BadRequest(f"params error: {name}={raw!r} is not an integer") from None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise _BadRequest(f"params error: {name}={value} outside [{lo}, {hi}]")
    return value


_ROUTES = {
    "/v5/market/time": BybitStub._time,
    "/v5/market/instruments-info": BybitStub._instruments,
    "/v5/market/kline": BybitStub._kline,
    "/v5/market/funding/history": BybitStub._funding_history,
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: ccxt's requests session reuses the connection
    disable_nagle_algorithm = True
    timeout = 10
    server_version = "bybit-stub"

    def setup(self) -> None:
        super().setup()
        # without this each response waits for the client's delayed ACK: ~44 ms per ccxt call
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args) -> None:  # noqa: A002 - quiet test output
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve()

    def do_POST(self) -> None:  # noqa: N802
        self._serve()

    def _serve(self) -> None:
        stub: BybitStub = self.server.stub  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        if self.command == "POST" and int(self.headers.get("Content-Length") or 0):
            self.rfile.read(int(self.headers["Content-Length"]))
        known = parts.path in _ROUTES and self.command == "GET"
        fault = stub._record(parts.path, params, known)
        if fault is not None:
            mode = fault["mode"]
            if mode == "close":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if mode == "error":
                return self._send(200, json.dumps(stub._error(fault["ret_code"], "System error. Please try again later.")))
            status = int(mode)
            return self._send(status, f"<html><body><h1>{status} stub fault</h1></body></html>", "text/html")
        status, body = stub.handle(parts.path, params) if known else (
            404, stub._error(10404, f"stub: unknown {self.command} {parts.path}"))
        self._send(status, json.dumps(body, separators=(",", ":")))

    def _send(self, status: int, body: str, content_type: str = "application/json") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
