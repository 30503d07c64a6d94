"""Secrets stay secret: URLs shown masked, registered values scrubbed from every text we emit.

A setting that can carry a credential (the database URL, the Fear & Greed and Bybit URLs, the API
key and secret) is a `SecretStr`; the URLs are a `SecretUrl`, which shows itself with any
user:password and token-like query value masked, so an operator still sees the host. Loading the
settings registers their secret parts here; `scrub` then removes them, and any `scheme://user:pass@`,
from a text at each door out: the CLI's error line, `cycle_runs.summary`, stored events, the
download's error messages and, through `SecretFilter`, every log record Prefect stores or prints.
"""
from __future__ import annotations

import logging
import re
import threading
from typing import Any
from urllib.parse import unquote

from pydantic import GetCoreSchemaHandler, SecretStr
from pydantic_core import CoreSchema, SchemaSerializer, core_schema

MASK = "***"
MIN_SCRUBBED_LEN = 4
"""A registered value shorter than this is not replaced in free text: it would mangle every word
holding it. URLs still hide a short password by its place (`redact_url`)."""

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]*[^\s'\"<>`.,;:!?)\]]")   # not its trailing period
# userinfo runs to the LAST "@" (as SQLAlchemy and most clients read it), so a password holding an
# unencoded "/", "#", "?" or "@" is masked whole; see _userinfo for when a "/" before it is a path
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s]+)@(?=[^@\s]*$)")


def _userinfo(url: str) -> re.Match | None:
    """The user[:password] part of `url`, or None. Text before the last "@" that holds a "/" or "?"
    is userinfo only when a ":" comes before that "/" (user:pass/word@host), else it is a path or
    a query with an "@" in it (host/fng?email=a@b)."""
    m = _USERINFO.match(url)
    if m is None:
        return None
    ui = m["userinfo"]
    first = min((i for i in (ui.find("/"), ui.find("?")) if i >= 0), default=-1)
    return m if first < 0 or ":" in ui[:first] else None
_QUERY_PAIR = re.compile(r"(?P<lead>[?&;](?P<name>[^=&#;\s]+)=)(?P<value>[^&#;\s]*)")
_SECRET_NAME = re.compile(r"token|key|secret|pass|pwd|auth|sig|session|credential|jwt|bearer|cookie", re.I)


def redact_url(url: str) -> str:
    """`url` with its user:password and token-like query values replaced by ***; the rest as given."""
    if (m := _userinfo(url)) is not None:
        url = m["scheme"] + (f"{MASK}:{MASK}" if ":" in m["userinfo"] else MASK) + "@" + url[m.end():]
    head, sep, query = url.partition("?")
    if not sep:
        return url
    return head + sep + _QUERY_PAIR.sub(_mask_pair, "?" + query)[1:]


def _mask_pair(m: re.Match) -> str:
    secret = _SECRET_NAME.search(unquote(m["name"])) and m["value"]
    return m["lead"] + (MASK if secret else m["value"])


def url_secrets(url: str) -> set[str]:
    """The secret parts of a URL: the password and token-like query values, as written and decoded."""
    found: set[str] = set()
    if m := _userinfo(url):
        _, has_password, password = m["userinfo"].partition(":")
        if has_password and password:
            found |= {password, unquote(password)}
    _, sep, query = url.partition("?")
    if sep:
        for pair in _QUERY_PAIR.finditer("?" + query.split("#")[0]):
            if _SECRET_NAME.search(unquote(pair["name"])) and pair["value"]:
                found |= {pair["value"], unquote(pair["value"])}
    return found


class SecretUrl(SecretStr):
    """A URL that may hold credentials: shown (str, repr, JSON dumps) with them masked."""

    def _display(self) -> str:
        return redact_url(self.get_secret_value())

    @classmethod
    def __get_pydantic_core_schema__(cls, source: type[Any], handler: GetCoreSchemaHandler) -> CoreSchema:
        schema = super().__get_pydantic_core_schema__(source, handler)
        for branch in ("lax_schema", "strict_schema"):   # SecretStr's JSON dump is '**********'
            schema[branch]["serialization"] = _URL_SERIALIZER
        return schema


def _serialize_url(value: SecretUrl, info: core_schema.SerializationInfo) -> str | SecretUrl:
    return str(value) if info.mode == "json" else value


_URL_SERIALIZER = core_schema.plain_serializer_function_ser_schema(_serialize_url, info_arg=True,
                                                                   when_used="unless-none")
SecretUrl.__pydantic_serializer__ = SchemaSerializer(core_schema.any_schema(serialization=_URL_SERIALIZER))


def reveal(value: SecretStr | str | None) -> str | None:
    """The real value, for the one call that needs it (a client, an engine); never for a message."""
    return value.get_secret_value() if isinstance(value, SecretStr) else value


# the registry --------------------------------------------------------------------------------
_lock = threading.Lock()
_registered: set[str] = set()
_pattern: re.Pattern | None = None


def register(*values: SecretStr | str | None) -> None:
    """Remember secret values so that `scrub` removes them from any text (URLs: their secret parts)."""
    global _pattern
    new: set[str] = set()
    for v in values:
        if isinstance(v, SecretUrl):
            new |= url_secrets(v.get_secret_value())
        elif (raw := reveal(v)) is not None:
            new.add(raw)
            new |= url_secrets(raw)
    new = {v for v in new if len(v) >= MIN_SCRUBBED_LEN}
    with _lock:
        if new <= _registered:
            return
        _registered.update(new)
        longest_first = sorted(_registered, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(v) for v in longest_first))


def register_settings(model: Any) -> None:
    """Register every SecretStr inside a (nested) pydantic model, e.g. the loaded Settings."""
    found: list[SecretStr] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, SecretStr):
            found.append(obj)
        elif hasattr(obj, "__pydantic_fields__"):
            for name in type(obj).model_fields:
                walk(getattr(obj, name))
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                walk(item)
        elif isinstance(obj, dict):
            for item in obj.values():
                walk(item)

    walk(model)
    register(*found)
    install_log_filter()


def scrub(text: str) -> str:
    """`text` without any registered secret and with every URL in it shown as `redact_url` does."""
    if not isinstance(text, str):
        text = str(text)
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    return _URL.sub(lambda m: redact_url(m[0]), text)


def scrub_data(value: Any) -> Any:
    """Every string inside plain data (dicts, lists) scrubbed; other values as they are."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: scrub_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(scrub_data(v) for v in value)
    return value


# logging ----------------------------------------------------------------------------------------
class SecretFilter(logging.Filter):
    """Scrubs a record's message, arguments, exception and stack text before any handler emits it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:        # a broken record: let the handler report it as usual
            return True
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            clean = scrub(record.exc_text)
            if clean != record.exc_text:      # the exception object holds the secret: keep the text only
                record.exc_text, record.exc_info = clean, None
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


_FILTER = SecretFilter("eternal.secrets")


def install_log_filter() -> None:
    """Put the filter on every handler there is now: root's, Prefect's console and API handlers,
    and any other logger's (idempotent; called again whenever settings load, so handlers Prefect
    or a test set up later are covered too)."""
    loggers = [logging.getLogger(), *(lg for lg in list(logging.Logger.manager.loggerDict.values())
                                      if isinstance(lg, logging.Logger))]
    for logger in loggers:
        for handler in list(logger.handlers):
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
