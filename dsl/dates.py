"""ISO 8601 dates/datetimes and time zones, with the fallbacks journeys rely on."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# fromisoformat alone also takes "20260105" and week dates; journeys only use the
# readable extended forms, which also keeps ordinary strings from looking like dates.
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DATETIME_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]+)?)?"
    r"(Z|[+-][0-9]{2}(:?[0-9]{2})?)?"
)


def parse_date_or_datetime(text: str) -> date | datetime:
    """A bare date (2026-01-05) or a datetime (2026-01-05T10:00[:SS[.f]][Z|+hh:mm], naive
    when it has no offset). Raises ValueError otherwise."""
    if isinstance(text, str):
        candidate = text.strip()
        if _DATE_RE.fullmatch(candidate):
            return date.fromisoformat(candidate)
        if _DATETIME_RE.fullmatch(candidate):
            return datetime.fromisoformat(candidate.replace(",", "."))
    raise ValueError("not an ISO 8601 date or datetime (e.g. 2026-01-05 or 2026-01-05T09:00Z)")


def parse_datetime(text: str) -> datetime:
    """An ISO datetime (naive when it has no offset); a bare date is rejected."""
    value = parse_date_or_datetime(text)
    if not isinstance(value, datetime):
        raise ValueError("not an ISO 8601 datetime (e.g. 2026-01-05T09:00:00Z)")
    return value


def resolve_zone(name: str | None) -> tzinfo:
    """The IANA zone called name; UTC when name is missing or not a known zone."""
    zone = load_zone(name) if name else None
    return zone if zone is not None else UTC


def load_zone(name: str) -> ZoneInfo | None:
    """The IANA zone called name, or None if there is no such zone."""
    if not isinstance(name, str) or not name or len(name) > 64:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def localize(value: date | datetime, zone: tzinfo) -> datetime:
    """An aware datetime: aware values as they are, naive ones and bare dates (at midnight)
    read as wall-clock time in zone."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=zone)
    return datetime.combine(value, time(0), tzinfo=zone)


def as_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)
