"""The built-in sink's inbound address: mail for the product rather than for a patient.

Delivery reports (to the envelope sender, bounces@MAIL_DOMAIN, or any multipart/report)
go to services.delivery_reports; mail to the List-Unsubscribe mailto address
unsubscribes its sender. Neither is kept in the outbox.
"""

from __future__ import annotations

import logging
import re
from email.utils import parseaddr

from temporalio.client import Client

from activities.compose import unsubscribe_mailbox
from core.config import Settings
from core.db import Database
from services.context import ServiceContext
from services.delivery_reports import process_report
from services.unsubscribe import unsubscribe_address

log = logging.getLogger("journeys.inbound")

_REPORT_TYPE = re.compile(rb"^content-type:\s*multipart/report\b", re.IGNORECASE | re.MULTILINE)


def _is_report(raw: bytes) -> bool:
    headers = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    return bool(_REPORT_TYPE.search(headers))


class InboundMail:
    def __init__(self, db: Database, settings: Settings, temporal: Client | None = None) -> None:
        self.db = db
        self.settings = settings
        self.temporal = temporal
        self.bounce_address = settings.envelope_sender.lower()
        self.unsubscribe_address = unsubscribe_mailbox(settings).lower()

    def wants(self, rcpt_tos: list[str], raw: bytes) -> bool:
        rcpts = {r.lower() for r in rcpt_tos}
        return self.bounce_address in rcpts or self.unsubscribe_address in rcpts or _is_report(raw)

    async def handle(self, mail_from: str, rcpt_tos: list[str], raw: bytes) -> None:
        rcpts = {r.lower() for r in rcpt_tos}
        try:
            async with self.db.session() as s:
                ctx = ServiceContext(s, self.settings, self.temporal)
                if self.bounce_address in rcpts or _is_report(raw):
                    out = await process_report(ctx, raw, source="inbound")
                    summary = {k: out.get(k) for k in ("kind", "send_id", "processed")}
                    log.info("inbound report: %s", summary)
                elif parseaddr(mail_from)[1]:
                    out = await unsubscribe_address(ctx, parseaddr(mail_from)[1], source="mailto")
                    log.info("mailto unsubscribe: %s contact(s)", out["contacts"])
        except Exception as exc:
            # Accept the mail anyway: a relay would retry a 4xx for days. Type only (no PHI).
            log.error("inbound mail could not be processed: %s", type(exc).__name__)
