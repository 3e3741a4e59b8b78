"""ISO 8601 durations and local wall-clock times as written in journey definitions.

Messages never quote the input: callers attach the field name, and the same parsers may
one day see values that came from contact data.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

_DURATION_RE = re.compile(
    r"(?P<sign>[+-])?P"
    r"(?:(?P<years>[0-9]+)Y)?(?:(?P<months>[0-9]+)M)?(?:(?P<weeks>[0-9]+)W)?(?:(?P<days>[0-9]+)D)?"
    r"(?P<time>T(?:(?P<hours>[0-9]+)H)?(?:(?P<minutes>[0-9]+)M)?"
    r"(?:(?P<seconds>[0-9]+(?:[.,][0-9]+)?)S)?)?"
)
_LOCAL_TIME_RE = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_TIME_RANGE_RE = re.compile(r"([0-9]{2}:[0-9]{2})-([0-9]{2}:[0-9]{2})")

# Long enough for any journey, short enough that adding it to a date cannot overflow.
_MAX_DURATION = timedelta(days=366 * 200)
_DAYS_PER_YEAR = 365.2425
_DAYS_PER_MONTH = _DAYS_PER_YEAR / 12
MINUTES_PER_DAY = 24 * 60

DURATION_HINT = "expected an ISO 8601 duration such as P3D, PT12H or P1Y2M"


@dataclass(frozen=True)
class Duration:
    """A parsed duration; all non-zero components share one sign.

    Years, months and days are calendar amounts (they follow the wall clock of the datetime
    they are added to); seconds are elapsed time.
    """

    years: int = 0
    months: int = 0
    days: int = 0
    seconds: float = 0.0

    @property
    def is_zero(self) -> bool:
        return not (self.years or self.months or self.days or self.seconds)

    @property
    def is_negative(self) -> bool:
        return min(self.years, self.months, self.days, self.seconds) < 0

    def __neg__(self) -> Duration:
        return Duration(-self.years, -self.months, -self.days, -self.seconds)

    def add_to(self, dt: datetime) -> datetime:
        """dt + self: months clamp to the month's last day (Jan 31 + P1M = Feb 28/29); days
        keep the local time across DST changes in dt's zone; the time part is exact."""
        result = dt
        if self.years or self.months:
            result = _add_months(result, self.years * 12 + self.months)
        if self.days:
            result = result + timedelta(days=self.days)
        if result.tzinfo is not None and (self.years or self.months or self.days):
            # Wall-clock arithmetic can land in a DST gap: re-derive a real local time.
            result = result.astimezone(UTC).astimezone(result.tzinfo)
        if self.seconds:
            delta = timedelta(seconds=self.seconds)
            if result.tzinfo is None:
                result = result + delta
            else:
                result = (result.astimezone(UTC) + delta).astimezone(result.tzinfo)
        return result

    def approx_timedelta(self) -> timedelta:
        """Length with average Gregorian years and months, for comparisons and limits."""
        days = self.years * _DAYS_PER_YEAR + self.months * _DAYS_PER_MONTH + self.days
        return timedelta(days=days, seconds=self.seconds)


def _add_months(dt: datetime, months: int) -> datetime:
    year_shift, month0 = divmod(dt.month - 1 + months, 12)
    year = dt.year + year_shift
    day = min(dt.day, calendar.monthrange(year, month0 + 1)[1])
    return dt.replace(year=year, month=month0 + 1, day=day)


def parse_duration(text: str) -> Duration:
    """Parse PnYnMnWnDTnHnMnS (fractional seconds allowed, optional leading sign)."""
    if not isinstance(text, str):
        raise ValueError(f"duration must be a string; {DURATION_HINT}")
    match = _DURATION_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a valid duration; {DURATION_HINT}")
    parts = match.groupdict()
    components = ("years", "months", "weeks", "days", "hours", "minutes", "seconds")
    if all(parts[name] is None for name in components):
        raise ValueError(f"duration has no components; {DURATION_HINT}")
    if parts["time"] is not None and all(
        parts[name] is None for name in ("hours", "minutes", "seconds")
    ):
        raise ValueError(f"duration has a 'T' with no time components; {DURATION_HINT}")

    def whole(name: str) -> int:
        value = parts[name]
        return int(value) if value is not None else 0

    seconds_text = parts["seconds"]
    seconds = float(seconds_text.replace(",", ".")) if seconds_text is not None else 0.0
    seconds += whole("hours") * 3600 + whole("minutes") * 60
    days = whole("weeks") * 7 + whole("days")
    years, months = whole("years"), whole("months")
    too_long = seconds > _MAX_DURATION.total_seconds() or days > _MAX_DURATION.days
    if too_long or years > 200 or months > 2400:
        raise ValueError("duration is too long (the limit is 200 years)")
    duration = Duration(years, months, days, seconds if seconds else 0.0)
    if duration.approx_timedelta() > _MAX_DURATION:
        raise ValueError("duration is too long (the limit is 200 years)")
    return -duration if parts["sign"] == "-" else duration


def parse_local_time(text: str) -> time:
    """Parse a 24-hour local time "HH:MM" (00:00 to 23:59)."""
    match = _LOCAL_TIME_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError("not a valid local time; expected HH:MM between 00:00 and 23:59")
    return time(int(match.group(1)), int(match.group(2)))


def parse_time_range(text: str) -> tuple[int, int]:
    """Parse "HH:MM-HH:MM" into minutes after local midnight.

    The end may be "24:00"; an end before the start means the range runs past midnight.
    """
    match = _TIME_RANGE_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError("not a valid time range; expected HH:MM-HH:MM such as 08:00-20:00")
    start = parse_local_time(match.group(1))
    end_text = match.group(2)
    end = MINUTES_PER_DAY if end_text == "24:00" else _minutes(parse_local_time(end_text))
    start_minutes = _minutes(start)
    if start_minutes == end:
        raise ValueError("time range is empty: start and end are the same")
    return start_minutes, end


def _minutes(value: time) -> int:
    return value.hour * 60 + value.minute
