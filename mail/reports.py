"""Parse delivery status notifications (RFC 3464) and abuse reports (RFC 5965 ARF).

parse_report never raises on malformed input: anything that is not a usable
report gives None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import BytesParser, HeaderParser
from email.utils import getaddresses
from typing import Literal

ReportKind = Literal["bounce", "complaint", "delay"]

# RFC 5965 feedback types that mean "the recipient does not want this mail".
# not-spam and auth-failure (RFC 6591) are not complaints.
COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus", "other"})

_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_SMTP_REPLY = re.compile(r"\b([245])\d\d\b")


@dataclass(frozen=True)
class RecipientStatus:
    """One per-recipient block of a DSN."""

    final_recipient: str
    original_recipient: str | None
    action: str
    status: str | None
    diagnostic_code: str | None


@dataclass(frozen=True)
class DeliveryReport:
    kind: ReportKind
    recipients: tuple[str, ...]
    # Enhanced status code ("5.1.1") of the first affected recipient; None for complaints.
    status: str | None
    # Permanent: suppress the address (5.x.x bounces and every complaint).
    hard: bool
    original_message_id: str | None
    feedback_type: str | None = None
    per_recipient: tuple[RecipientStatus, ...] = ()


def _field(block: Message, name: str) -> str | None:
    value = block.get(name)
    if value is None:
        return None
    text = re.sub(r"\s+", " ", str(value)).strip()
    return text or None


def _address(value: str | None) -> str | None:
    """'rfc822; user@example.org' -> 'user@example.org'."""
    if not value:
        return None
    _type, sep, address = value.partition(";")
    address = (address if sep else value).strip().strip("<>").strip()
    return address or None


def _status(status: str | None, diagnostic: str | None) -> str | None:
    for source in (status, diagnostic):
        match = _STATUS.search(source or "")
        if match:
            return ".".join(match.groups())
    match = _SMTP_REPLY.search(diagnostic or "")
    if match:
        return f"{match.group(1)}.0.0"
    return None


def _normalise_message_id(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    match = re.search(r"<[^<>\s]+>", value)
    if match:
        return match.group(0)
    if " " in value:
        return None
    return f"<{value}>"


def _header_blocks(part: Message) -> list[Message]:
    """The header blocks inside a message/* or text/rfc822-headers part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    if isinstance(payload, str):
        text = part.get_payload(decode=True)
        raw = text.decode("utf-8", "replace") if isinstance(text, bytes) else payload
        blocks = re.split(r"\r?\n[ \t]*\r?\n", raw.strip())
        return [HeaderParser().parsestr(block) for block in blocks if block.strip()]
    return []


def _original_headers(parts: list[Message]) -> Message | None:
    for part in parts:
        if part.get_content_type() in ("message/rfc822", "text/rfc822-headers"):
            blocks = _header_blocks(part)
            if blocks:
                return blocks[0]
    return None


def _find_report(msg: Message) -> Message | None:
    for part in msg.walk():
        if part.get_content_type() == "multipart/report":
            return part
    return None


def _delivery_report(parts: list[Message], original: Message | None) -> DeliveryReport | None:
    status_part = next(
        (p for p in parts if p.get_content_type() == "message/delivery-status"), None
    )
    if status_part is None:
        return None
    # Per-recipient blocks are those with Final-Recipient (the first block is per-message).
    blocks = [b for b in _header_blocks(status_part) if b.get("Final-Recipient")]
    results: list[RecipientStatus] = []
    for block in blocks:
        final = _address(_field(block, "Final-Recipient"))
        if final is None:
            continue
        diagnostic = _field(block, "Diagnostic-Code")
        results.append(
            RecipientStatus(
                final_recipient=final,
                original_recipient=_address(_field(block, "Original-Recipient")),
                action=(_field(block, "Action") or "").lower(),
                status=_status(_field(block, "Status"), diagnostic),
                diagnostic_code=diagnostic,
            )
        )
    failed = [r for r in results if r.action == "failed"]
    delayed = [r for r in results if r.action == "delayed"]
    affected = failed or delayed
    if not affected:
        return None  # delivered / relayed / expanded: nothing went wrong
    hard = bool(failed) and any(r.status is None or r.status.startswith("5") for r in failed)
    return DeliveryReport(
        kind="bounce" if failed else "delay",
        recipients=tuple(dict.fromkeys(r.final_recipient for r in affected)),
        status=affected[0].status,
        hard=hard,
        original_message_id=_normalise_message_id(_field(original, "Message-ID"))
        if original is not None
        else None,
        per_recipient=tuple(results),
    )


def _feedback_report(parts: list[Message], original: Message | None) -> DeliveryReport | None:
    feedback_part = next(
        (p for p in parts if p.get_content_type() == "message/feedback-report"), None
    )
    if feedback_part is None:
        return None
    blocks = _header_blocks(feedback_part)
    if not blocks:
        return None
    fields = blocks[0]
    feedback_type = (_field(fields, "Feedback-Type") or "").lower()
    if feedback_type not in COMPLAINT_TYPES:
        return None
    addresses = [
        _address(str(v))
        for name in ("Original-Rcpt-To", "Removal-Recipient")
        for v in fields.get_all(name, [])
    ]
    if not addresses and original is not None:
        # Many feedback loops redact the recipient fields but keep the To header.
        addresses = [addr for _name, addr in getaddresses([_field(original, "To") or ""])]
    return DeliveryReport(
        kind="complaint",
        recipients=tuple(dict.fromkeys(a for a in addresses if a and "@" in a)),
        status=None,
        hard=True,
        original_message_id=_normalise_message_id(_field(original, "Message-ID"))
        if original is not None
        else None,
        feedback_type=feedback_type,
    )


def parse_report(raw: bytes) -> DeliveryReport | None:
    """A bounce, delay or complaint from a raw report message, or None."""
    msg = BytesParser(policy=policy.compat32).parsebytes(raw)
    report = _find_report(msg)
    if report is None or not report.is_multipart():
        return None
    parts = [p for p in report.get_payload() if isinstance(p, Message)]
    report_type = report.get_param("report-type") or ""
    report_type = report_type.lower() if isinstance(report_type, str) else ""
    original = _original_headers(parts)
    if report_type == "delivery-status":
        return _delivery_report(parts, original)
    if report_type == "feedback-report":
        return _feedback_report(parts, original)
    return None
