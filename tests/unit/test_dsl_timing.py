from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dsl.model import SendWindow, WaitStep, Weekday
from dsl.timing import next_send_time, wait_until

NY = "America/New_York"
WEEKDAYS: list[Weekday] = ["mon", "tue", "wed", "thu", "fri"]


def wait(**fields: Any) -> WaitStep:
    return WaitStep.model_validate({"type": "wait", "next": "after", **fields})


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_plain_duration() -> None:
    assert wait_until(wait(duration="PT2H"), utc(2026, 1, 5, 10), NY, None) == utc(2026, 1, 5, 12)


def test_result_is_utc() -> None:
    result = wait_until(wait(duration="P1D", at_local_time="09:00"), utc(2026, 1, 5), NY, None)
    assert result.utcoffset() == timedelta(0)
    assert result.tzinfo is UTC


def test_next_weekday_0900_new_york_from_a_saturday_across_dst_start() -> None:
    # Saturday 2026-03-07 10:00 EST; DST starts Sunday 03-08, so Monday 09:00 is EDT (UTC-4).
    step = wait(duration="PT1H", at_local_time="09:00", days=WEEKDAYS)
    assert wait_until(step, utc(2026, 3, 7, 15), NY, None) == utc(2026, 3, 9, 13)


def test_next_weekday_0900_new_york_from_a_saturday_across_dst_end() -> None:
    # Saturday 2026-10-31 10:00 EDT; DST ends Sunday 11-01, so Monday 09:00 is EST (UTC-5).
    step = wait(duration="PT1H", at_local_time="09:00", days=WEEKDAYS)
    assert wait_until(step, utc(2026, 10, 31, 14), NY, None) == utc(2026, 11, 2, 14)


def test_local_time_later_today_or_tomorrow() -> None:
    step = wait(duration="PT1M", at_local_time="09:00")
    # Monday 07:00 EST -> 09:00 EST the same day.
    assert wait_until(step, utc(2026, 1, 5, 12), NY, None) == utc(2026, 1, 5, 14)
    # Monday 10:00 EST -> Tuesday 09:00 EST.
    assert wait_until(step, utc(2026, 1, 5, 15), NY, None) == utc(2026, 1, 6, 14)


def test_local_day_differs_from_utc_day() -> None:
    # 2026-01-06 02:00 UTC is still Monday 21:00 in New York.
    step = wait(duration="PT1M", at_local_time="22:00", days=["mon"])
    assert wait_until(step, utc(2026, 1, 6, 2), NY, None) == utc(2026, 1, 6, 3)


def test_days_without_local_time_keep_the_time_of_day() -> None:
    # Saturday 14:00 EST + 1 minute -> Monday 14:01 EST.
    step = wait(duration="PT1M", days=["mon"])
    assert wait_until(step, utc(2026, 1, 3, 19), NY, None) == utc(2026, 1, 5, 19, 1)
    # An allowed day is left alone.
    assert wait_until(step, utc(2026, 1, 5, 19), NY, None) == utc(2026, 1, 5, 19, 1)


def test_calendar_day_keeps_local_wall_time_across_dst() -> None:
    # Saturday 09:00 EST + P1D = Sunday 09:00 EDT, only 23 hours later.
    assert wait_until(wait(duration="P1D"), utc(2026, 3, 7, 14), NY, None) == utc(2026, 3, 8, 13)


@pytest.mark.parametrize("zone", [None, "", "Not/AZone", "../../etc/passwd"])
def test_missing_or_invalid_zone_is_utc(zone: str | None) -> None:
    step = wait(duration="PT1M", at_local_time="09:00")
    assert wait_until(step, utc(2026, 1, 5, 12), zone, None) == utc(2026, 1, 6, 9)


def test_until_aware_and_naive() -> None:
    now = utc(2026, 1, 1)
    assert wait_until(wait(until="2026-02-01T10:00:00Z"), now, NY, None) == utc(2026, 2, 1, 10)
    # Without an offset the time is the contact's local time.
    assert wait_until(wait(until="2026-02-01T10:00:00"), now, NY, None) == utc(2026, 2, 1, 15)
    assert wait_until(wait(until="2026-07-01T10:00:00"), now, NY, None) == utc(2026, 7, 1, 14)


def test_until_in_the_past_returns_now() -> None:
    now = utc(2026, 5, 1)
    assert wait_until(wait(until="2026-02-01T10:00:00Z"), now, NY, None) == now


def test_until_attribute_with_offset_and_local_time() -> None:
    # Reminder the day before the appointment, at 09:00 local.
    step = wait(until_attribute="appointment_at", offset="-P1D", at_local_time="09:00")
    result = wait_until(step, utc(2026, 1, 1), NY, "2026-01-10T15:30:00-05:00")
    assert result == utc(2026, 1, 9, 14)


def test_until_attribute_bare_date_is_local_midnight() -> None:
    step = wait(until_attribute="due_on")
    assert wait_until(step, utc(2026, 1, 1), NY, "2026-01-10") == utc(2026, 1, 10, 5)
    step = wait(until_attribute="due_on", offset="PT8H")
    assert wait_until(step, utc(2026, 1, 1), NY, "2026-01-10") == utc(2026, 1, 10, 13)


def test_until_attribute_already_passed_returns_now() -> None:
    step = wait(until_attribute="appointment_at", offset="-P1D", at_local_time="09:00")
    now = utc(2026, 1, 9, 20)  # after 09:00 on the day before
    assert wait_until(step, now, NY, "2026-01-10T15:30:00-05:00") == now


@pytest.mark.parametrize("value", [None, "", "not a date", "2026-02-30"])
def test_missing_or_bad_attribute_waits_from_now(value: str | None) -> None:
    now = utc(2026, 1, 5, 12)  # Monday 07:00 EST
    assert wait_until(wait(until_attribute="x", offset="P7D"), now, NY, value) == now
    step = wait(until_attribute="x", at_local_time="09:00")
    assert wait_until(step, now, NY, value) == utc(2026, 1, 5, 14)


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ValueError):
        wait_until(wait(duration="P1D"), datetime(2026, 1, 1), NY, None)
    with pytest.raises(ValueError):
        next_send_time(None, datetime(2026, 1, 1), NY)


# --- send windows -------------------------------------------------------------------------

DAYTIME = SendWindow(hours="08:00-20:00", days=WEEKDAYS)


def test_no_window_sends_now() -> None:
    assert next_send_time(None, utc(2026, 1, 3, 3), NY) == utc(2026, 1, 3, 3)


def test_inside_window_sends_now() -> None:
    now = utc(2026, 1, 5, 15)  # Monday 10:00 EST
    assert next_send_time(DAYTIME, now, NY) == now


def test_before_opening_waits_for_it() -> None:
    assert next_send_time(DAYTIME, utc(2026, 1, 5, 11), NY) == utc(2026, 1, 5, 13)


def test_closing_time_is_exclusive_and_weekend_skipped() -> None:
    # Friday 20:00 EST exactly -> Monday 08:00 EST.
    assert next_send_time(DAYTIME, utc(2026, 1, 10, 1), NY) == utc(2026, 1, 12, 13)
    # Saturday noon -> Monday 08:00.
    assert next_send_time(DAYTIME, utc(2026, 1, 10, 17), NY) == utc(2026, 1, 12, 13)


def test_window_opening_on_dst_day() -> None:
    window = SendWindow(hours="08:00-20:00")
    # Sunday 2026-03-08 01:00 EST -> 08:00 EDT = 12:00 UTC.
    assert next_send_time(window, utc(2026, 3, 8, 6), NY) == utc(2026, 3, 8, 12)


def test_overnight_window_belongs_to_its_opening_day() -> None:
    window = SendWindow(hours="20:00-08:00", days=["fri"])
    saturday_3am = utc(2026, 1, 10, 8)
    assert next_send_time(window, saturday_3am, NY) == saturday_3am
    # Saturday 09:00 EST: closed until next Friday 20:00 EST.
    assert next_send_time(window, utc(2026, 1, 10, 14), NY) == utc(2026, 1, 17, 1)
    # Friday 07:00 belongs to Thursday's (not allowed) window.
    assert next_send_time(window, utc(2026, 1, 9, 12), NY) == utc(2026, 1, 10, 1)


def test_all_day_window() -> None:
    window = SendWindow(hours="00:00-24:00", days=["mon"])
    assert next_send_time(window, utc(2026, 1, 6, 4, 59), NY) == utc(2026, 1, 6, 4, 59)
    assert next_send_time(window, utc(2026, 1, 6, 5), NY) == utc(2026, 1, 12, 5)


def test_window_in_utc_when_zone_unknown() -> None:
    assert next_send_time(DAYTIME, utc(2026, 1, 5, 7), "Nowhere/Land") == utc(2026, 1, 5, 8)


def test_until_attribute_day_moves_to_allowed_weekday() -> None:
    # The day before a Monday appointment is a Sunday: moved to Monday 09:00.
    step = wait(
        until_attribute="appointment_at", offset="-P1D", at_local_time="09:00", days=WEEKDAYS
    )
    result = wait_until(step, utc(2026, 1, 1), NY, "2026-01-12T15:30:00-05:00")
    assert result == utc(2026, 1, 12, 14)


def test_until_with_local_time_pins_the_day() -> None:
    step = wait(until="2026-02-01T23:00:00Z", at_local_time="09:00")  # 18:00 EST on Feb 1
    assert wait_until(step, utc(2026, 1, 1), NY, None) == utc(2026, 2, 1, 14)
