"""The request side of tracking: find the link a token names and record the hit.

Kept to one primary-key lookup and one insert so the pixel and the redirect answer
fast; judging and signalling happen later, off the request path (services.tracking_judge).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlmodel.ext.asyncio.session import AsyncSession

from classifier import TRAP_LINK
from core.models import TrackedLink, TrackingEvent, new_id

# Which stored link kinds a route serves; a valid token of another kind is a 404.
OPEN_KINDS = frozenset({"open"})
CLICK_KINDS = frozenset({"click", "trap"})

SAFE_SCHEMES = ("https://", "http://")


@dataclass(frozen=True)
class Hit:
    """What one request showed (already bounded and filtered by services.tracking_request)."""

    at: datetime
    ip: str
    method: str
    user_agent: str
    headers: dict[str, str]


async def find_link(
    session: AsyncSession, link_id: bytes, kinds: frozenset[str]
) -> TrackedLink | None:
    link = await session.get(TrackedLink, link_id.hex())
    if link is None or link.kind not in kinds:
        return None
    return link


def redirect_target(link: TrackedLink) -> str | None:
    """The stored destination, only if it is a web address (never javascript:, data:, ...)."""
    url = link.url
    if not url or not url.lower().startswith(SAFE_SCHEMES):
        return None
    if any(ch in url for ch in "\r\n"):
        return None
    return url


async def record_hit(session: AsyncSession, link: TrackedLink, hit: Hit) -> str:
    """Insert the evidence with no verdict (the judge's queue); returns the event id."""
    event_id = new_id("te")
    kind = "open" if link.kind == "open" else "click"
    name = TRAP_LINK if link.kind == "trap" else link.name
    # Evidence, not a ledger: not waiting for the WAL flush triples the pixel/click rate,
    # and a database crash can lose at most the last few hundred milliseconds of hits.
    await session.exec(text("SET LOCAL synchronous_commit = off"))  # type: ignore[call-overload]
    await session.exec(  # type: ignore[call-overload]
        insert(TrackingEvent).values(
            id=event_id,
            send_id=link.send_id,
            link_id=link.id,
            kind=kind,
            link=name,
            at=hit.at,
            ip=hit.ip or None,
            user_agent=hit.user_agent or None,
            method=hit.method,
            headers=hit.headers,
            signalled=False,
        )
    )
    await session.commit()
    return event_id
