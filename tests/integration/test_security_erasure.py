"""DELETE /v1/contacts/{id}: PHI gone everywhere, suppression and audit trail kept,
running runs exited with reason `erased`, later reads 404."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import text
from sqlmodel import col, select

from core.config import Settings
from core.db import Database
from core.models import (
    AuditLog,
    Consent,
    Contact,
    Event,
    OutboxMessage,
    Run,
    Segment,
    SegmentMembership,
    Send,
    Suppression,
    TrackingEvent,
    new_id,
)
from services.context import ServiceContext
from services.events import store_event
from services.identity import email_hash
from tests.helpers import eventually
from tests.security_helpers import enroll, grant_consent, send_wait_send_journey


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_erasure_removes_phi_keeps_suppression_and_audit_and_exits_runs(
    api: httpx.AsyncClient, db: Database, settings: Settings, key_for: Any
) -> None:
    tag, secret = uuid.uuid4().hex[:10], f"erase-me-{uuid.uuid4().hex}"
    address = f"{secret}@example.com"
    r = await api.post(
        "/v1/contacts",
        json={"external_id": f"mrn-{secret}", "email": address, "attributes": {"dx": secret}},
    )
    cid = r.json()["id"]
    await grant_consent(db, cid)
    pepper = str(settings.secret_values()["api_key_pepper"])
    async with db.session() as s:
        await store_event(ServiceContext(s, settings), cid, "visit", {"note": secret})
        s.add(
            Suppression(
                email_hash=email_hash(address, pepper), category="marketing", reason="manual"
            )
        )
        s.add(Segment(key=f"seg-{tag}"))
        await s.commit()
        s.add(SegmentMembership(segment_key=f"seg-{tag}", contact_id=cid))
        # An earlier message, with a recipient spelled in another case, and an open on it.
        s.add(
            OutboxMessage(
                mail_from="x@example.org", rcpt_to=[address.upper()], subject="old", raw=b"x"
            )
        )
        s.add(
            OutboxMessage(
                mail_from="x@example.org",
                rcpt_to=[f"other-{tag}@example.com"],
                subject="keep",
                raw=b"x",
            )
        )
        send_id = new_id("s")
        s.add(
            Send(
                id=send_id,
                send_key=f"old/{tag}",
                run_id=f"old-{tag}",
                journey_key="old",
                version=1,
                step="s",
                visit=1,
                contact_id=cid,
                template_key="t",
                message_id=f"<{tag}@x>",
                status="sent",
            )
        )
        s.add(
            TrackingEvent(
                send_id=send_id,
                kind="open",
                ip="203.0.113.9",
                user_agent="Mozilla/5.0",
                headers={"accept": "image/*"},
                verdict="human",
            )
        )
        await s.commit()

    key = f"erase-{tag}"
    await send_wait_send_journey(api, key, "PT1H")
    await enroll(api, key, cid)

    async def at_pause() -> bool:
        r = await api.get(f"/v1/journeys/{key}/runs/{cid}")
        return r.status_code == 200 and r.json()["step"] == "pause"

    await eventually(at_pause, timeout=20)

    async def first_message_arrived() -> bool:
        async with db.session() as s:
            rows = (
                await s.exec(select(OutboxMessage).where(OutboxMessage.subject == "Hello 1"))
            ).all()
        return any(address in m.rcpt_to for m in rows)

    await eventually(first_message_arrived)

    r = await api.delete(f"/v1/contacts/{cid}", headers=bearer(await key_for("designer")))
    assert r.status_code == 403
    r = await api.delete(f"/v1/contacts/{cid}", headers=bearer(await key_for("operator")))
    assert r.status_code == 204 and r.content == b""

    # Later reads and changes: 404.
    assert (await api.get(f"/v1/contacts/{cid}")).status_code == 404
    assert (await api.patch(f"/v1/contacts/{cid}", json={"timezone": "UTC"})).status_code == 404
    assert (await api.delete(f"/v1/contacts/{cid}")).status_code == 404

    async with db.session() as s:
        c = await s.get(Contact, cid)
        assert c is not None and c.deleted_at is not None
        assert (c.email, c.email_hash, c.external_id, c.attributes, c.timezone) == (
            None,
            None,
            None,
            {},
            "UTC",
        )
        events = (await s.exec(select(Event).where(Event.contact_id == cid))).all()
        assert events and all(e.properties == {} for e in events)
        outbox = (await s.exec(select(OutboxMessage))).all()
        assert not [m for m in outbox if any(address.lower() == r.lower() for r in m.rcpt_to)]
        assert [m for m in outbox if f"other-{tag}@example.com" in m.rcpt_to]  # others untouched
        te = (await s.exec(select(TrackingEvent).where(TrackingEvent.send_id == send_id))).one()
        assert (te.ip, te.user_agent, te.headers, te.verdict) == (None, None, {}, "human")
        assert not (
            await s.exec(select(SegmentMembership).where(SegmentMembership.contact_id == cid))
        ).all()
        # Kept: the suppression (hashed), the consent record, the audit trail.
        kept = (
            await s.exec(
                select(Suppression).where(Suppression.email_hash == email_hash(address, pepper))
            )
        ).all()
        assert len(kept) == 1
        assert (await s.exec(select(Consent).where(Consent.contact_id == cid))).all()
        trail = (
            await s.exec(
                select(AuditLog)
                .where(AuditLog.resource == f"contact/{cid}")
                .order_by(col(AuditLog.id))
            )
        ).all()
        # The secret is nowhere in the tables that held it.
        for table in ("contact", "event", "outbox_message", "tracking_event", "audit_log"):
            found = (
                await s.exec(
                    text(f"SELECT count(*) FROM {table} t WHERE t::text LIKE :p").bindparams(
                        p=f"%{secret}%"
                    )
                )  # type: ignore[call-overload]
            ).one()[0]
            assert found == 0, table
    actions = [a.action for a in trail]
    assert actions[0] == "create" and "read" in actions and actions[-1] == "erase"
    assert ("denied", "designer") in [(a.action, a.role) for a in trail]
    erase = trail[-1]
    assert {"email", "attributes", "external_id", "event.properties"} <= set(erase.fields)
    assert (
        erase.details
        and erase.details["outbox_deleted"] >= 2
        and erase.details["events_cleared"] == 1
    )
    # The run read before erasure was audited as a read of the contact's data.
    assert ("read", ["run"]) in [(a.action, a.fields) for a in trail]

    async def exited() -> Run | None:
        async with db.session() as s:
            run = (
                await s.exec(select(Run).where(Run.journey_key == key, Run.contact_id == cid))
            ).one()
        return run if run.status == "exited" else None

    run = await eventually(exited, timeout=20)
    assert run is not None and run.exit_reason == "erased"
    async with db.session() as s:
        sends = (await s.exec(select(Send).where(Send.run_id == run.id))).all()
    assert [x.step for x in sends] == ["first"]  # the second send never happened


async def test_erasing_a_contact_without_runs(api: httpx.AsyncClient, db: Database) -> None:
    tag = uuid.uuid4().hex[:10]
    r = await api.post("/v1/contacts", json={"external_id": f"mrn-{tag}"})
    cid = r.json()["id"]
    assert (await api.delete(f"/v1/contacts/{cid}")).status_code == 204
    assert (await api.get(f"/v1/contacts/{cid}")).status_code == 404
    # The external id is free again: a new record, a new opaque id.
    r = await api.post("/v1/contacts", json={"external_id": f"mrn-{tag}"})
    assert r.status_code == 201 and r.json()["id"] != cid
    assert (await api.delete("/v1/contacts/c_doesnotexist")).status_code == 404
