"""What one tracking request showed, and the verdict the classifier gives it.

Parsing errors name the field, never its value: event lines carry patient-linked
data (IPs, user agents) that must not reach logs or error output.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Kind = Literal["open", "click"]
VerdictName = Literal["human", "automated", "unknown"]

TRAP_LINK = "__trap__"

_KINDS: frozenset[str] = frozenset({"open", "click"})


class EvidenceError(ValueError):
    """An event record is missing a field or has one of the wrong shape."""


@dataclass(frozen=True, slots=True)
class TrackingEvidence:
    """One open or click request as the tracking endpoint saw it."""

    id: str
    kind: Kind
    message_id: str
    link: str | None
    links_in_message: int
    sent_at: datetime
    at: datetime
    ip: str
    method: str
    user_agent: str
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def seconds_after_send(self) -> float:
        return (self.at - self.sent_at).total_seconds()

    @property
    def is_trap(self) -> bool:
        return self.kind == "click" and self.link == TRAP_LINK


@dataclass(frozen=True, slots=True)
class Verdict:
    """The classifier's answer for one event; revised=True re-judges an earlier one."""

    id: str
    verdict: VerdictName
    reason: str
    confidence: float
    revised: bool = False

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "verdict": self.verdict,
            "reason": self.reason,
            "confidence": round(self.confidence, 2),
        }
        if self.revised:
            out["revised"] = True
        return out


def parse_time(value: object, name: str) -> datetime:
    """ISO 8601 with offset or Z; a time without offset is taken as UTC."""
    if not isinstance(value, str) or not value:
        raise EvidenceError(f"{name} must be an ISO 8601 date-time string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise EvidenceError(f"{name} is not a valid ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _text(obj: Mapping[str, Any], name: str, *, required: bool = True) -> str:
    value = obj.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise EvidenceError(f"{name} must be a string")
    return value


def evidence_from_json(obj: object) -> TrackingEvidence:
    """Build evidence from one decoded input line (the `journeys classify` shape)."""
    if not isinstance(obj, Mapping):
        raise EvidenceError("an event must be a JSON object")
    event_id = _text(obj, "id")
    if not event_id:
        raise EvidenceError("id must not be empty")
    kind = _text(obj, "kind")
    if kind not in _KINDS:
        raise EvidenceError("kind must be 'open' or 'click'")
    message_id = _text(obj, "message_id")
    if not message_id:
        raise EvidenceError("message_id must not be empty")
    link_raw = obj.get("link")
    if link_raw is not None and not isinstance(link_raw, str):
        raise EvidenceError("link must be a string or null")
    links_raw = obj.get("links_in_message", 0)
    if links_raw is None:
        links_raw = 0
    if isinstance(links_raw, bool) or not isinstance(links_raw, int) or links_raw < 0:
        raise EvidenceError("links_in_message must be a non-negative integer")
    headers_raw = obj.get("headers", {})
    if headers_raw is None:
        headers_raw = {}
    if not isinstance(headers_raw, Mapping):
        raise EvidenceError("headers must be an object")
    headers: dict[str, str] = {}
    for key, value in headers_raw.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise EvidenceError("headers must map names to strings")
        headers[key.lower()] = value
    headers.setdefault("accept", "")
    method = _text(obj, "method", required=False).upper() or "GET"
    return TrackingEvidence(
        id=event_id,
        kind=kind,  # type: ignore[arg-type]  # checked against _KINDS above
        message_id=message_id,
        link=link_raw,
        links_in_message=links_raw,
        sent_at=parse_time(obj.get("sent_at"), "sent_at"),
        at=parse_time(obj.get("at"), "at"),
        ip=_text(obj, "ip", required=False).strip(),
        method=method,
        user_agent=_text(obj, "user_agent", required=False),
        headers=headers,
    )
