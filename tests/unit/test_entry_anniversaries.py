from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.anniversaries import candidate_month_days, due_in_window, month_day


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1980-03-10", (3, 10)),
        ("1980-03-10T08:00:00Z", (3, 10)),
        ("03-10", (3, 10)),
        ("--02-29", (2, 29)),
        ("1980-02-30", None),
        ("13-01", None),
        ("March 10", None),
        (19800310, None),
        (None, None),
    ],
)
def test_month_day(value: object, expected: tuple[int, int] | None) -> None:
    assert month_day(value) == expected


def _win(start: str, minutes: int = 15) -> tuple[datetime, datetime]:
    s = datetime.fromisoformat(start)
    return s, s + timedelta(minutes=minutes)


def test_due_at_local_time_in_the_contacts_zone() -> None:
    # 09:00 in New York on 2026-03-10 (EDT since Mar 8) is 13:00Z; in Paris it is 08:00Z.
    start, end = _win("2026-03-10T13:00:00+00:00")
    got = due_in_window("1980-03-10", "America/New_York", start, end, at_local_time="09:00")
    assert got is not None and got.astimezone(UTC) == start
    assert due_in_window("1980-03-10", "Europe/Paris", start, end, at_local_time="09:00") is None
    paris = _win("2026-03-10T08:00:00+00:00")
    assert due_in_window("1980-03-10", "Europe/Paris", *paris, at_local_time="09:00")
    # Without at_local_time the occurrence is the start of the local day.
    tokyo = _win("2026-03-09T15:00:00+00:00")
    assert due_in_window("03-10", "Asia/Tokyo", *tokyo)
    assert due_in_window("03-10", "Asia/Tokyo", start, end) is None


def test_consecutive_windows_enrol_exactly_once_a_year() -> None:
    zones = ["UTC", "America/Los_Angeles", "Pacific/Kiritimati", "Pacific/Pago_Pago", "Asia/Tokyo"]
    t = datetime(2026, 1, 1, tzinfo=UTC)
    hits: dict[str, int] = dict.fromkeys(zones, 0)
    while t < datetime(2027, 1, 1, tzinfo=UTC):
        for z in zones:
            if due_in_window("2001-07-04", z, t, t + timedelta(hours=1), at_local_time="10:30"):
                hits[z] += 1
        t += timedelta(hours=1)
    assert hits == dict.fromkeys(zones, 1)


def test_offset_and_leap_day() -> None:
    # A week before the birthday.
    start, end = _win("2026-03-03T00:00:00+00:00", 60)
    assert due_in_window("1980-03-10", "UTC", start, end, offset="-P7D")
    assert due_in_window("1980-03-10", "UTC", start, end) is None
    # Feb 29 birthdays are celebrated on Feb 28 in common years, on Feb 29 in leap years.
    assert due_in_window("2000-02-29", "UTC", *_win("2026-02-28T00:00:00+00:00"))
    assert due_in_window("2000-02-29", "UTC", *_win("2028-02-29T00:00:00+00:00"))
    assert due_in_window("2000-02-29", "UTC", *_win("2028-02-28T00:00:00+00:00")) is None


def test_candidate_month_days_cover_every_zone() -> None:
    start, end = _win("2026-03-10T13:00:00+00:00")
    days = candidate_month_days(start, end)
    assert {"03-09", "03-10", "03-11"} <= set(days) and "03-20" not in days
    assert "03-17" in candidate_month_days(start, end, "-P7D")
    assert "02-29" in candidate_month_days(*_win("2026-02-28T12:00:00+00:00"))
