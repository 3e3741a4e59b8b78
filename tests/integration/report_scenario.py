"""Builds journeys with known outcomes the way the product writes them.

Step logs go through the real `record_steps` activity (run row, step_log, rollups); sends
and tracking events are written as the sending and tracking code write them, followed by
the rollup hook that code calls (`on_send_status`, `on_tracking_verdict`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import select

from activities.runs import RunActivities
from core.db import Database
from core.models import Contact, Journey, JourneyVersion, Run, Send, TrackingEvent
from services.report_rollup import on_run_exit, on_send_status, on_tracking_verdict
from workflows.types import RecordInput, StepRecord

DAY1 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)

POST_VISIT_STEPS: dict[str, Any] = {
    "thanks": {"type": "send_email", "template": "thanks", "next": "engaged?"},
    "engaged?": {
        "type": "wait_for_engagement",
        "send_step": "thanks",
        "event": "click",
        "link": "book",
        "timeout": "P3D",
        "yes": "tag",
        "no": "nudge",
    },
    "nudge": {"type": "send_email", "template": "nudge", "next": "done"},
    "tag": {"type": "update_contact", "set": {"stage": "engaged"}, "next": "done"},
    "done": {"type": "exit"},
}


@dataclass
class Scenario:
    db: Database
    key: str = field(default_factory=lambda: f"rpt-{uuid.uuid4().hex[:10]}")
    version: int = 1

    def template(self, name: str) -> str:
        return f"{self.key}-{name}"

    async def journey(self, steps: dict[str, Any] | None = None) -> None:
        steps = {
            name: (
                {**spec, "template": self.template(spec["template"])}
                if "template" in spec
                else spec
            )
            for name, spec in (steps or POST_VISIT_STEPS).items()
        }
        definition = {
            "key": self.key,
            "name": "Report test",
            "category": "care_reminders",
            "trigger": {"type": "manual"},
            "start": next(iter(steps)),
            "steps": steps,
        }
        async with self.db.session() as s:
            s.add(
                Journey(
                    key=self.key,
                    name="Report test",
                    status="active",
                    draft=definition,
                    latest_version=self.version,
                )
            )
            await s.commit()
            s.add(JourneyVersion(journey_key=self.key, version=self.version, definition=definition))
            await s.commit()

    async def contact(self, n: int) -> str:
        async with self.db.session() as s:
            c = Contact(external_id=f"{self.key}-mrn-{n}", email=f"{self.key}-{n}@example.com")
            s.add(c)
            await s.commit()
            return c.id

    async def run(
        self,
        contact_id: str,
        path: list[tuple[str, str, str | None]],
        *,
        status: str,
        exit_reason: str | None,
        at: datetime = DAY1,
        flushes: int = 2,
    ) -> str:
        """Records a run's trail [(step, action, outcome)] through record_steps, in batches.

        The last batch is recorded twice, as a retried activity would.
        """
        run_id = f"run-{uuid.uuid4().hex}"
        visits: dict[str, int] = {}
        records = []
        for seq, (step, action, outcome) in enumerate(path, start=1):
            if action == "entered":
                visits[step] = visits.get(step, 0) + 1
            records.append(
                StepRecord(
                    seq, step, visits.get(step, 1), action, at + timedelta(seconds=seq), outcome
                )
            )
        acts = RunActivities(self.db)
        size = max(1, -(-len(records) // flushes))
        batches = [records[i : i + size] for i in range(0, len(records), size)] or [[]]
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            inp = RecordInput(
                run_id=run_id,
                workflow_id=f"journey/{self.key}/{contact_id}",
                journey_key=self.key,
                version=self.version,
                contact_id=contact_id,
                records=batch,
                status=status if last else "running",
                step=batch[-1].step if batch else None,
                visits=dict(visits),
                exit_reason=exit_reason if last else None,
            )
            await acts.record_steps(inp)
            if last:
                await acts.record_steps(inp)  # retry: must not count twice
        return run_id

    async def goal(self, run_id: str, at: datetime = DAY2) -> None:
        async with self.db.session() as s:
            run = await s.get(Run, run_id)
            assert run is not None
            run.goal_reached_at = at
            s.add(run)
            await s.flush()
            await on_run_exit(s, run_id)
            await s.commit()

    async def send(
        self,
        run_id: str,
        contact_id: str,
        step: str,
        *,
        status: str = "sent",
        detail: str | None = None,
        delivery: str | None = None,
        unsubscribed: bool = False,
        at: datetime = DAY1,
    ) -> str:
        template = self.template(str(POST_VISIT_STEPS.get(step, {}).get("template", step)))
        send_key = f"{run_id}/{step}/1"
        async with self.db.session() as s:
            send = Send(
                send_key=send_key,
                run_id=run_id,
                journey_key=self.key,
                version=self.version,
                step=step,
                visit=1,
                contact_id=contact_id,
                template_key=template,
                message_id=f"<{uuid.uuid4().hex}@test>",
                status=status,
                detail=detail,
                delivery=delivery,
                attempts=1,
                created_at=at,
                sent_at=at if status == "sent" else None,
                unsubscribed_at=at + timedelta(hours=2) if unsubscribed else None,
            )
            s.add(send)
            await s.flush()
            await on_send_status(s, send.id)
            await s.commit()
            return send.id

    async def update_send(self, send_id: str, **changes: Any) -> None:
        async with self.db.session() as s:
            send = await s.get(Send, send_id)
            assert send is not None
            for k, v in changes.items():
                setattr(send, k, v)
            s.add(send)
            await s.flush()
            await on_send_status(s, send_id)
            await s.commit()

    async def track(
        self,
        send_id: str,
        kind: str,
        verdict: str,
        reason: str,
        *,
        link: str | None = None,
        at: datetime = DAY1,
    ) -> str:
        async with self.db.session() as s:
            ev = TrackingEvent(
                send_id=send_id,
                kind=kind,
                link=link,
                at=at,
                ip="192.0.2.1",
                user_agent="test",
                verdict=None,
            )
            s.add(ev)
            await s.commit()  # stored first, judged after (as the tracking endpoints do)
            ev.verdict, ev.reason, ev.confidence = verdict, reason, 0.9
            s.add(ev)
            await s.flush()
            await on_tracking_verdict(s, ev.id, None)
            await s.commit()
            return ev.id

    async def rejudge(self, event_id: str, verdict: str, reason: str) -> None:
        async with self.db.session() as s:
            ev = await s.get(TrackingEvent, event_id)
            assert ev is not None
            previous = ev.verdict
            ev.verdict, ev.reason, ev.revised_at = verdict, reason, datetime.now(UTC)
            s.add(ev)
            await s.flush()
            await on_tracking_verdict(s, event_id, previous)
            await s.commit()

    async def sends_of(self, step: str) -> dict[str, str]:
        """run_id -> send_id for one step."""
        async with self.db.session() as s:
            rows = (
                await s.exec(select(Send).where(Send.journey_key == self.key, Send.step == step))
            ).all()
        return {r.run_id: r.id for r in rows}


def entered_left(step: str, nxt: str | None) -> list[tuple[str, str, str | None]]:
    return [(step, "entered", None), (step, "left", nxt)]


def exit_at(step: str, reason: str) -> list[tuple[str, str, str | None]]:
    return [(step, "entered", None), (step, "exited", reason)]


async def post_visit(sc: Scenario) -> dict[str, Any]:
    """24 runs through POST_VISIT_STEPS with the outcomes the report tests expect.

    thanks: 22 sent (21 bounced, 20 complained, 19 unsubscribed), 22-23 blocked no_consent.
    engaged?: 0-5 -> tag, 22-23 exit_when, 6-21 -> nudge.  tag: 0-3 exit goal, 4-5 -> done.
    done: 18 complete.  Goal reached: 0-4.
    thanks opens: MPP 0-14; human 0-9 (day 1) and again 0-4 (day 2); unknown 15, 16.
    thanks clicks: scanner on book+info 0-11; human book 0-5, human info 6, human book 0 again.
    nudge (6-21 sent): MPP 6-14, human 16-18.
    """
    await sc.journey()
    contacts = [await sc.contact(i) for i in range(24)]
    runs: list[str] = []
    for i, cid in enumerate(contacts):
        path = entered_left("thanks", "engaged?")
        if i <= 5:
            path += entered_left("engaged?", "tag")
            path += exit_at("tag", "goal") if i <= 3 else entered_left("tag", "done")
        elif i >= 22:
            path += exit_at("engaged?", "exit_when")
        else:
            path += entered_left("engaged?", "nudge") + entered_left("nudge", "done")
        if not (i <= 3 or i >= 22):
            path += [
                ("done", "entered", None),
                ("done", "exited", "completed"),
                ("done", "left", None),
            ]
        reason = "goal" if i <= 3 else "exit_when" if i >= 22 else "completed"
        status = "completed" if reason == "completed" else "exited"
        runs.append(await sc.run(cid, path, status=status, exit_reason=reason))
    for i in range(5):
        await sc.goal(runs[i])

    thanks: dict[int, str] = {}
    for i, (run_id, cid) in enumerate(zip(runs, contacts, strict=True)):
        if i >= 22:
            await sc.send(run_id, cid, "thanks", status="blocked", detail="no_consent")
            continue
        thanks[i] = await sc.send(run_id, cid, "thanks", unsubscribed=i == 19)
    await sc.update_send(thanks[21], delivery="bounced")
    await sc.update_send(thanks[20], delivery="complained")
    nudge = {i: await sc.send(runs[i], contacts[i], "nudge") for i in range(6, 22)}

    events: dict[str, str] = {}
    t = DAY1 + timedelta(seconds=5)
    for i in range(15):
        await sc.track(thanks[i], "open", "automated", "apple_mpp", at=t)
    for i in range(10):
        events[f"human-open-{i}"] = await sc.track(
            thanks[i], "open", "human", "mail_client", at=DAY1 + timedelta(hours=3)
        )
    for i in range(5):
        await sc.track(thanks[i], "open", "human", "browser", at=DAY2)
    for i in (15, 16):
        await sc.track(
            thanks[i], "open", "unknown", "unrecognised_client", at=DAY1 + timedelta(hours=4)
        )
    for i in range(12):
        for link in ("book", "info"):
            await sc.track(thanks[i], "click", "automated", "link_scanner", link=link, at=t)
    for i in range(6):
        await sc.track(
            thanks[i], "click", "human", "browser", link="book", at=DAY1 + timedelta(hours=5)
        )
    await sc.track(
        thanks[6], "click", "human", "browser", link="info", at=DAY1 + timedelta(hours=5)
    )
    await sc.track(thanks[0], "click", "human", "browser", link="book", at=DAY2)
    for i in range(6, 15):
        await sc.track(nudge[i], "open", "automated", "apple_mpp", at=t)
    for i in (16, 17, 18):
        await sc.track(nudge[i], "open", "human", "mail_client", at=DAY2)
    return {"runs": runs, "contacts": contacts, "thanks": thanks, "nudge": nudge, "events": events}
