"""`journeys classify` line format: one verdict per line, revisions after, errors inline."""

from __future__ import annotations

import json

from classifier import classify_stream

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/143.0.0.0 Safari/537.36"
)


def line(
    event_id: str, at: str, *, ip: str = "88.198.10.20", link: str = "book", **extra: object
) -> str:
    obj: dict[str, object] = {
        "id": event_id,
        "kind": "click",
        "message_id": "m1",
        "link": link,
        "links_in_message": 3,
        "sent_at": "2026-01-05T10:00:00Z",
        "at": at,
        "ip": ip,
        "method": "GET",
        "user_agent": CHROME,
        "headers": {"accept": "text/html"},
    }
    obj.update(extra)
    return json.dumps(obj)


def run(lines: list[str]) -> list[dict[str, object]]:
    return [json.loads(out) for out in classify_stream(lines)]


def test_spec_example_gives_the_spec_shape() -> None:
    out = run([line("e1", "2026-01-05T10:00:21Z", ip="40.94.1.2")])
    assert out == [
        {"id": "e1", "verdict": "automated", "reason": "link_scanner", "confidence": 0.95}
    ]


def test_one_line_per_event_in_order_with_revisions_right_after_their_cause() -> None:
    out = run(
        [
            line("e1", "2026-01-05T10:01:00Z"),
            line("e2", "2026-01-05T10:02:00Z", ip="73.15.2.2"),
            line("e3", "2026-01-05T10:02:30Z", link="__trap__"),
            line("e4", "2026-01-05T10:03:00Z", ip="73.15.2.2", link="faq"),
        ]
    )
    assert [(o["id"], o.get("revised", False)) for o in out] == [
        ("e1", False),
        ("e2", False),
        ("e3", False),
        ("e1", True),
        ("e4", False),
    ]
    assert out[3] == {
        "id": "e1",
        "verdict": "automated",
        "reason": "trap_link",
        "confidence": 0.95,
        "revised": True,
    }
    assert "revised" not in out[0]


def test_bad_lines_give_error_lines_and_the_stream_goes_on() -> None:
    secret_ip = "203.0.113.99"
    out = run(
        [
            "{not json",
            json.dumps({"id": "x", "kind": "view", "message_id": "m"}),
            line("e2", "not-a-time", ip=secret_ip),
            json.dumps(["a", "list"]),
            "",
            line("e3", "2026-01-05T10:05:00Z"),
        ]
    )
    assert [o.get("line") for o in out[:4]] == [1, 2, 3, 4]
    assert all(set(o) == {"line", "error"} for o in out[:4])
    assert "kind" in str(out[1]["error"]) and "at" in str(out[2]["error"])
    assert secret_ip not in json.dumps(out)  # errors name fields, never values
    assert out[4]["id"] == "e3"  # blank line 5 is skipped without output
    assert len(out) == 5


def test_time_comes_from_the_lines_so_an_old_log_is_judged_the_same() -> None:
    old = [line("e1", "2019-03-01T10:00:09Z", sent_at="2019-03-01T10:00:00Z")]
    new = [line("e1", "2026-01-05T10:00:09Z")]
    chrome_2019 = CHROME.replace("143.0.0.0", "72.0.3626.121")
    old_browser = [
        line("e1", "2019-03-01T10:10:00Z", sent_at="2019-03-01T10:00:00Z", user_agent=chrome_2019)
    ]
    assert run(old) == run(new)
    # Chrome 72 was current in March 2019: not outdated when the log is from then.
    assert run(old_browser)[0]["verdict"] == "human"


def test_missing_optional_fields_are_tolerated() -> None:
    minimal = json.dumps(
        {
            "id": "o1",
            "kind": "open",
            "message_id": "m9",
            "sent_at": "2026-01-05T10:00:00+00:00",
            "at": "2026-01-05T11:00:00+01:00",
            "ip": "73.15.2.2",
            "user_agent": "Mozilla/5.0",
        }
    )
    out = run([minimal])
    # +01:00 makes this the same instant as sent_at: an instant MPP fetch.
    assert out == [{"id": "o1", "verdict": "automated", "reason": "apple_mpp", "confidence": 0.92}]
