"""Shared set-up for the tracking tests: an app whose lifespan runs the judge, and sends
with minted links (the send activity of the sending work embeds them in real mail)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

import httpx
from fastapi import FastAPI
from sqlmodel import col, select
from temporalio.client import Client

from core.config import Settings
from core.db import Database
from core.models import Send, TrackingEvent, utcnow
from services.tracking_buffer import flush_all
from services.tracking_links import MessageLinks, mint_message_links, save_links

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/143.0.0.0 Safari/537.36"
)
HTML_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
HUMAN_HEADERS = {
    "user-agent": CHROME,
    "accept": HTML_ACCEPT,
    "accept-language": "en-US,en;q=0.9",
    "sec-fetch-mode": "navigate",
    "sec-fetch-dest": "document",
    "sec-fetch-site": "cross-site",
    "sec-fetch-user": "?1",
}
HOME_IP = "73.15.237.200"  # a residential ISP block
MPP_IP = "172.225.102.60"  # Apple Private Relay egress (in the shipped list)
SCANNER_IP = "40.94.28.163"  # Microsoft Safe Links detonation (in the shipped list)


async def app_with_judge(
    settings: Settings, db: Database, temporal: Client | None, peer: str = "127.0.0.1"
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """create_app's own lifespan (as uvicorn runs it), so the judge runs as in production."""
    from api.main import create_app

    app = create_app(settings, db=db, temporal=temporal)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(peer, 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield app, client


@dataclass
class Message:
    send_id: str
    links: MessageLinks
    clicks: dict[str, str] = field(default_factory=dict)  # link name -> tracked URL
    destinations: dict[str, str] = field(default_factory=dict)  # link name -> stored URL

    @property
    def pixel(self) -> str:
        assert self.links.pixel_url
        return _path(self.links.pixel_url)

    @property
    def trap(self) -> str:
        assert self.links.trap_url
        return _path(self.links.trap_url)

    def click(self, name: str) -> str:
        return _path(self.clicks[name])


def _path(url: str) -> str:
    return url.removeprefix("http://testserver")


async def make_message(
    db: Database,
    settings: Settings,
    destinations: dict[str, str],
    *,
    sent_ago: timedelta = timedelta(minutes=5),
    run_id: str | None = None,
    step: str = "hello",
    send_id: str | None = None,
) -> Message:
    """A sent message (ledger row) with its pixel, tracked links and trap link stored."""
    now = utcnow()
    async with db.session() as s:
        if send_id is None:
            send_id = f"s_{uuid.uuid4().hex[:20]}"
            key = f"{run_id or 'r_' + uuid.uuid4().hex}/{step}/1"
            s.add(
                Send(
                    id=send_id,
                    send_key=key,
                    run_id=run_id or key.split("/")[0],
                    journey_key="tracking-test",
                    version=1,
                    step=step,
                    visit=1,
                    contact_id="c_test",
                    template_key="t",
                    message_id=f"<{uuid.uuid4().hex}@example.org>",
                    status="sent",
                    sent_at=now - sent_ago,
                )
            )
        else:
            send = await s.get(Send, send_id)
            assert send is not None
            send.sent_at = now - sent_ago
            s.add(send)
        links = mint_message_links(settings, send_id, now=now, track_opens=True, track_clicks=True)
        msg = Message(send_id, links, destinations=dict(destinations))
        for name, url in destinations.items():
            msg.clicks[name] = links.link_url(name, url)
        await save_links(s, links)
        await s.commit()
    return msg


async def events_of(db: Database, send_id: str) -> list[TrackingEvent]:
    await flush_all()  # hits are answered first and written in batches a moment later
    async with db.session() as s:
        q = select(TrackingEvent).where(TrackingEvent.send_id == send_id)
        return list((await s.exec(q.order_by(col(TrackingEvent.at)))).all())


async def judged(db: Database, send_id: str, n: int) -> list[TrackingEvent]:
    """The message's events once at least `n` exist and all are judged, else [] (not yet)."""
    rows = await events_of(db, send_id)
    if len(rows) >= n and all(r.verdict is not None for r in rows):
        return rows
    return []
