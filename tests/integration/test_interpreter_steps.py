"""One test (or a few) per step type of SPEC section 3, through the real stack: API,
Temporal dev server, worker, PostgreSQL and the SMTP sink."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlmodel import col, select
from temporalio.client import Client

from core.config import Settings
from core.db import Database
from core.models import (
    AuditLog,
    Contact,
    Event,
    OutboxMessage,
    Run,
    Segment,
    SegmentMembership,
    Send,
)
from dsl.split import choose_path
from tests.helpers import eventually
from tests.journey_support import (
    deliver_event,
    entered,
    finished,
    human_engagement,
    journey,
    make_contact,
    make_template,
    publish,
    run_row,
    start,
    step_log,
    tag,
    until,
    waiting,
)
from workflows.journey import workflow_id


async def _outbox_for(db: Database, contact_id: str) -> list[OutboxMessage]:
    async with db.session() as s:
        c = await s.get(Contact, contact_id)
        assert c is not None
        rows = (await s.exec(select(OutboxMessage))).all()
    return [m for m in rows if c.email in m.rcpt_to]


async def _send_of(db: Database, run_id: str, step: str) -> Send:
    async def probe() -> Send | None:
        async with db.session() as s:
            return (
                await s.exec(select(Send).where(Send.run_id == run_id, Send.step == step))
            ).first()

    return await until(probe)


# --- send_email ---------------------------------------------------------------------------


async def test_send_email_sends_once_and_records_the_trail(
    api: httpx.AsyncClient, db: Database
) -> None:
    cid = await make_contact(api, db)
    tpl = await make_template(api)
    d = journey(
        {
            "hello": {"type": "send_email", "template": tpl, "next": "done"},
            "done": {"type": "exit", "reason": "said_hello"},
        },
        "hello",
    )
    key = await start(api, d, cid)
    run = await finished(api, key, cid)
    assert run["status"] == "exited" and run["exit_reason"] == "said_hello"
    assert run["visits"] == {"hello": 1, "done": 1}
    actions = [(h["step"], h["action"], h["outcome"]) for h in run["history"]]
    assert actions == [
        ("hello", "entered", None),
        ("hello", "left", "done"),
        ("done", "entered", None),
        ("done", "exited", "said_hello"),
    ]
    msgs = await eventually(lambda: _outbox_for(db, cid))
    assert len(msgs) == 1 and msgs[0].subject == f"Subject {tpl}"
    send = await _send_of(db, run["run_id"], "hello")
    assert send.status == "sent" and send.visit == 1


async def test_send_email_frequency_cap_skips_over_the_cap(
    api: httpx.AsyncClient, db: Database
) -> None:
    capped = await make_contact(api, db)
    free = await make_contact(api, db)
    now = datetime.now(UTC)
    async with db.session() as s:
        # Two marketing sends in the last day for one contact (from other journeys).
        for i in range(2):
            k = f"other-{tag()}/s/{i}"
            s.add(Send(send_key=k, run_id=f"other-{tag()}", journey_key="other", version=1,
                       step="s", visit=1, contact_id=capped, template_key="x",
                       category="care_reminders", message_id=f"<{k}@t>", status="sent",
                       sent_at=now - timedelta(hours=i + 1)))
        # A transactional send does not count.
        k = f"other-{tag()}/t/1"
        s.add(Send(send_key=k, run_id=f"other-{tag()}", journey_key="other", version=1, step="t",
                   visit=1, contact_id=free, template_key="x", category="transactional",
                   message_id=f"<{k}@t>", status="sent", sent_at=now))
        await s.commit()
    tpl = await make_template(api)
    d = journey(
        {
            "promo": {"type": "send_email", "template": tpl, "next": "done"},
            "done": {"type": "exit"},
        },
        "promo",
        frequency_cap={"max": 2, "period": "P1D", "action": "skip"},
    )
    key = await start(api, d, capped, free)
    run = await finished(api, key, capped)
    assert run["status"] == "completed"
    assert ("promo", "skipped", "frequency_cap") in [
        (h["step"], h["action"], h["outcome"]) for h in run["history"]
    ]
    other = await finished(api, key, free)
    assert "skipped" not in [h["action"] for h in other["history"]]
    assert len(await eventually(lambda: _outbox_for(db, free))) == 1
    assert await _outbox_for(db, capped) == []


async def test_send_email_inside_the_send_window_goes_at_once(
    api: httpx.AsyncClient, db: Database
) -> None:
    cid = await make_contact(api, db, timezone="Asia/Tokyo")
    tpl = await make_template(api)
    d = journey(
        {"s": {"type": "send_email", "template": tpl, "next": "done"}, "done": {"type": "exit"}},
        "s",
        send_window={"hours": "00:00-24:00"},
    )
    key = await start(api, d, cid)
    run = await finished(api, key, cid)
    assert run["status"] == "completed"
    assert len(await eventually(lambda: _outbox_for(db, cid))) == 1


# --- wait ---------------------------------------------------------------------------------


async def test_wait_duration_is_a_durable_timer(
    api: httpx.AsyncClient, db: Database, temporal: Client
) -> None:
    cid = await make_contact(api, db)
    d = journey(
        {"pause": {"type": "wait", "duration": "PT2S", "next": "done"}, "done": {"type": "exit"}},
        "pause",
    )
    key = await start(api, d, cid)
    state = await waiting(temporal, key, cid, "timer")
    assert state["step"] == "pause" and state["waiting_for"]["until"]
    until = datetime.fromisoformat(state["waiting_for"]["until"])
    # The run row mirrors what the run waits for.
    async def row_waits() -> bool:
        row = await run_row(db, key, cid)
        return row.waiting_for is not None and row.waiting_for["kind"] == "timer"

    await eventually(row_waits, timeout=2)
    run = await finished(api, key, cid)
    logs = await step_log(db, run["run_id"])
    went_in = next(r.at for r in logs if r.step == "pause" and r.action == "entered")
    went_out = next(r.at for r in logs if r.step == "pause" and r.action == "left")
    assert went_out - went_in >= timedelta(seconds=2)
    assert went_out >= until
    assert run["waiting_for"] is None


# --- wait_for_engagement -----------------------------------------------------------------


def _engagement_journey(tpl: str, timeout: str, event: str = "click", link: str | None = "book",
                        pause: str | None = None) -> dict[str, object]:
    wait = {"type": "wait_for_engagement", "send_step": "mail", "event": event,
            "timeout": timeout, "yes": "yes", "no": "no"}
    if link is not None:
        wait["link"] = link
    steps: dict[str, object] = {
        "mail": {"type": "send_email", "template": tpl, "next": "pause" if pause else "engaged?"},
        "engaged?": wait,
        "yes": {"type": "exit", "reason": "engaged"},
        "no": {"type": "exit", "reason": "not_engaged"},
    }
    if pause:
        steps["pause"] = {"type": "wait", "duration": pause, "next": "engaged?"}
    return journey(steps, "mail")


async def test_wait_for_engagement_moves_on_a_human_click_on_the_named_link(
    api: httpx.AsyncClient, db: Database, temporal: Client
) -> None:
    cid = await make_contact(api, db)
    tpl = await make_template(api, '<a href="{{ link(\'book\', \'https://x.test/b\') }}">b</a>')
    key = await start(api, _engagement_journey(tpl, "PT60S"), cid)
    state = await waiting(temporal, key, cid, "engagement")
    assert state["waiting_for"] | {"until": None} == {
        "kind": "engagement", "step": "mail", "event": "click", "link": "book", "until": None
    }
    send = await _send_of(db, state["run_id"], "mail")
    # A click on another link and an open do not satisfy a click on "book".
    await human_engagement(db, temporal, key, cid, send.id, "mail", "click", "other")
    await human_engagement(db, temporal, key, cid, send.id, "mail", "open")
    await waiting(temporal, key, cid, "engagement")
    assert (await run_of_state(temporal, key, cid))["status"] == "running"
    await human_engagement(db, temporal, key, cid, send.id, "mail", "click", "book")
    run = await finished(api, key, cid)
    assert run["exit_reason"] == "engaged"


async def run_of_state(temporal: Client, key: str, cid: str) -> dict[str, object]:
    state: dict[str, object] = await temporal.get_workflow_handle(workflow_id(key, cid)).query(
        "state"
    )
    return state


async def test_wait_for_engagement_times_out_to_no(
    api: httpx.AsyncClient, db: Database
) -> None:
    cid = await make_contact(api, db)
    tpl = await make_template(api)
    key = await start(api, _engagement_journey(tpl, "PT1S", event="open", link=None), cid)
    run = await finished(api, key, cid)
    assert run["exit_reason"] == "not_engaged"


async def test_wait_for_engagement_counts_a_human_engagement_from_before_the_wait(
    api: httpx.AsyncClient, db: Database, temporal: Client
) -> None:
    human = await make_contact(api, db)
    machine = await make_contact(api, db)
    tpl = await make_template(api)
    d = _engagement_journey(tpl, "PT2S", event="open", link=None, pause="PT2S")
    key = await start(api, d, human, machine)
    for cid, verdict in ((human, "human"), (machine, "automated")):
        state = await waiting(temporal, key, cid, "timer", step="pause")
        send = await _send_of(db, state["run_id"], "mail")
        # Recorded but not signalled: the wait finds it in the database. A click is an open.
        await human_engagement(db, None, key, cid, send.id, "mail", "click", "x", verdict)
    run = await finished(api, key, human)
    assert run["exit_reason"] == "engaged"
    logs = await step_log(db, run["run_id"])
    went_in = next(r.at for r in logs if r.step == "engaged?" and r.action == "entered")
    went_out = next(r.at for r in logs if r.step == "engaged?" and r.action == "left")
    assert went_out - went_in < timedelta(seconds=1)  # did not wait for the timeout
    assert (await finished(api, key, machine))["exit_reason"] == "not_engaged"


# --- wait_for_event -----------------------------------------------------------------------


def _event_journey(timeout: str) -> dict[str, object]:
    return journey(
        {
            "form?": {"type": "wait_for_event", "event": "form_submitted",
                      "where": {"form": "intake", "pages": {"op": "gte", "value": 2}},
                      "timeout": timeout, "yes": "yes", "no": "no"},
            "yes": {"type": "exit", "reason": "submitted"},
            "no": {"type": "exit", "reason": "silent"},
        },
        "form?",
    )


async def test_wait_for_event_moves_on_a_matching_event_only(
    api: httpx.AsyncClient, db: Database, temporal: Client
) -> None:
    cid = await make_contact(api, db)
    key = await start(api, _event_journey("PT60S"), cid)
    state = await waiting(temporal, key, cid, "event")
    assert state["waiting_for"]["event"] == "form_submitted"
    await deliver_event(db, temporal, key, cid, "form_submitted", {"form": "other", "pages": 3})
    await deliver_event(db, temporal, key, cid, "form_submitted", {"form": "intake", "pages": 1})
    await deliver_event(db, temporal, key, cid, "page_viewed", {"form": "intake", "pages": 3})
    await waiting(temporal, key, cid, "event")
    assert (await run_of_state(temporal, key, cid))["status"] == "running"
    await deliver_event(db, temporal, key, cid, "form_submitted", {"form": "intake", "pages": 2})
    run = await finished(api, key, cid)
    assert run["exit_reason"] == "submitted"


async def test_wait_for_event_times_out_to_no(api: httpx.AsyncClient, db: Database) -> None:
    cid = await make_contact(api, db)
    key = await start(api, _event_journey("PT1S"), cid)
    assert (await finished(api, key, cid))["exit_reason"] == "silent"


async def test_wait_for_event_counts_an_event_stored_since_the_step_began(
    api: httpx.AsyncClient, db: Database, temporal: Client
) -> None:
    cid = await make_contact(api, db)
    d = _event_journey("PT30S")
    key = await publish(api, d)
    # Stored (never signalled) with a time after the run enters the step.
    at = datetime.now(UTC) + timedelta(seconds=2)
    await deliver_event(db, temporal, key, cid, "form_submitted", {"form": "intake", "pages": 5},
                        occurred_at=at, signal=False)
    r = await api.post(f"/v1/journeys/{key}/enrollments", json={"contact_ids": [cid]})
    assert r.status_code == 200
    assert (await finished(api, key, cid, timeout=10))["exit_reason"] == "submitted"


# --- split --------------------------------------------------------------------------------


async def test_split_is_deterministic_per_contact_and_version(
    api: httpx.AsyncClient, db: Database
) -> None:
    contacts = [await make_contact(api, db) for _ in range(6)]
    d = journey(
        {
            "ab": {"type": "split", "paths": [{"weight": 1, "next": "a"},
                                              {"weight": 3, "next": "b"}]},
            "a": {"type": "exit", "reason": "path_a"},
            "b": {"type": "exit", "reason": "path_b"},
        },
        "ab",
    )
    key = await start(api, d, *contacts)
    for cid in contacts:
        expected = ["path_a", "path_b"][choose_path(cid, key, 1, [1, 3], step="ab")]
        assert (await finished(api, key, cid))["exit_reason"] == expected


# --- update_contact -----------------------------------------------------------------------


async def test_update_contact_sets_attributes_and_segments_in_one_go(
    api: httpx.AsyncClient, db: Database
) -> None:
    joined, left = f"seg-{tag()}", f"seg-{tag()}"
    t = tag()  # own attribute names: an account's schema may fix each name's type
    old, keep, stage, score = (f"{n}_{t}" for n in ("old", "keep", "stage", "score"))
    cid = await make_contact(api, db, attributes={old: 1, keep: "yes"})
    async with db.session() as s:
        s.add(Segment(key=joined))
        s.add(Segment(key=left))
        await s.commit()
        s.add(SegmentMembership(segment_key=left, contact_id=cid))
        await s.commit()
    d = journey(
        {
            "tag": {"type": "update_contact", "set": {stage: "engaged", score: 3},
                    "unset": [old], "add_segments": [joined], "remove_segments": [left],
                    "next": "done"},
            "done": {"type": "exit"},
        },
        "tag",
    )
    key = await start(api, d, cid)
    run = await finished(api, key, cid)
    assert run["status"] == "completed"
    async with db.session() as s:
        contact = await s.get(Contact, cid)
        assert contact is not None
        assert contact.attributes == {keep: "yes", stage: "engaged", score: 3}
        segs = set((await s.exec(select(SegmentMembership.segment_key).where(
            SegmentMembership.contact_id == cid))).all())
        assert segs == {joined}
        events = (await s.exec(select(Event).where(Event.contact_id == cid))).all()
        assert sorted((e.name, e.properties["segment"]) for e in events) == [
            ("segment_entry", joined), ("segment_exit", left)
        ]
        audit = (await s.exec(select(AuditLog).where(
            AuditLog.resource == f"contact/{cid}", AuditLog.actor == f"journey:{key}"))).all()
        assert len(audit) == 1
        assert audit[0].fields == [old, score, stage, "segments"]


# --- goto and the visited-step guard ------------------------------------------------------


async def test_goto_loop_ends_with_loop_guard_after_the_allowed_visits(
    api: httpx.AsyncClient, db: Database
) -> None:
    cid = await make_contact(api, db)
    d = journey(
        {
            "again": {"type": "wait", "duration": "PT0.2S", "next": "back", "max_visits": 3},
            "back": {"type": "goto", "step": "again", "max_visits": 3},
        },
        "again",
    )
    key = await start(api, d, cid)
    run = await finished(api, key, cid)
    assert run["status"] == "exited" and run["exit_reason"] == "loop_guard"
    assert run["visits"] == {"again": 3, "back": 3}
    assert entered(run) == ["again", "back"] * 3
    assert run["history"][-1] | {"at": None} == {
        "step": "again", "visit": 3, "action": "exited", "outcome": "loop_guard", "at": None
    }


async def test_default_budget_is_one_visit(api: httpx.AsyncClient, db: Database) -> None:
    cid = await make_contact(api, db)
    d = journey(
        {
            "w": {"type": "wait", "duration": "PT0.1S", "next": "g"},
            "g": {"type": "goto", "step": "w"},
        },
        "w",
    )
    key = await start(api, d, cid)
    run = await finished(api, key, cid)
    assert run["exit_reason"] == "loop_guard" and run["visits"] == {"w": 1, "g": 1}


# --- start_journey ------------------------------------------------------------------------


async def test_start_journey_enrols_in_the_newest_version_with_the_chain(
    api: httpx.AsyncClient, db: Database, temporal: Client
) -> None:
    cid = await make_contact(api, db)
    target = journey({"end": {"type": "exit", "reason": "v1"}}, "end")
    target_key = await publish(api, target)
    target["steps"] = {"end": {"type": "exit", "reason": "v2"}}
    r = await api.put(f"/v1/journeys/{target_key}", json=target)
    assert r.status_code == 200, r.text
    assert (await api.post(f"/v1/journeys/{target_key}/publish")).json()["version"] == 2
    d = journey(
        {
            "go": {"type": "start_journey", "journey": target_key, "next": "done"},
            "done": {"type": "exit"},
        },
        "go",
    )
    key = await start(api, d, cid)
    assert (await finished(api, key, cid))["status"] == "completed"
    other = await finished(api, target_key, cid)
    assert other["exit_reason"] == "v2" and other["version"] == 2
    result = await temporal.get_workflow_handle(workflow_id(target_key, cid)).result()
    assert result["chain"] == [key]


async def test_journeys_that_start_each_other_end_with_loop_guard(
    api: httpx.AsyncClient, db: Database
) -> None:
    cid = await make_contact(api, db)
    a = journey({"end": {"type": "exit"}}, "end")
    b = journey({"end": {"type": "exit"}}, "end")
    for d in (a, b):
        assert (await api.post("/v1/journeys", json=d)).status_code == 201
    a["steps"] = {"go": {"type": "start_journey", "journey": b["key"]}}
    a["start"] = "go"
    b["steps"] = {
        "pause": {"type": "wait", "duration": "PT1S", "next": "go"},
        "go": {"type": "start_journey", "journey": a["key"]},
    }
    b["start"] = "pause"
    for d in (a, b):
        r = await api.put(f"/v1/journeys/{d['key']}", json=d)
        assert r.status_code == 200, r.text
        assert (await api.post(f"/v1/journeys/{d['key']}/publish")).status_code == 200
    r = await api.post(f"/v1/journeys/{a['key']}/enrollments", json={"contact_ids": [cid]})
    assert r.json()["enrolled"] == 1

    async def second_a_run() -> dict[str, object] | None:
        r = await api.get(f"/v1/journeys/{a['key']}/runs", params={"status": "exited"})
        runs = [x for x in r.json()["runs"] if x["contact_id"] == cid]
        return runs[0] if runs else None

    looped = await until(second_a_run)
    assert looped["exit_reason"] == "loop_guard"
    assert (await finished(api, b["key"], cid))["status"] == "completed"
    async with db.session() as s:
        runs = (await s.exec(select(col(Run.status)).where(
            Run.journey_key == a["key"], Run.contact_id == cid))).all()
    assert sorted(runs) == ["completed", "exited"]



# --- a step that cannot succeed -----------------------------------------------------------


async def test_a_template_removed_after_publish_fails_that_send_and_the_run_goes_on(
    api: httpx.AsyncClient, db: Database
) -> None:
    from sqlmodel import select

    from core.models import Send, Template

    cid = await make_contact(api, db)
    tpl = await make_template(api)
    d = journey(
        {"mail": {"type": "send_email", "template": tpl, "next": "done"},
         "done": {"type": "exit"}},
        "mail",
    )
    key = await publish(api, d)
    async with db.session() as s:  # removed behind the journey's back
        t = await s.get(Template, tpl)
        await s.delete(t)
        await s.commit()
    r = await api.post(f"/v1/journeys/{key}/enrollments", json={"contact_ids": [cid]})
    assert r.json()["enrolled"] == 1
    run = await finished(api, key, cid)
    assert run["status"] == "completed"
    async with db.session() as s:
        send = (await s.exec(select(Send).where(Send.journey_key == key))).one()
    assert send.status == "failed" and "not found" in (send.detail or "")


async def test_a_malformed_definition_fails_the_workflow_at_once(
    temporal: Client, settings: Settings, worker: object
) -> None:
    from temporalio.client import WorkflowFailureError

    from workflows.journey import WORKFLOW_NAME
    from workflows.types import JourneyInput

    try:
        await temporal.execute_workflow(
            WORKFLOW_NAME,
            JourneyInput(f"bad-{tag()}", 1, "c_none", {"key": "bad", "steps": {}}),
            id=f"journey/bad-{tag()}/c_none",
            task_queue=settings.temporal_task_queue,
        )
        raise AssertionError("the workflow should have failed")
    except WorkflowFailureError as err:
        assert "DefinitionError" in str(err.cause)


async def test_update_contact_uses_the_segments_service_when_there_is_one(
    api: httpx.AsyncClient, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seam to the segments work: its add/remove helpers and change hook are used."""
    import services.segments as segment_service
    from services.context import ServiceContext

    static, rule = f"seg-{tag()}", f"seg-{tag()}"
    async with db.session() as s:
        s.add(Segment(key=static))
        s.add(Segment(key=rule, kind="rule", rule={"attr": "stage", "op": "exists"}))
        await s.commit()
    calls: list[tuple[str, str, list[str], object]] = []

    async def add_members(ctx: ServiceContext, key: str, ids: list[str]) -> dict[str, int]:
        calls.append(("add", key, list(ids), ctx.actor.id))
        return {"added": 1}

    async def remove_members(ctx: ServiceContext, key: str, ids: list[str]) -> dict[str, int]:
        calls.append(("remove", key, list(ids), ctx.actor.id))
        return {"removed": 0}

    async def on_contact_changed(
        ctx: ServiceContext, contact_id: str, *, kinds: set[str] | None = None
    ) -> None:
        calls.append(("hook", contact_id, sorted(kinds or ()), ctx.actor.id))

    monkeypatch.setattr(segment_service, "add_members", add_members, raising=False)
    monkeypatch.setattr(segment_service, "remove_members", remove_members, raising=False)
    monkeypatch.setattr(segment_service, "on_contact_changed", on_contact_changed, raising=False)
    cid = await make_contact(api, db)
    d = journey(
        {
            "tag": {"type": "update_contact", "set": {"stage": "x"},
                    "add_segments": [static, rule], "next": "done"},
            "done": {"type": "exit"},
        },
        "tag",
    )
    key = await start(api, d, cid)
    assert (await finished(api, key, cid))["status"] == "completed"
    actor = f"journey:{key}"
    assert calls == [
        ("add", static, [cid], actor),  # the rule segment is left to its rule
        ("hook", cid, sorted(["attr:stage", f"segment:{rule}", f"segment:{static}"]), actor),
    ]
