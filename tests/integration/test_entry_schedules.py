"""Scheduled journeys: a Temporal schedule per journey, kept in step with publish / pause /
resume / archive, whose firing enrols the audience (a segment, or contacts whose date
attribute is due in the firing's window)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from temporalio.client import Client
from temporalio.service import RPCError

from core.config import Settings
from core.db import Database
from core.models import Segment, SegmentMembership
from services.schedules import enroll_audience, schedule_id
from tests.helpers import eventually
from tests.integration.entry_support import contact, definition, published, runs_of, tag
from workflows.scheduled_entry import AudienceInput


async def _segment(db: Database, key: str, members: list[str]) -> None:
    async with db.session() as s:
        s.add(Segment(key=key, name="test"))
        await s.flush()
        for cid in members:
            s.add(SegmentMembership(segment_key=key, contact_id=cid))
        await s.commit()


async def test_cron_schedule_follows_the_journey_and_enrols_its_segment(
    api: httpx.AsyncClient, db: Database, temporal: Client
) -> None:
    t = tag()
    members = [await contact(api) for _ in range(3)]
    outsider = await contact(api)
    seg = f"sched-{t}"
    await _segment(db, seg, members)
    trigger = {"type": "schedule", "cron": "0 9 * * mon", "timezone": "America/New_York",
               "segment": seg}
    key = await published(api, definition(f"cr-{t}", trigger))

    handle = temporal.get_schedule_handle(schedule_id(key))
    desc = await handle.describe()
    assert desc.schedule.state.paused is False
    assert desc.schedule.spec.time_zone_name == "America/New_York"
    cal = desc.schedule.spec.calendars or desc.schedule.spec.cron_expressions
    assert cal, desc.schedule.spec
    assert desc.schedule.action.workflow == "ScheduledEntry"  # type: ignore[attr-defined]

    await handle.trigger()

    async def enrolled() -> list[str]:
        ids = sorted(r["contact_id"] for r in await runs_of(api, key))
        return ids if len(ids) == 3 else []

    assert await eventually(enrolled, timeout=30) == sorted(members)
    assert outsider not in await enrolled()

    await api.post(f"/v1/journeys/{key}/pause")
    assert (await handle.describe()).schedule.state.paused is True
    await api.post(f"/v1/journeys/{key}/resume")
    assert (await handle.describe()).schedule.state.paused is False
    await api.post(f"/v1/journeys/{key}/archive")
    with pytest.raises(RPCError):
        await handle.describe()


async def test_publishing_another_trigger_removes_the_schedule(
    api: httpx.AsyncClient, temporal: Client
) -> None:
    t = tag()
    d = definition(f"ch-{t}", {"type": "schedule", "cron": "@daily"})
    key = await published(api, d)
    handle = temporal.get_schedule_handle(schedule_id(key))
    assert (await handle.describe()).schedule.state.paused is False
    d["trigger"] = {"type": "event", "event": f"go_{t}"}
    assert (await api.put(f"/v1/journeys/{key}", json=d)).status_code == 200
    assert (await api.post(f"/v1/journeys/{key}/publish")).status_code == 200
    with pytest.raises(RPCError):
        await handle.describe()


async def test_attribute_schedule_enrols_contacts_due_in_the_window(
    api: httpx.AsyncClient, db: Database, settings: Settings, temporal: Client
) -> None:
    t = tag()
    attr = f"birthday_{t}"
    trigger = {"type": "schedule", "attribute": attr, "at_local_time": "09:00"}
    key = await published(api, definition(f"bd-{t}", trigger, reentry={"mode": "always"}))
    desc = await temporal.get_schedule_handle(schedule_id(key)).describe()
    assert [i.every for i in desc.schedule.spec.intervals] == [timedelta(minutes=15)]

    # 09:00 on 2026-03-10: 13:00Z in New York (EDT), 08:00Z in Paris, 00:00Z in Tokyo.
    ny = await contact(api, timezone="America/New_York", attributes={attr: "1980-03-10"})
    paris = await contact(api, timezone="Europe/Paris", attributes={attr: "1975-03-10"})
    ny_feb = await contact(api, timezone="America/New_York", attributes={attr: "1980-02-10"})
    # Attributes are typed (date after the first value), so a non-date never reaches here.
    r = await api.post("/v1/contacts", json={"external_id": f"bad-{t}", "attributes": {attr: "not a date"}})
    assert r.status_code == 422
    start = datetime(2026, 3, 10, 13, 0, tzinfo=UTC)
    inp = AudienceInput(key, "attribute", start, start + timedelta(minutes=15))
    out = await enroll_audience(db, settings, temporal, inp)
    assert out["enrolled"] == 1, out
    assert [r["contact_id"] for r in await runs_of(api, key)] == [ny]
    assert paris not in {r["contact_id"] for r in await runs_of(api, key)}
    assert ny_feb not in {r["contact_id"] for r in await runs_of(api, key)}

    paris_window = AudienceInput(key, "attribute", start - timedelta(hours=5),
                                 start - timedelta(hours=5) + timedelta(minutes=15))
    assert (await enroll_audience(db, settings, temporal, paris_window))["enrolled"] == 1


async def test_attribute_schedule_firing_uses_its_own_window(
    api: httpx.AsyncClient, temporal: Client
) -> None:
    """Trigger the schedule: the ScheduledEntry workflow derives [fired - 15 min, fired)
    and enrols the contact whose occurrence was five minutes ago."""
    t = tag()
    attr = f"renewal_{t}"
    due = (datetime.now(UTC) - timedelta(minutes=5)).replace(second=0, microsecond=0)
    trigger = {"type": "schedule", "attribute": attr, "at_local_time": due.strftime("%H:%M")}
    key = await published(api, definition(f"bf-{t}", trigger))
    hit = await contact(api, timezone="UTC", attributes={attr: due.date().isoformat()})
    not_due = (due + timedelta(days=180)).date().isoformat()
    await contact(api, timezone="UTC", attributes={attr: not_due})
    await temporal.get_schedule_handle(schedule_id(key)).trigger()

    async def enrolled() -> list[str]:
        return [r["contact_id"] for r in await runs_of(api, key)]

    assert await eventually(enrolled, timeout=30) == [hit]
    # The window came from the firing's own time, which Temporal hands the workflow.
    from workflows.scheduled_entry import SCHEDULED_START_TIME

    async def firings() -> list[str]:
        query = f"WorkflowType = 'ScheduledEntry' AND JourneyKey = '{key}'"
        return [wf.id async for wf in temporal.list_workflows(query)]

    for wid in await eventually(firings):
        attrs = (await temporal.get_workflow_handle(wid).describe()).typed_search_attributes
        assert attrs.get(SCHEDULED_START_TIME) is not None


async def test_audience_pages_through_every_contact(db: Database) -> None:
    from services.audience import audience_page

    trigger = {"type": "schedule", "cron": "@daily"}
    async with db.session() as s:
        first = await audience_page(s, trigger, after=None, limit=3)
        second = await audience_page(s, trigger, after=first.cursor, limit=3)
    assert len(first.contact_ids) == 3 and first.cursor == first.contact_ids[-1]
    assert first.contact_ids == sorted(first.contact_ids)
    assert second.contact_ids and min(second.contact_ids) > first.cursor  # type: ignore[operator]
    async with db.session() as s:
        last = await audience_page(s, trigger, after="c_" + "f" * 20, limit=3)
    assert last == type(last)([], None)


def test_activity_resumes_from_its_last_heartbeat() -> None:
    from activities.entry import _resume

    assert _resume([]) == (None, None)
    cursor, totals = _resume(["c_42", {"enrolled": 7, "skipped_by_reason": {"reentry_never": 2}}])
    assert cursor == "c_42" and totals is not None
    assert totals.as_dict() == {
        "enrolled": 7, "skipped": 2, "skipped_by_reason": {"reentry_never": 2}
    }


async def test_every_cron_form_the_dsl_accepts_makes_a_schedule(
    api: httpx.AsyncClient, temporal: Client
) -> None:
    for i, cron in enumerate(
        ["*/15 9-17 * jan-mar mon-fri", "0 0 1 * 7", "5 4 * * sun", "0 12 1,15 * *", "@weekly",
         "@hourly", "0 9 * * 1-5"]
    ):
        key = await published(
            api, definition(f"cf-{i}-{tag()}", {"type": "schedule", "cron": cron})
        )
        desc = await temporal.get_schedule_handle(schedule_id(key)).describe()
        assert desc.info.next_action_times, cron
        await api.post(f"/v1/journeys/{key}/archive")
