"""Every CONDITION form of SPEC section 3 in a branch step, evaluated by the judge activity
against the database. Each test runs a contact that matches and one that does not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.client import Client

from core.db import Database
from core.models import Event, Segment, SegmentMembership, Send, new_id
from tests.journey_support import (
    finished,
    human_engagement,
    journey,
    make_contact,
    make_template,
    start,
    tag,
    until,
    waiting,
)


def _branch(condition: dict[str, Any]) -> dict[str, Any]:
    return journey(
        {
            "check": {"type": "branch", "cases": [{"if": condition, "next": "yes"}],
                      "default": "no"},
            "yes": {"type": "exit", "reason": "matched"},
            "no": {"type": "exit", "reason": "unmatched"},
        },
        "check",
    )


async def _outcomes(
    api: httpx.AsyncClient, db: Database, condition: dict[str, Any],
    *attribute_sets: dict[str, Any],
) -> list[str]:
    contacts = [await make_contact(api, db, attributes=attrs) for attrs in attribute_sets]
    key = await start(api, _branch(condition), *contacts)
    return [(await finished(api, key, cid))["exit_reason"] for cid in contacts]


@pytest.mark.parametrize(
    ("op", "value", "matching", "other"),
    [
        ("eq", "gold", {"tier": "gold"}, {"tier": "silver"}),
        ("ne", "gold", {"tier": "silver"}, {"tier": "gold"}),
        ("gt", 50, {"tier": 51}, {"tier": 50}),
        ("gte", 50, {"tier": 50}, {"tier": 49}),
        ("lt", "2026-01-01", {"tier": "2025-12-31"}, {"tier": "2026-01-01"}),
        ("lte", 3.5, {"tier": 3.5}, {"tier": 4}),
        ("in", ["a", "b"], {"tier": "b"}, {"tier": "c"}),
        ("not_in", ["a", "b"], {"tier": "c"}, {"tier": "a"}),
        ("exists", None, {"tier": 0}, {"other": 1}),
        ("contains", "flu", {"tier": ["flu", "covid"]}, {"tier": ["covid"]}),
    ],
)
async def test_attr_condition(
    api: httpx.AsyncClient, db: Database, op: str, value: Any,
    matching: dict[str, Any], other: dict[str, Any],
) -> None:
    # One attribute per op: an account's attribute schema may fix each name's type.
    name = f"tier_{op}"
    condition: dict[str, Any] = {"attr": name, "op": op}
    if value is not None:
        condition["value"] = value

    def rename(attrs: dict[str, Any]) -> dict[str, Any]:
        return {name if k == "tier" else k: v for k, v in attrs.items()}

    outcomes = await _outcomes(api, db, condition, rename(matching), rename(other))
    assert outcomes == ["matched", "unmatched"]


async def test_segment_condition(api: httpx.AsyncClient, db: Database) -> None:
    seg = f"seg-{tag()}"
    member = await make_contact(api, db)
    stranger = await make_contact(api, db)
    async with db.session() as s:
        s.add(Segment(key=seg))
        await s.commit()
        s.add(SegmentMembership(segment_key=seg, contact_id=member))
        await s.commit()
    key = await start(api, _branch({"segment": seg}), member, stranger)
    assert (await finished(api, key, member))["exit_reason"] == "matched"
    assert (await finished(api, key, stranger))["exit_reason"] == "unmatched"


async def test_event_condition_within_a_period(api: httpx.AsyncClient, db: Database) -> None:
    recent, old, never = [await make_contact(api, db) for _ in range(3)]
    now = datetime.now(UTC)
    async with db.session() as s:
        for cid, ago in ((recent, timedelta(hours=2)), (old, timedelta(days=3))):
            s.add(Event(id=new_id("ev"), contact_id=cid, name="visit", occurred_at=now - ago))
        await s.commit()
    key = await start(api, _branch({"event": "visit", "within": "P1D"}), recent, old, never)
    assert [(await finished(api, key, c))["exit_reason"] for c in (recent, old, never)] == [
        "matched", "unmatched", "unmatched"
    ]
    # Without "within", any occurrence counts.
    key = await start(api, _branch({"event": "visit"}), old, never)
    assert [(await finished(api, key, c))["exit_reason"] for c in (old, never)] == [
        "matched", "unmatched"
    ]


async def test_engaged_condition_counts_only_human_engagement_of_this_run(
    api: httpx.AsyncClient, db: Database, temporal: Client
) -> None:
    human, machine = await make_contact(api, db), await make_contact(api, db)
    tpl = await make_template(api)
    d = journey(
        {
            "mail": {"type": "send_email", "template": tpl, "next": "pause"},
            "pause": {"type": "wait", "duration": "PT2S", "next": "check"},
            "check": {"type": "branch",
                      "cases": [{"if": {"engaged": "mail", "event": "click"}, "next": "yes"}],
                      "default": "no"},
            "yes": {"type": "exit", "reason": "matched"},
            "no": {"type": "exit", "reason": "unmatched"},
        },
        "mail",
    )
    key = await start(api, d, human, machine)
    for cid, verdict in ((human, "human"), (machine, "automated")):
        state = await waiting(temporal, key, cid, "timer", step="pause")

        async def send_id(run_id: str = state["run_id"]) -> str | None:
            async with db.session() as s:
                return (await s.exec(select(Send.id).where(Send.run_id == run_id))).first()

        sid = await until(send_id)
        await human_engagement(db, None, key, cid, sid, "mail", "click", "x", verdict)
    assert (await finished(api, key, human))["exit_reason"] == "matched"
    assert (await finished(api, key, machine))["exit_reason"] == "unmatched"


async def test_all_any_not(api: httpx.AsyncClient, db: Database) -> None:
    t = tag()
    age, zip_, out = f"age_{t}", f"zip_{t}", f"opted_out_{t}"
    condition = {
        "all": [
            {"attr": age, "op": "gte", "value": 50},
            {"any": [{"attr": zip_, "op": "eq", "value": "02139"},
                     {"attr": zip_, "op": "eq", "value": "02140"}]},
            {"not": {"attr": out, "op": "eq", "value": True}},
        ]
    }
    outcomes = await _outcomes(
        api, db, condition,
        {age: 61, zip_: "02140"},
        {age: 61, zip_: "02140", out: True},
        {age: 61, zip_: "10001"},
        {age: 40, zip_: "02139"},
    )
    assert outcomes == ["matched", "unmatched", "unmatched", "unmatched"]


async def test_first_matching_case_wins(api: httpx.AsyncClient, db: Database) -> None:
    d = journey(
        {
            "check": {"type": "branch", "cases": [
                {"if": {"attr": "n", "op": "gt", "value": 10}, "next": "big"},
                {"if": {"attr": "n", "op": "gt", "value": 0}, "next": "small"},
            ], "default": "none"},
            "big": {"type": "exit", "reason": "big"},
            "small": {"type": "exit", "reason": "small"},
            "none": {"type": "exit", "reason": "none"},
        },
        "check",
    )
    contacts = [await make_contact(api, db, attributes={"n": n}) for n in (20, 5, -1)]
    key = await start(api, d, *contacts)
    assert [(await finished(api, key, c))["exit_reason"] for c in contacts] == [
        "big", "small", "none"
    ]
