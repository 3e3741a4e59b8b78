from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from dsl.dates import localize, parse_date_or_datetime, resolve_zone
from dsl.durations import Duration, parse_duration, parse_local_time, parse_time_range

NY = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("P3D", Duration(days=3)),
        ("PT12H", Duration(seconds=43_200)),
        ("P1W", Duration(days=7)),
        ("P2M", Duration(months=2)),
        ("P1Y2M3W4DT5H6M7.5S", Duration(1, 2, 25, 5 * 3600 + 6 * 60 + 7.5)),
        ("PT0.25S", Duration(seconds=0.25)),
        ("PT1,5S", Duration(seconds=1.5)),
        ("PT90M", Duration(seconds=5400)),
        ("P0D", Duration()),
        ("-P1DT2H", Duration(days=-1, seconds=-7200)),
        ("+P1D", Duration(days=1)),
    ],
)
def test_parse_duration(text: str, expected: Duration) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "P",
        "PT",
        "P1DT",
        "3D",
        "P1.5D",
        "P1H",
        "PT1D",
        "p1d",
        "P1D1Y",
        "P1Y1Y",
        "P-1D",
        "1 day",
        "P١D",
        "P201Y",
        "P3000M",
        "PT99999999999999999H",
        "P99999999999W",
    ],
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_errors_do_not_echo_the_input() -> None:
    with pytest.raises(ValueError) as info:
        parse_duration("jane.doe@example.com")
    assert "jane" not in str(info.value)


def test_parse_duration_rejects_non_strings() -> None:
    with pytest.raises(ValueError):
        parse_duration(3)  # type: ignore[arg-type]


def test_sign_and_zero() -> None:
    assert parse_duration("P0D").is_zero
    assert not parse_duration("PT1S").is_zero
    assert parse_duration("-P1D").is_negative
    assert not parse_duration("P1D").is_negative
    assert -parse_duration("P1M") == Duration(months=-1)


@pytest.mark.parametrize(
    ("start", "text", "expected"),
    [
        (datetime(2027, 1, 31, 10, tzinfo=UTC), "P1M", datetime(2027, 2, 28, 10, tzinfo=UTC)),
        (datetime(2028, 1, 31, 10, tzinfo=UTC), "P1M", datetime(2028, 2, 29, 10, tzinfo=UTC)),
        (datetime(2028, 2, 29, tzinfo=UTC), "P1Y", datetime(2029, 2, 28, tzinfo=UTC)),
        (datetime(2026, 11, 15, tzinfo=UTC), "P3M", datetime(2027, 2, 15, tzinfo=UTC)),
        (datetime(2026, 3, 31, tzinfo=UTC), "-P1M", datetime(2026, 2, 28, tzinfo=UTC)),
        (
            datetime(2026, 1, 1, tzinfo=UTC),
            "P1Y1M1DT1H1M1S",
            datetime(2027, 2, 2, 1, 1, 1, tzinfo=UTC),
        ),
        (datetime(2026, 1, 1, tzinfo=UTC), "-PT1H", datetime(2025, 12, 31, 23, tzinfo=UTC)),
        (
            datetime(2026, 1, 1, tzinfo=UTC),
            "PT0.5S",
            datetime(2026, 1, 1, 0, 0, 0, 500_000, tzinfo=UTC),
        ),
    ],
)
def test_add_to_calendar(start: datetime, text: str, expected: datetime) -> None:
    assert parse_duration(text).add_to(start) == expected


def test_days_keep_local_time_across_dst_but_hours_are_elapsed() -> None:
    before = datetime(2026, 3, 7, 9, 0, tzinfo=NY)  # EST; DST starts 2026-03-08
    one_day = parse_duration("P1D").add_to(before)
    assert (one_day.hour, one_day.day) == (9, 8)
    assert one_day.astimezone(UTC) - before.astimezone(UTC) == timedelta(hours=23)
    hours = parse_duration("PT24H").add_to(before)
    assert hours.astimezone(UTC) - before.astimezone(UTC) == timedelta(hours=24)
    assert hours.hour == 10


def test_days_landing_in_a_dst_gap_become_a_real_time() -> None:
    start = datetime(2026, 3, 7, 2, 30, tzinfo=NY)
    moved = parse_duration("P1D").add_to(start)
    assert moved.astimezone(UTC) == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)
    assert (moved.hour, moved.minute) == (3, 30)


def test_approx_timedelta() -> None:
    assert parse_duration("P1D").approx_timedelta() == timedelta(days=1)
    assert parse_duration("PT90M").approx_timedelta() == timedelta(minutes=90)
    assert parse_duration("P1Y").approx_timedelta() == timedelta(days=365.2425)
    assert timedelta(days=30) < parse_duration("P1M").approx_timedelta() < timedelta(days=31)
    assert parse_duration("-P1W").approx_timedelta() == timedelta(days=-7)


@pytest.mark.parametrize(
    ("text", "expected"), [("09:00", time(9)), ("23:59", time(23, 59)), ("00:00", time(0))]
)
def test_parse_local_time(text: str, expected: time) -> None:
    assert parse_local_time(text) == expected


@pytest.mark.parametrize("text", ["24:00", "9:00", "09:60", "0900", "09:00:00", "", "noon"])
def test_parse_local_time_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_local_time(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("08:00-20:00", (480, 1200)), ("22:00-06:00", (1320, 360)), ("00:00-24:00", (0, 1440))],
)
def test_parse_time_range(text: str, expected: tuple[int, int]) -> None:
    assert parse_time_range(text) == expected


@pytest.mark.parametrize("text", ["08:00-08:00", "8-20", "08:00", "24:00-08:00", "08:00-25:00"])
def test_parse_time_range_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time_range(text)


def test_iso_dates_and_zones() -> None:
    assert parse_date_or_datetime("2026-01-05") == date(2026, 1, 5)
    assert parse_date_or_datetime("2026-01-05T10:00Z") == datetime(2026, 1, 5, 10, tzinfo=UTC)
    naive = parse_date_or_datetime("2026-01-05T10:00:00")
    assert isinstance(naive, datetime) and naive.tzinfo is None
    for bad in ("20260105", "2026-W02-1", "yesterday", "2026-13-01"):
        with pytest.raises(ValueError):
            parse_date_or_datetime(bad)
    assert resolve_zone(None) is UTC
    assert resolve_zone("Not/AZone") is UTC
    assert resolve_zone("../../etc/passwd") is UTC
    assert resolve_zone("America/New_York") == NY
    assert localize(date(2026, 1, 5), NY) == datetime(2026, 1, 5, tzinfo=NY)
