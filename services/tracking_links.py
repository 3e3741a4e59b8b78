"""Minting the URLs of one message: open pixel, tracked links, trap link, unsubscribe.

Tokens carry only a key id, a random link id, an expiry and a MAC (core.tokens); the
destination and the send it belongs to stay server-side in `tracked_link`, so nothing
in a URL can redirect elsewhere or reveal who the recipient is.
"""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.dialects.postgresql import insert
from sqlmodel.ext.asyncio.session import AsyncSession

from core.config import Settings
from core.models import TrackedLink
from core.tokens import TokenSigner, new_link_id


def token_signer(settings: Settings) -> TokenSigner:
    s = settings.secret_values()
    return _signer(str(s["token_keys"]), int(s["token_active_key"]))


@functools.lru_cache(maxsize=8)
def _signer(spec: str, active: int) -> TokenSigner:
    """Per key configuration, not per message (a send mints three or more URLs)."""
    keys: dict[int, bytes] = {}
    for part in spec.split(","):
        kid, _, b64 = part.strip().partition(":")
        keys[int(kid)] = base64.b64decode(b64)
    return TokenSigner(keys, active)


@dataclass
class MessageLinks:
    """What the renderer and message builder need; `rows` are written with the send."""

    base_url: str
    signer: TokenSigner
    expires_at: int
    send_id: str
    track_clicks: bool
    rows: list[TrackedLink] = field(default_factory=list)
    pixel_url: str | None = None
    trap_url: str | None = None
    unsubscribe_url: str = ""

    def _mint(self, kind: str, purpose: str, name: str | None, url: str | None) -> str:
        link_id = new_link_id()
        self.rows.append(
            TrackedLink(id=link_id.hex(), send_id=self.send_id, kind=kind, name=name, url=url)
        )
        token = self.signer.make(link_id, self.expires_at, purpose)
        path = {"open": "t/o", "click": "t/c", "unsub": "u"}[purpose]
        return f"{self.base_url}/{path}/{token}"

    def link_url(self, name: str, url: str) -> str:
        """The renderer's `link(name, url)`: a tracked URL, or the URL itself when off."""
        if not self.track_clicks:
            return url
        return self._mint("click", "click", name, url)


def mint_message_links(
    settings: Settings,
    send_id: str,
    *,
    now: datetime,
    track_opens: bool,
    track_clicks: bool,
    signer: TokenSigner | None = None,
) -> MessageLinks:
    """signer: token_signer(settings), when the caller keeps one (the send activity does:
    reading the keys means reading the secrets file in dev)."""
    expires = now + timedelta(days=settings.tracking_token_ttl_days)
    links = MessageLinks(
        base_url=settings.public_base_url.rstrip("/"),
        signer=signer or token_signer(settings),
        expires_at=int(expires.timestamp()),
        send_id=send_id,
        track_clicks=track_clicks,
    )
    if track_opens:
        links.pixel_url = links._mint("open", "open", None, None)
    if track_clicks:
        links.trap_url = links._mint("trap", "click", "__trap__", None)
    links.unsubscribe_url = links._mint("unsub", "unsub", None, None)
    return links


async def save_links(session: AsyncSession, links: MessageLinks) -> None:
    """Idempotent per link id; called in the same transaction that marks the send `sending`."""
    if not links.rows:
        return
    await session.exec(  # type: ignore[call-overload]
        insert(TrackedLink)
        .values(
            [
                dict(id=r.id, send_id=r.send_id, kind=r.kind, name=r.name, url=r.url)
                for r in links.rows
            ]
        )
        .on_conflict_do_nothing(index_elements=["id"])
    )
