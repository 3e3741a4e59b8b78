"""Erasure tombstones the contact's tracked links: a destination URL with PHI in it (a
designer's choice) is gone from the database, and a later click gets a page, never a
redirect to it. Real mail through the SMTP sink, real click route."""

from __future__ import annotations

import asyncio
import re
import uuid
from email import message_from_bytes, policy
from email.message import EmailMessage

import httpx
from sqlalchemy import func, text
from sqlmodel import col, select

from core.db import Database
from core.models import OutboxMessage, Send, TrackedLink, TrackingEvent
from tests.journey_support import until
from tests.security_helpers import enroll, grant_consent, send_wait_send_journey


def _html(raw: bytes) -> str:
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    part = msg.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())


def _click_path(raw: bytes) -> str:
    # The visible "Book" link (the hidden trap link is a /t/c/ link too).
    found = re.search(r'href="https?://[^/"]+(/t/c/[^"]+)"[^>]*>Book<', _html(raw))
    assert found, "no tracked link in the message"
    return found.group(1)


def _other_tracking_paths(raw: bytes, click: str) -> list[str]:
    """The open pixel and the hidden trap link: both record a hit when followed."""
    paths = set(re.findall(r'"https?://[^/"]+(/t/[oc]/[^"]+)"', _html(raw))) - {click}
    assert any(p.startswith("/t/o/") for p in paths), "no open pixel in the message"
    assert any(p.startswith("/t/c/") for p in paths), "no trap link in the message"
    return sorted(paths)


async def test_erasure_tombstones_link_destinations(api: httpx.AsyncClient, db: Database) -> None:
    tag, secret = uuid.uuid4().hex[:10], f"mrn{uuid.uuid4().hex}"
    destination = f"https://clinic.example/book?patient={secret}"
    r = await api.post(
        "/v1/contacts", json={"external_id": f"mrn-{tag}", "email": f"p-{tag}@example.com"}
    )
    cid = r.json()["id"]
    await grant_consent(db, cid)
    key = f"erase-links-{tag}"
    html = '<p><a href="{{ link(\'book\', \'' + destination + '\') }}">Book</a></p>'
    await send_wait_send_journey(api, key, "PT1H", subject=f"Links {tag}", html=html)
    await enroll(api, key, cid)

    async def delivered() -> bytes | None:
        async with db.session() as s:
            m = (
                await s.exec(select(OutboxMessage).where(OutboxMessage.subject == f"Links {tag} 1"))
            ).first()
        return m.raw if m is not None else None

    raw = await until(delivered, timeout=20)
    path = _click_path(raw)
    others = _other_tracking_paths(raw, path)
    before = await api.get(path, follow_redirects=False)
    assert before.status_code == 302 and before.headers["location"] == destination

    r = await api.delete(f"/v1/contacts/{cid}")
    assert r.status_code == 204

    async def hits() -> int:
        async with db.session() as s:
            sends = select(Send.id).where(Send.contact_id == cid)
            q = select(func.count()).select_from(TrackingEvent).where(
                col(TrackingEvent.send_id).in_(sends)
            )
            return int((await s.exec(q)).one())

    assert await until(hits, timeout=10) == 1  # the click before erasure was recorded
    after = await api.get(path, follow_redirects=False)
    assert after.status_code in (404, 410), after.status_code
    assert "location" not in after.headers
    assert secret not in after.text
    for other in others:  # the pixel answers (an image), the trap its page
        r = await api.get(other, follow_redirects=False)
        assert r.status_code in (200, 404) and "location" not in r.headers, other
    await asyncio.sleep(0.3)  # past a hit writer's linger, had one buffered these
    assert await hits() == 1  # nothing followed on an erased person's message is recorded

    async with db.session() as s:
        sends = select(Send.id).where(Send.contact_id == cid)
        links = (
            await s.exec(select(TrackedLink).where(col(TrackedLink.send_id).in_(sends)))
        ).all()
        assert {lk.kind for lk in links} >= {"click", "open", "trap", "unsub"}
        assert all(lk.url is None and lk.erased_at is not None for lk in links)
        # The destination is nowhere in the product's tables (the click above included).
        for table in ("tracked_link", "tracking_event", "event", "send",
                      "step_log", "audit_log"):
            found = (
                await s.exec(  # type: ignore[call-overload]
                    text(f"SELECT count(*) FROM {table} t WHERE t::text LIKE :p").bindparams(
                        p=f"%{secret}%"
                    )
                )
            ).one()[0]
            assert found == 0, table
