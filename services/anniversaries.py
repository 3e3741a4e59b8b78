"""Date-attribute schedules (birthdays, anniversaries): when is a contact's occurrence due?

Pure functions, no I/O. An attribute holds a date ("1980-03-10", a datetime whose date
part counts, or a bare month-day "03-10" / "--03-10"); it recurs every year on that
month-day, on Feb 28 in years without a Feb 29. The occurrence is at `at_local_time` (the
start of the day when absent) in the contact's time zone, shifted by `offset` (e.g. "-P7D"
for a week before). A schedule run covering the window [start, end) enrols the contacts
whose occurrence falls inside it, so consecutive windows enrol each contact exactly once
per year, at the right local time whatever its zone.
"""

from __future__ import annotations

import calendar
import re
from datetime import date, datetime, time, timedelta
from typing import Any

from dsl.dates import resolve_zone
from dsl.durations import Duration, parse_duration, parse_local_time

_FULL = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})(?:[T ].*)?")
_MONTH_DAY = re.compile(r"(?:--)?([0-9]{2})-([0-9]{2})")
# SQL mirror of _FULL/_MONTH_DAY: the month-day text "MM-DD" of an attribute value.
SQL_MONTH_DAY = (
    "CASE WHEN {v} ~ '^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}' THEN substr({v}, 6, 5) "
    "WHEN {v} ~ '^(--)?[0-9]{{2}}-[0-9]{{2}}$' THEN right({v}, 5) END"
)


def month_day(value: Any) -> tuple[int, int] | None:
    """(month, day) of an attribute value, or None when it is not a usable date."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    m = _FULL.fullmatch(text)
    if m:
        month, day = int(m.group(2)), int(m.group(3))
    else:
        m = _MONTH_DAY.fullmatch(text)
        if not m:
            return None
        month, day = int(m.group(1)), int(m.group(2))
    if not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(2000, month)[1]:
        return None  # 2000 is a leap year: Feb 29 is a valid month-day
    return month, day


def _in_year(month: int, day: int, year: int) -> date:
    if month == 2 and day == 29 and not calendar.isleap(year):
        return date(year, 2, 28)
    return date(year, month, day)


def occurrence(
    md: tuple[int, int],
    year: int,
    tz_name: str | None,
    at_local_time: time | None = None,
    offset: Duration | None = None,
) -> datetime:
    """The aware instant of the year's occurrence for a contact in zone tz_name."""
    zone = resolve_zone(tz_name)
    local = datetime.combine(_in_year(*md, year), at_local_time or time(0), tzinfo=zone)
    return offset.add_to(local) if offset is not None else local


def due_in_window(
    value: Any,
    tz_name: str | None,
    start: datetime,
    end: datetime,
    *,
    at_local_time: str | None = None,
    offset: str | None = None,
) -> datetime | None:
    """The occurrence instant if it falls in [start, end), else None."""
    md = month_day(value)
    if md is None:
        return None
    at = parse_local_time(at_local_time) if at_local_time else None
    shift = parse_duration(offset) if offset else None
    # An offset of up to a year or so moves the occurrence into a neighbouring year.
    for year in range(start.year - 2, end.year + 3):
        when = occurrence(md, year, tz_name, at, shift)
        if start <= when < end:
            return when
    return None


def candidate_month_days(start: datetime, end: datetime, offset: str | None = None) -> list[str]:
    """Every "MM-DD" whose occurrence could fall in [start, end) in some zone (a superset:
    the exact check is due_in_window). Keeps the database scan to a few days' contacts."""
    shift = parse_duration(offset) if offset else Duration()
    span = timedelta(days=2 + int(abs(shift.seconds) // 86400))
    day = (start - span).date()
    last = (end + span).date()
    out: set[str] = set()
    while day <= last:
        noon = datetime.combine(day, time(12), tzinfo=start.tzinfo)
        anniversary = (-shift).add_to(noon).date()
        for d in (anniversary - timedelta(days=1), anniversary, anniversary + timedelta(days=1)):
            out.add(f"{d.month:02d}-{d.day:02d}")
        if anniversary.month == 2 and anniversary.day == 28:
            out.add("02-29")  # celebrated on Feb 28 in common years
        day += timedelta(days=1)
    return sorted(out)
