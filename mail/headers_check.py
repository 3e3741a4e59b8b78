"""Audit a marketing message's headers against RFC 8058 / RFC 2369 / RFC 2919 / RFC 5322.

Problems name the header and the rule, never a header's value (addresses are PHI).
"""

from __future__ import annotations

import re
from email import policy
from email.message import Message
from email.parser import BytesParser
from email.utils import getaddresses, parsedate_to_datetime

ONE_CLICK = "List-Unsubscribe=One-Click"
_MSG_ID = re.compile(r"<[!-;=?A-~]+@[!-;=?A-Z^-~]+>")
_URI_ITEM = re.compile(r"<([^<>]*)>")
_LIST_ID = re.compile(r"<[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)+>")
_SINGLETONS = (
    "From",
    "To",
    "Date",
    "Message-ID",
    "Subject",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
)


def _unfold(value: str) -> str:
    return re.sub(r"\r?\n[ \t]", " ", value).strip()


def _raw_values(msg: Message, name: str) -> list[str]:
    return [_unfold(str(v)) for v in msg.get_all(name, [])]


def _dkim_tags(value: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in value.split(";"):
        key, sep, val = item.partition("=")
        if sep:
            tags[re.sub(r"\s+", "", key)] = re.sub(r"\s+", "", val)
    return tags


def _check_list_unsubscribe(value: str) -> list[str]:
    problems: list[str] = []
    items = _URI_ITEM.findall(value)
    leftover = _URI_ITEM.sub("", value).replace(",", "").strip()
    if not items or leftover:
        problems.append("List-Unsubscribe: not a comma-separated list of <URI>")
    if not any(uri.lower().startswith("https://") for uri in items):
        problems.append("List-Unsubscribe: no https URI (RFC 8058 one-click needs one)")
    if not any(uri.lower().startswith("mailto:") for uri in items):
        problems.append("List-Unsubscribe: no mailto URI")
    if any(re.search(r"\s", uri) for uri in items):
        problems.append("List-Unsubscribe: URI contains whitespace")
    return problems


def _check_dkim(signatures: list[str], require_dkim: bool) -> list[str]:
    if not signatures:
        return ["DKIM-Signature: missing"] if require_dkim else []
    problems: list[str] = []
    covered_sets = []
    for signature in signatures:
        tags = _dkim_tags(signature)
        covered_sets.append({h.lower() for h in tags.get("h", "").split(":") if h})
    for header in ("From", "List-Unsubscribe", "List-Unsubscribe-Post"):
        if not any(header.lower() in covered for covered in covered_sets):
            problems.append(f"DKIM-Signature: h= does not cover {header}")
    return problems


def check_marketing_headers(msg_bytes: bytes, *, require_dkim: bool = False) -> list[str]:
    """Problems with a marketing message's headers; an empty list means compliant."""
    msg = BytesParser(policy=policy.compat32).parsebytes(msg_bytes, headersonly=True)
    problems: list[str] = []

    for name in _SINGLETONS:
        count = len(msg.get_all(name, []))
        if count == 0:
            problems.append(f"{name}: missing")
        elif count > 1:
            problems.append(f"{name}: appears {count} times")

    from_values = _raw_values(msg, "From")
    if from_values and not any(addr for _, addr in getaddresses(from_values[:1]) if "@" in addr):
        problems.append("From: no valid address")

    date_values = _raw_values(msg, "Date")
    if date_values:
        try:
            parsed = parsedate_to_datetime(date_values[0])
        except (TypeError, ValueError):
            problems.append("Date: not an RFC 5322 date")
        else:
            if parsed.tzinfo is None:
                problems.append("Date: no time zone")

    for message_id in _raw_values(msg, "Message-ID")[:1]:
        if not _MSG_ID.fullmatch(message_id):
            problems.append("Message-ID: not in <id-left@id-right> form")

    for list_id in _raw_values(msg, "List-Id")[:1]:
        if not _LIST_ID.search(list_id):
            problems.append("List-Id: no <dotted.list.identifier>")

    for value in _raw_values(msg, "List-Unsubscribe")[:1]:
        problems.extend(_check_list_unsubscribe(value))

    for value in _raw_values(msg, "List-Unsubscribe-Post")[:1]:
        if value != ONE_CLICK:
            problems.append(f"List-Unsubscribe-Post: must be exactly {ONE_CLICK!r}")

    problems.extend(_check_dkim(_raw_values(msg, "DKIM-Signature"), require_dkim))
    return problems
