"""Crypto Fear & Greed Index from alternative.me: `eternal data fear-greed`.

The API (https://api.alternative.me/fng/?limit=0&format=json) answers the whole daily history,
newest first: {"name": ..., "data": [{"value": "6", "value_classification": "Extreme Fear",
"timestamp": "1655510400", ...}, ...], "metadata": {"error": null}}. A timestamp is the index day
at 00:00 UTC in unix seconds; the value is a string holding an integer in 0..100.

Days the index did not publish stay missing: a missing value means "no signal", never a guess,
so nothing here fills gaps (TACTICAL reads `fear_greed_on(df, day) is None` as "no trigger").
"""
from __future__ import annotations

import json
import time
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import httpx
import pandas as pd

from eternal.errors import DataError, DataUnreachable

if TYPE_CHECKING:
    from eternal.data.store import MarketStore

URL_SETTING = "ETERNAL_DATA__FEAR_GREED_URL"
DEFAULT_BACKOFF_S = 1.0   # first retry delay; doubles on each further retry
_DAY_S = 86_400


def fetch_fear_greed(url: str, *, timeout_s: float, retries: int, backoff_s: float,
                     client: httpx.Client | None = None) -> pd.DataFrame:
    """The whole index history as the store's frame: UTC `timestamp` index, int `value`, str
    `classification`; sorted, one row per day.

    Timeouts, connection errors, HTTP 429 and 5xx are retried `retries` times, waiting
    backoff_s, 2*backoff_s, ...; any other 4xx is final. Raises DataError when the index stays
    unreachable, refuses the request, or answers with a payload that does not parse.
    """
    shown = _redact(url)
    own_client = client is None
    client = client or httpx.Client(follow_redirects=True)
    try:
        cause, unreachable = "", False
        for attempt in range(retries + 1):
            if attempt and backoff_s > 0:
                time.sleep(backoff_s * 2 ** (attempt - 1))
            try:
                response = client.get(url, timeout=timeout_s)
            except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:   # retrying cannot help
                raise DataError(f"Fear & Greed index URL {shown!r} cannot be used: {str(exc).rstrip('.')}; "
                                f"fix {URL_SETTING}") from None
            except httpx.TransportError as exc:   # timeouts, refused or dropped connections
                cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                unreachable = True
                continue
            status = response.status_code
            if status == 429 or status >= 500:   # rate limited or a server fault: worth retrying
                cause = f"HTTP {status} {response.reason_phrase}".rstrip()
                unreachable = False
                continue
            if status >= 400:
                raise DataError(f"Fear & Greed index at {shown} refused the request: HTTP {status} "
                                f"{response.reason_phrase}; check {URL_SETTING}")
            return parse_fear_greed(response.content, source=shown)
        # no answer at all (no network, refused, timed out) is DataUnreachable: the offline way helps
        raise (DataUnreachable if unreachable else DataError)(
            f"Fear & Greed index unreachable at {shown} after {retries + 1} tries: "
                        f"{cause}; check the network or set {URL_SETTING}")
    finally:
        if own_client:
            client.close()


def parse_fear_greed(payload: bytes | str, source: str = "payload") -> pd.DataFrame:
    """alternative.me's JSON -> the store's frame; DataError naming the first bad entry."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"Fear & Greed index at {source}: the answer is not JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(f"Fear & Greed index at {source}: no 'data' list in the answer "
                        f"(keys: {sorted(doc) if isinstance(doc, dict) else type(doc).__name__})")
    error = (doc.get("metadata") or {}).get("error") if isinstance(doc.get("metadata"), dict) else None
    if error:
        raise DataError(f"Fear & Greed index at {source} reported an error: {error}")
    if not doc["data"]:
        raise DataError(f"Fear & Greed index at {source}: the 'data' list is empty")
    stamps, values, labels = [], [], []
    for i, entry in enumerate(doc["data"]):
        if not isinstance(entry, dict):
            raise DataError(f"Fear & Greed index at {source}: data[{i}] is not an object: {entry!r}")
        stamps.append(_timestamp(entry.get("timestamp"), i, source))
        values.append(_value(entry.get("value"), i, source))
        label = entry.get("value_classification")
        if not isinstance(label, str) or not label.strip():
            raise DataError(f"Fear & Greed index at {source}: data[{i}].value_classification="
                            f"{label!r} is not a name like 'Extreme Fear'")
        labels.append(label.strip())
    index = pd.DatetimeIndex(pd.to_datetime(stamps, unit="s", utc=True), name="timestamp")
    df = pd.DataFrame({"value": pd.array(values, dtype="int64"), "classification": labels}, index=index)
    df = df[~df.index.duplicated(keep="first")]   # newest first: the first copy is the latest word
    return df.sort_index().astype({"value": "int64", "classification": "str"})


def _timestamp(raw: Any, i: int, source: str) -> int:
    try:
        seconds = int(raw)
        if isinstance(raw, bool) or str(seconds) != str(raw).strip():
            raise ValueError
    except (TypeError, ValueError):
        raise DataError(f"Fear & Greed index at {source}: data[{i}].timestamp={raw!r} "
                        "is not unix seconds") from None
    if seconds % _DAY_S:
        raise DataError(f"Fear & Greed index at {source}: data[{i}].timestamp={raw!r} "
                        f"({pd.Timestamp(seconds, unit='s', tz='UTC')}) is not 00:00 UTC of a day")
    return seconds


def _value(raw: Any, i: int, source: str) -> int:
    try:
        value = int(raw)
        if isinstance(raw, bool) or str(value) != str(raw).strip():
            raise ValueError
    except (TypeError, ValueError):
        raise DataError(f"Fear & Greed index at {source}: data[{i}].value={raw!r} "
                        "is not an integer") from None
    return value        # the range 0..100 is the suite's rule (update_fear_greed), as at every door


def update_fear_greed(store: MarketStore, url: str, *, timeout_s: float, retries: int,
                      backoff_s: float = DEFAULT_BACKOFF_S,
                      client: httpx.Client | None = None) -> int:
    """Download the index and upsert it; returns rows written. Nothing is written on a failure."""
    from eternal.data.quality import FEAR_GREED, validate_market_data

    df = fetch_fear_greed(url, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s, client=client)
    validate_market_data({}, {}, None, fear_greed=df, names={FEAR_GREED: f"{FEAR_GREED} ({_redact(url)})"})
    return store.upsert_fear_greed(df)


def fear_greed_on(df: pd.DataFrame, day: date | datetime | str | pd.Timestamp) -> int | None:
    """The index value of the UTC day containing `day`; None when that day has no value."""
    ts = pd.Timestamp(day)
    ts = (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).normalize()
    if ts not in df.index:
        return None
    value = df.at[ts, "value"]
    return None if pd.isna(value) else int(value)


def _redact(url: str) -> str:
    """The URL as shown in messages: any user:password and token-like query value in it masked."""
    from eternal.secrets import redact_url

    return redact_url(url)
