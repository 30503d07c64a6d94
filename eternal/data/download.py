"""Download Bybit public market data into the market store: `eternal data download --since DATE`.

Series per asset: the daily candles of the spot pair and of the USDT linear perp, and the perp's
funding rate history. Every series is paged forward from where the store stops (last stored
timestamp + one period) or from `since` when the store has none of it, up to `now`. Only closed
daily candles are kept, by the exchange's clock, never ours: a candle is stored once its open time
plus one day is at or before Bybit's server time (and `now`). When there is something new to fetch,
the last stored candle is fetched again; if the exchange's final candle differs from it (it was
stored by an older version or while the clock was wrong), it is corrected, with a
`candle_corrected` event. Every page is checked, together with the stored row before it, by the
same suite as an import or a backfill before it is written.

Each series is written once whole, so an interrupted download resumes after the last series it
finished and nothing half of a series is stored.
Public endpoints only: the client carries no keys and never asks for private data.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Protocol

import ccxt
import pandas as pd
from tqdm import tqdm

from eternal.errors import ConfigError, DataError, DataUnreachable
from eternal.models import QUOTE

TIMEFRAME = "1d"
DAY_MS = 86_400_000
KLINE_PAGE_LIMIT = 1000    # Bybit V5 /v5/market/kline: max rows per request
FUNDING_PAGE_LIMIT = 200   # Bybit V5 /v5/market/funding/history: max rows per request
DEFAULT_FUNDING_INTERVAL_MIN = 480  # 8 h, when the instrument does not say
CANDLE_COLUMNS = ["open", "high", "low", "close", "volume"]


class MarketSink(Protocol):
    """Where downloaded data goes (eternal.data.store.MarketStore implements it)."""

    def last_candle_ts(self, symbol: str, timeframe: str) -> datetime | None: ...

    def upsert_candles(self, symbol: str, timeframe: str, df: pd.DataFrame) -> int: ...

    def last_funding_ts(self, symbol: str) -> datetime | None: ...

    def upsert_funding(self, symbol: str, df: pd.DataFrame) -> int: ...

    def load_candles(self, symbol: str, timeframe: str = "1d", start: datetime | None = None,
                     end: datetime | None = None) -> pd.DataFrame: ...

    def load_funding(self, symbol: str, start: datetime | None = None,
                     end: datetime | None = None) -> pd.DataFrame: ...


def make_bybit_public(base_url: str | None = None) -> ccxt.bybit:
    """A keyless ccxt Bybit client that only loads spot and linear markets.

    `base_url` (tests) points every API host at an emulator, e.g. "http://127.0.0.1:8123".
    """
    exchange = ccxt.bybit({
        "enableRateLimit": True,
        # without keys ccxt skips the private coin-info call anyway; saying so keeps it that way
        "has": {"fetchCurrencies": False},
        "options": {
            # spot + linear are all we trade; inverse and the option chains cost 8 more requests
            "fetchMarkets": {"types": ["spot", "linear"], "usePrivateInstrumentsInfo": False},
            "adjustForTimeDifference": False,
            "enableDemoTrading": False,
        },
    })
    if base_url is not None:
        base_url = base_url.rstrip("/")
        for section in ("api", "test", "demotrading"):
            urls = exchange.urls.get(section)
            if isinstance(urls, dict):
                for key in urls:
                    urls[key] = base_url
    return exchange


def download_market_data(sink: MarketSink, since: datetime, now: datetime,
                         exchange: ccxt.bybit | None = None,
                         assets: Iterable[str] = ("BTC", "ETH", "SOL"),
                         progress: bool = True, events: list | None = None,
                         max_daily_move: float = 0.60, max_funding_rate: float = 0.03) -> dict[str, int]:
    """Bring the store up to date with Bybit; returns rows written (new or corrected) per series.

    `events`: where `candle_corrected` events go (eternal.models.Event), for the caller to store.
    `max_daily_move`, `max_funding_rate`: the suite's bounds (settings.data), see
    eternal.data.quality; a page that fails is not written (DataQualityError naming the series).
    Series keys: "BTC/USDT 1d", "BTC/USDT:USDT 1d", "BTC/USDT:USDT funding", ...
    Raises DataError when Bybit cannot be reached or answers with an error; series written before
    the failure stay stored (each whole), so rerunning resumes from there.
    """
    since, now = _aware("since", since), _aware("now", now)
    if since >= now:
        raise ConfigError(f"download since {since:%Y-%m-%d %H:%M}Z is not before now "
                          f"{now:%Y-%m-%d %H:%M}Z: pass an earlier --since")
    assets = [a.strip().upper() for a in assets]
    if not assets or not all(assets):
        raise ConfigError(f"no assets to download ({assets!r}): pass e.g. ('BTC', 'ETH', 'SOL')")
    exchange = exchange or make_bybit_public()

    _call(exchange.load_markets, "loading Bybit markets (instruments-info)")
    server_ms = int(_call(exchange.fetch_time, "reading Bybit's server time"))
    # closed means closed at the exchange: our clock may run ahead of it
    now = min(now, datetime.fromtimestamp(server_ms / 1000, UTC))
    bounds = {"max_daily_move": max_daily_move, "max_funding_rate": max_funding_rate}
    events = [] if events is None else events
    series: list[tuple[str, str]] = []  # (kind, symbol)
    for asset in assets:
        spot, perp = f"{asset}/{QUOTE}", f"{asset}/{QUOTE}:{QUOTE}"
        for symbol in (spot, perp):
            if symbol not in exchange.markets:
                raise DataError(f"Bybit lists no market {symbol}: check the asset name {asset!r} "
                                f"or whether Bybit delisted it")
        series += [("candles", spot), ("candles", perp), ("funding", perp)]

    written: dict[str, int] = {}
    with tqdm(total=len(series), unit="series", desc="bybit", file=sys.stderr,
              disable=not progress, dynamic_ncols=True) as bar:
        for kind, symbol in series:
            if kind == "candles":
                key, pages = f"{symbol} {TIMEFRAME}", _candle_pages(exchange, sink, symbol, since, now, events)
            else:
                key, pages = f"{symbol} funding", _funding_pages(exchange, sink, symbol, since, now)
            written[key] = 0
            bar.set_postfix_str(key)
            # a series is checked whole (with the stored row before it) and written in one go:
            # never half of it, and the suite runs once per series, not per page
            got = []
            for df in pages:
                if not df.empty:
                    got.append(df)
                    bar.set_postfix_str(f"{key} {sum(map(len, got))} rows to {df.index[-1]:%Y-%m-%d}")
            if got:
                new = pd.concat(got)
                if kind == "candles":
                    tail = sink.load_candles(symbol, TIMEFRAME, start=new.index[0] - timedelta(days=1),
                                             end=new.index[0])
                    _check({symbol: pd.concat([tail, new]) if len(tail) else new}, {}, bounds)
                    written[key] = int(sink.upsert_candles(symbol, TIMEFRAME, new))
                else:
                    tail = sink.load_funding(symbol, start=new.index[0] - timedelta(days=1), end=new.index[0])
                    interval_h = _int_or(exchange.market(symbol)["info"].get("fundingInterval"),
                                         DEFAULT_FUNDING_INTERVAL_MIN) / 60
                    _check({}, {symbol: pd.concat([tail.iloc[-1:], new]) if len(tail) else new}, bounds,
                           {symbol: interval_h})
                    written[key] = int(sink.upsert_funding(symbol, new))
            bar.update(1)
    return written


# candles -----------------------------------------------------------------------------------
def _candle_pages(exchange: ccxt.bybit, sink: MarketSink, symbol: str, since: datetime, now: datetime,
                  events: list) -> Iterator[pd.DataFrame]:
    """Closed daily candles after the last stored one (and the last stored one again, corrected
    when the exchange's differs), one checked DataFrame per Bybit page."""
    from eternal.models import Event

    last = _stored("last_candle_ts", sink.last_candle_ts(symbol, TIMEFRAME))
    start_ms = _ms(last) + DAY_MS if last is not None else _ceil_day_ms(since)
    today_ms = _ms(now) // DAY_MS * DAY_MS  # open time of the still-open candle: never stored
    what = f"{symbol} {TIMEFRAME} candles"
    revisit = None
    if last is not None and start_ms < today_ms:
        revisit = sink.load_candles(symbol, TIMEFRAME, start=last)
        start_ms -= DAY_MS                    # the last stored candle again: is it the final one?
    while start_ms < today_ms:
        # Bybit returns the newest `limit` candles of [start, end]: a window of exactly one page
        # makes the paging deterministic whatever the server does with a larger range.
        end_ms = min(start_ms + KLINE_PAGE_LIMIT * DAY_MS, today_ms) - 1
        rows = _call(exchange.fetch_ohlcv, f"downloading {what} from {_iso(start_ms)}",
                     symbol, TIMEFRAME, start_ms, KLINE_PAGE_LIMIT, {"until": end_ms})
        page = _candle_frame([r for r in rows if start_ms <= r[0] and r[0] + DAY_MS <= _ms(now)], what)
        if revisit is not None and len(revisit) and len(page) and page.index[0] == revisit.index[0]:
            ours, theirs = revisit.iloc[0], page.iloc[0]
            if (ours != theirs).any():
                changed = {c: (float(ours[c]), float(theirs[c])) for c in CANDLE_COLUMNS if ours[c] != theirs[c]}
                events.append(Event(now, "candle_corrected",
                                    f"{symbol} {page.index[0]:%Y-%m-%d}: the stored candle differed from the exchange's "
                                    f"final one and was corrected (" + ", ".join(
                                        f"{c} {a:g} -> {b:g}" for c, (a, b) in changed.items()) + ")",
                                    None, "warning", {"symbol": symbol, "day": page.index[0].isoformat(),
                                                      "changed": changed}))
            else:
                page = page.iloc[1:]          # the same: nothing to write
        yield page
        start_ms = end_ms + 1


def _candle_frame(rows: list[list], what: str) -> pd.DataFrame:
    df = pd.DataFrame([r[1:6] for r in rows], columns=CANDLE_COLUMNS, dtype="float64")
    df.index = pd.DatetimeIndex(pd.to_datetime([r[0] for r in rows], unit="ms", utc=True),
                                name="timestamp")
    # duplicates, gaps and missing values are left for the suite to report, as at every door
    return df.sort_index(kind="stable")


# funding -----------------------------------------------------------------------------------
def _funding_pages(exchange: ccxt.bybit, sink: MarketSink, symbol: str,
                   since: datetime, now: datetime) -> Iterator[pd.DataFrame]:
    """Funding settlements after the last stored one up to `now`, one checked DataFrame per window."""
    last = _stored("last_funding_ts", sink.last_funding_ts(symbol))
    # +1 ms, not + one interval: Bybit shortens the interval in stress (SOL in Nov 2022 settled
    # every 2 h), so the next settlement may come sooner than the nominal period
    start_ms = _ms(last) + 1 if last is not None else _ms(since)
    now_ms = _ms(now)
    interval_min = _int_or(exchange.market(symbol)["info"].get("fundingInterval"),
                           DEFAULT_FUNDING_INTERVAL_MIN)
    # one page short of the limit: a window of 199 regular intervals holds 199 settlements, so a
    # full page (200) only happens when the interval was shortened, and then we page backwards
    window_ms = (FUNDING_PAGE_LIMIT - 1) * interval_min * 60_000
    what = f"{symbol} funding history"
    while start_ms <= now_ms:
        end_ms = min(start_ms + window_ms - 1, now_ms)
        rates: dict[int, float | None] = {}
        upper_ms = end_ms
        while True:  # Bybit answers newest-first: walk back until the window is exhausted
            page = _call(exchange.fetch_funding_rate_history,
                         f"downloading {what} from {_iso(start_ms)}",
                         symbol, start_ms, FUNDING_PAGE_LIMIT, {"until": upper_ms})
            inside = [p for p in page if p["timestamp"] is not None
                      and start_ms <= p["timestamp"] <= upper_ms]
            for p in inside:
                rates[int(p["timestamp"])] = p["fundingRate"]
            if len(page) < FUNDING_PAGE_LIMIT or not inside:
                break
            upper_ms = min(p["timestamp"] for p in inside) - 1
            if upper_ms < start_ms:
                break
        yield _funding_frame(rates, what)
        start_ms = end_ms + 1


def _funding_frame(rates: dict[int, float | None], what: str) -> pd.DataFrame:
    stamps = sorted(rates)
    df = pd.DataFrame({"funding_rate": [rates[t] for t in stamps]}, dtype="float64",
                      index=pd.DatetimeIndex(pd.to_datetime(stamps, unit="ms", utc=True),
                                             name="timestamp"))
    if df["funding_rate"].isna().any():
        raise DataError(f"Bybit sent {what} without a rate at "
                        f"{list(df.index[df['funding_rate'].isna()][:3])}: rerun later")
    return df


# helpers -----------------------------------------------------------------------------------
def _check(candles: dict, funding: dict, bounds: dict, intervals: dict | None = None) -> None:
    """The suite of every door (eternal.data.quality) on a page and the stored row before it."""
    from eternal.data.quality import validate_market_data

    names = {sym: f"{sym} (Bybit)" for sym in (*candles, *funding)}
    validate_market_data(candles, funding, None, names=names, funding_intervals=intervals, **bounds)


def _call(fn, doing: str, *args):
    """Run one ccxt call; its failures become a DataError saying what to do."""
    try:
        return fn(*args)
    except ccxt.RateLimitExceeded as exc:
        hint = "Bybit rate-limited this IP: wait a minute and rerun (it resumes where it stopped)"
        raise DataError(f"{doing} failed: {type(exc).__name__}: {_short(exc)}. {hint}") from None
    except ccxt.NetworkError as exc:
        hint = ("check the network connection and https://status.bybit.com, then rerun "
                "`eternal data download` (it resumes from the last stored row)")
        raise DataUnreachable(f"{doing} failed: {type(exc).__name__}: {_short(exc)}. {hint}") from None
    except ccxt.BaseError as exc:
        hint = ("Bybit answered with an error: rerun later (it resumes from the last stored row); "
                "if it persists, the market may be delisted or the API changed: report this message")
        raise DataError(f"{doing} failed: {type(exc).__name__}: {_short(exc)}. {hint}") from None


def _short(exc: Exception, limit: int = 300) -> str:
    """The exception's text on one line, without a credential (ccxt's texts hold the request URL)."""
    from eternal.secrets import scrub

    text = scrub(" ".join(str(exc).split()))
    return text if len(text) <= limit else text[:limit] + "..."


def _aware(name: str, value: datetime) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ConfigError(f"download `{name}` must be a timezone-aware UTC datetime, got {value!r}")
    return value.astimezone(UTC)


def _stored(method: str, value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise DataError(f"the market store's {method}() returned a naive datetime {value!r}: "
                        f"the store must return timezone-aware UTC timestamps")
    return pd.Timestamp(value).to_pydatetime().astimezone(UTC)


def _ms(value: datetime) -> int:
    return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _ceil_day_ms(value: datetime) -> int:
    return math.ceil(_ms(value) / DAY_MS) * DAY_MS


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%MZ")


def _int_or(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
