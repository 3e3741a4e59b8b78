"""Time maths for wait steps and send windows, in the contact's local time zone.

Everything is pure: the caller passes the current time (aware, normally
workflow.now()) and gets aware UTC datetimes back. Local times are resolved with zoneinfo,
so "09:00 on weekdays" stays 09:00 across DST changes; a missing or unknown zone is UTC.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, tzinfo

from dsl.dates import as_utc, localize, parse_date_or_datetime, parse_datetime, resolve_zone
from dsl.durations import parse_duration, parse_local_time, parse_time_range
from dsl.model import WEEKDAYS, SendWindow, WaitStep

_WEEKDAY_INDEX = {name: i for i, name in enumerate(WEEKDAYS)}  # matches date.weekday()


def wait_until(
    step: WaitStep, now: datetime, tz_name: str | None, attribute_value: str | None
) -> datetime:
    """When a wait step ends (never before now).

    The base time is now + duration (calendar parts in local time), until (a naive value is
    local time), or the until_attribute value (a bare date is local midnight) + offset.
    A missing or unreadable attribute value gives a base of now, so the run is not stuck.
    at_local_time: after a duration, the first such local time at or after the base; with
    until/until_attribute, that time on the base's local day ("the day before at 09:00").
    days: then the first allowed local weekday at or after that, at the same local time.
    A result in the past is now.
    """
    _require_aware(now)
    zone = resolve_zone(tz_name)
    local_now = now.astimezone(zone)
    if step.duration is not None:
        base = parse_duration(step.duration).add_to(local_now)
    elif step.until is not None:
        base = localize(parse_datetime(step.until), zone)
    else:
        attribute_time = _attribute_time(attribute_value, zone)
        if attribute_time is None:
            base = local_now
        elif step.offset is not None:
            base = parse_duration(step.offset).add_to(attribute_time.astimezone(zone))
        else:
            base = attribute_time
    at = parse_local_time(step.at_local_time) if step.at_local_time is not None else None
    days = {_WEEKDAY_INDEX[day] for day in step.days} if step.days is not None else None
    if at is not None and step.duration is None:
        # A date-like base ("the day before the appointment") takes the time on that day.
        base = _wall_time(base.astimezone(zone).date(), at, zone)
        at = None
    result = as_utc(_align(base.astimezone(zone), at, days, zone))
    return max(result, as_utc(now))


def next_send_time(window: SendWindow | None, now: datetime, tz_name: str | None) -> datetime:
    """now if now is inside the send window (or there is none), else the window's next
    opening. The window's hours are local to the contact; days are the opening days."""
    _require_aware(now)
    now = as_utc(now)
    if window is None:
        return now
    start, end = parse_time_range(window.hours)
    if end <= start:  # runs past midnight into the next day
        end += 24 * 60
    allowed = {_WEEKDAY_INDEX[day] for day in window.days}
    zone = resolve_zone(tz_name)
    today = now.astimezone(zone).date()
    # Yesterday's window may still be open (overnight hours); a week ahead always has one.
    for offset in range(-1, 9):
        day = today + timedelta(days=offset)
        if day.weekday() not in allowed:
            continue
        opens = _local_minutes(day, start, zone)
        if opens > now:
            return opens
        if now < _local_minutes(day, end, zone):
            return now
    raise AssertionError("a window with at least one day opens within a week")


def _attribute_time(value: str | None, zone: tzinfo) -> datetime | None:
    if value is None:
        return None
    try:
        return localize(parse_date_or_datetime(value), zone)
    except ValueError:
        return None


def _align(local: datetime, at: time | None, days: set[int] | None, zone: tzinfo) -> datetime:
    """First local datetime at or after local whose weekday is in days and whose wall time
    is at (the time of local itself when at is None)."""
    if at is None and days is None:
        return local
    time_of_day = at if at is not None else local.time()
    for offset in range(8):
        day = local.date() + timedelta(days=offset)
        if days is not None and day.weekday() not in days:
            continue
        if at is None and offset == 0:
            return local
        candidate = _wall_time(day, time_of_day, zone)
        if as_utc(candidate) >= as_utc(local):
            return candidate
    raise AssertionError("an allowed weekday occurs within a week")


def _wall_time(day: date, at: time, zone: tzinfo) -> datetime:
    # Via UTC so a wall time inside a DST gap becomes a real instant.
    return as_utc(datetime.combine(day, at, tzinfo=zone)).astimezone(zone)


def _local_minutes(day: date, minutes: int, zone: tzinfo) -> datetime:
    """UTC instant of local wall time `minutes` after midnight of day (may be the next day)."""
    wall = datetime.combine(day, time(0)) + timedelta(minutes=minutes)
    return wall.replace(tzinfo=zone).astimezone(UTC)


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
