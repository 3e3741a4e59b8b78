"""CSV flattening of reports and the helpers that shape report input."""

from __future__ import annotations

import csv
import io
from datetime import date

import pytest

from services.errors import Invalid
from services.report_csv import engagement_report_csv, flatten, journey_report_csv
from services.reports import Period, flow_order, parse_day


def test_flatten_names_breakdown_entries() -> None:
    out: dict[str, object] = {}
    suppressed = flatten(
        {
            "sent": 12,
            "blocked": {"by_reason": [{"reason": "no_consent", "count": None, "suppressed": True}]},
            "went_to": [{"step": None, "count": 3}],
            "by_reason": [{"verdict": "automated", "reason": "apple_mpp", "count": 4}],
            "templates": ["a", "b"],
            "rate": None,
        },
        "",
        out,
    )
    assert suppressed is True
    assert out == {
        "sent": 12,
        "blocked.by_reason.no_consent.count": "",
        "went_to.(none).count": 3,
        "by_reason.automated:apple_mpp.count": 4,
        "templates": "a b",
        "rate": "",
    }


def test_journey_csv_has_a_row_per_step() -> None:
    report = {
        "journey": "j",
        "version": None,
        "from": date(2026, 1, 5),
        "to": None,
        "include_automated": False,
        "runs": {"started": 3},
        "steps": [
            {"step": "a", "entered": 3, "send": {"sent": 3}},
            {"step": "b", "entered": None, "suppressed": True},
        ],
    }
    rows = list(csv.DictReader(io.StringIO(journey_report_csv(report))))
    assert [r["section"] for r in rows] == ["runs", "step", "step"]
    assert rows[0]["runs.started"] == "3" and rows[0]["from"] == "2026-01-05"
    assert rows[1]["send.sent"] == "3" and rows[1]["suppressed"] == "false"
    assert rows[2]["entered"] == "" and rows[2]["suppressed"] == "true"
    assert rows[2]["send.sent"] == "" and rows[0]["include_automated"] == "false"


def test_engagement_csv_ends_with_totals() -> None:
    report = {
        "days": [{"day": date(2026, 1, 5), "template": "t", "sent": 2}],
        "totals": {"sent": 2},
    }
    rows = list(csv.DictReader(io.StringIO(engagement_report_csv(report))))
    assert [(r["day"], r["template"], r["sent"]) for r in rows] == [
        ("2026-01-05", "t", "2"),
        ("total", "", "2"),
    ]


def test_flow_order_follows_the_journey() -> None:
    definition = {
        "start": "s",
        "steps": {
            "z": {"type": "exit"},
            "orphan": {"type": "exit"},
            "b": {"type": "branch", "cases": [{"if": {}, "next": "y"}], "default": "z"},
            "y": {"type": "goto", "step": "s"},
            "s": {"type": "send_email", "next": "b"},
        },
    }
    assert flow_order(definition) == ["s", "b", "y", "z", "orphan"]


def test_parse_day() -> None:
    assert parse_day("2026-01-05", "from") == date(2026, 1, 5)
    assert parse_day("2026-01-05T23:30:00-05:00", "to") == date(2026, 1, 6)
    assert parse_day(None, "from") is None
    with pytest.raises(Invalid) as e:
        parse_day("last week", "from")
    assert e.value.details == {"field": "from"}
    with pytest.raises(Invalid):
        Period(date(2026, 2, 1), date(2026, 1, 1)).check()
