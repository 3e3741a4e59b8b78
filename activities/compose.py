"""Turning a template and a contact into the exact bytes handed to SMTP.

Render (mail.render) with tracked links minted for this send, build the MIME message
(mail.message) with the one-click unsubscribe headers and footer, and DKIM-sign it
(mail.dkim) when a key is configured.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import parseaddr

from core.config import Settings
from core.models import Contact, Send, Template
from core.tokens import TokenSigner
from mail import dkim
from mail.message import message_bytes_for
from mail.render import TemplateSource, render, template_context
from services.tracking_links import MessageLinks, mint_message_links


class DkimConfigError(RuntimeError):
    pass


@dataclass(frozen=True)
class DkimKey:
    selector: str
    domain: str
    private_key_pem: bytes

    def sign(self, msg: bytes) -> bytes:
        return dkim.sign(msg, self.selector, self.domain, self.private_key_pem)


def load_dkim(settings: Settings) -> DkimKey | None:
    """The signing key of DKIM_SELECTOR / DKIM_DOMAIN / DKIM_PRIVATE_KEY_PATH, read once
    at worker start so a bad key fails there and not on the first send."""
    given = [settings.dkim_selector, settings.dkim_domain, settings.dkim_private_key_path]
    if not any(given):
        return None
    if not all(given):
        raise DkimConfigError(
            "DKIM signing needs all of DKIM_SELECTOR, DKIM_DOMAIN and DKIM_PRIVATE_KEY_PATH"
        )
    assert settings.dkim_private_key_path and settings.dkim_selector and settings.dkim_domain
    try:
        pem = settings.dkim_private_key_path.read_bytes()
    except OSError as exc:
        raise DkimConfigError(f"cannot read DKIM_PRIVATE_KEY_PATH ({type(exc).__name__})") from None
    key = DkimKey(settings.dkim_selector, settings.dkim_domain, pem)
    try:
        key.sign(b"From: a@b.example\r\nSubject: probe\r\n\r\nprobe\r\n")
    except dkim.DkimError as exc:
        raise DkimConfigError(str(exc)) from None
    return key


def list_id(journey_key: str, settings: Settings) -> str:
    """`<journey>.<MAIL_DOMAIN>`: mailbox providers group and unsubscribe per list."""
    label = re.sub(r"[^A-Za-z0-9-]+", "-", journey_key).strip("-") or "journey"
    return f"{label[:63]}.{settings.mail_domain}"


def unsubscribe_mailbox(settings: Settings) -> str:
    return parseaddr(settings.unsubscribe_mailto)[1] or settings.unsubscribe_mailto


@dataclass
class Composed:
    raw: bytes
    links: MessageLinks


def compose(
    settings: Settings,
    *,
    send: Send,
    contact: Contact,
    template: Template,
    journey_name: str,
    now: datetime,
    dkim_key: DkimKey | None,
    signer: TokenSigner | None = None,
) -> Composed:
    """Raises mail.render.TemplateRenderError (names template/part/line) or ValueError
    (names the field) when the message cannot be made."""
    assert contact.email is not None
    links = mint_message_links(
        settings,
        send.id,
        now=now,
        track_opens=template.track_opens,
        track_clicks=template.track_clicks,
        signer=signer,
    )
    content = render(
        TemplateSource(template.key, template.subject, template.html, template.text),
        template_context(
            email=contact.email,
            external_id=contact.external_id or "",
            timezone=contact.timezone,
            attributes=contact.attributes or {},
            journey_key=send.journey_key,
            journey_name=journey_name,
        ),
        link_url=links.link_url,
    )
    raw = message_bytes_for(
        content,
        from_addr=settings.mail_from,
        to_addr=contact.email,
        message_id=send.message_id,
        date=now,
        unsubscribe_url=links.unsubscribe_url,
        unsubscribe_mailto=unsubscribe_mailbox(settings),
        list_id=list_id(send.journey_key, settings),
        list_name=journey_name or None,
        physical_address=settings.physical_address,
        pixel_url=links.pixel_url,
        trap_url=links.trap_url,
    )
    if dkim_key is not None:
        raw = dkim_key.sign(raw)
    return Composed(raw, links)
