"""What the Prefect run forms accept for a time: a plain date (00:00 UTC), a datetime with an
offset, or one without (read as UTC), as the CLI does. Prefect checks a deployment's parameters
against the JSON schema before a run starts (`format: date-time` alone refuses "2024-01-03") and
pydantic then builds the value (a naive datetime, which `eternal.models.utc` refuses), so both are
set here: the schema names every accepted form, the validator makes it timezone-aware UTC."""
from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

from eternal.models import UTC, utc

_NAIVE = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$"   # no offset: UTC
_FORMS = [{"type": "string", "format": "date", "title": "date (00:00 UTC)"},
          {"type": "string", "format": "date-time", "title": "date and time"},
          {"type": "string", "pattern": _NAIVE, "title": "date and time, UTC"}]


def to_utc(value: Any) -> Any:
    """A date, a naive datetime or their text as timezone-aware UTC; anything else unchanged
    (pydantic then says what is wrong with it)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, (date, str)):
        try:
            return utc(value.strip() if isinstance(value, str) else value)
        except ValueError:
            return value
    return value


def _or_none(value: Any) -> Any:
    return None if value is None or value == "" else to_utc(value)


UtcTime = Annotated[datetime, BeforeValidator(to_utc), WithJsonSchema({"anyOf": _FORMS})]
"""A required time."""
OptionalUtcTime = Annotated[datetime | None, BeforeValidator(_or_none),
                            WithJsonSchema({"anyOf": [*_FORMS, {"type": "null"}]})]
"""A time, or None."""
