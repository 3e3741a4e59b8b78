"""Build the marketing e-mail: headers (RFC 8058 one-click), text + HTML, footer,
open pixel and trap link. Deterministic: same inputs, same bytes."""

from __future__ import annotations

import functools
import hashlib
import re
from datetime import datetime
from email import policy as email_policy
from email import quoprimime
from email.headerregistry import Address, BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage, MIMEPart
from email.policy import Policy
from email.utils import format_datetime
from typing import NotRequired, TypedDict, Unpack

from markupsafe import escape

from mail.template_types import Rendered

UNSUBSCRIBE_LABEL = "Unsubscribe"  # the footer link's text unless a caller names it
ONE_CLICK = "List-Unsubscribe=One-Click"

_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
# Printable ASCII without '<', '>', '@' (and '[', '\\', ']' on the right).
_MSG_ID = re.compile(r"<[!-;=?A-~]+@[!-;=?A-Z^-~]+>")
# RFC 3986 characters minus ',' (the List-Unsubscribe separator).
_URI_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+;=%]+")
_LIST_ID = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)+")
_BODY_OPEN = re.compile(r"<body\b[^>]*>", re.IGNORECASE)
_BODY_CLOSE = re.compile(r"</body\s*>", re.IGNORECASE)
_URI_ITEM = re.compile(r"<[^<>]*>")


class _UriListHeader(UnstructuredHeader, BaseHeader):
    """List-Unsubscribe: folds only between <URI> items.

    The stock folder turns a token longer than a line into RFC 2047 encoded
    words, which mangles a long URL beyond any client's recognition.
    """

    max_count = 1

    def fold(self, *, policy: Policy) -> str:
        items = _URI_ITEM.findall(str(self))
        head = f"{self.name}: "
        one_line = head + ", ".join(items)
        limit = policy.max_line_length or 0
        if not limit or len(one_line) <= limit:
            return one_line + policy.linesep
        return head + ("," + policy.linesep + " ").join(items) + policy.linesep


class _ClassCachingRegistry(HeaderRegistry):
    """The stock registry builds a new header class (`type(...)`) for every header it
    makes, ~30 per message and a fifth of building one; the class depends only on the
    header's name, so build it once per name."""

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type[BaseHeader]] = {}

    def map_to_type(self, name: str, cls: type[BaseHeader]) -> None:
        super().map_to_type(name, cls)
        self._classes.clear()

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = super().__getitem__(name)
        return cls


def _make_policy() -> email_policy.EmailPolicy[EmailMessage]:
    registry = _ClassCachingRegistry()
    registry.map_to_type("list-unsubscribe", _UriListHeader)
    return email_policy.SMTP.clone(header_factory=registry)


MESSAGE_POLICY = _make_policy()
# RFC 2045 caps quoted-printable lines at 76 characters.
_PART_POLICY = MESSAGE_POLICY.clone(max_line_length=76)


def message_id_for(send_key: str, domain: str) -> str:
    """Message-ID from the attempt-independent send key: a retried send reuses it."""
    if not _HOSTNAME.fullmatch(domain):
        raise ValueError("message id domain is not a valid host name")
    digest = hashlib.sha256(b"journeys/message-id\0" + send_key.encode("utf-8")).hexdigest()
    return f"<{digest[:32]}@{domain.lower()}>"


def message_bytes(msg: EmailMessage) -> bytes:
    """Wire form (CRLF) of a message built here; sign and send exactly these bytes."""
    return msg.as_bytes(policy=MESSAGE_POLICY)


def _single_line(field: str, value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"{field} must not contain line breaks")
    return value


def _uri(field: str, value: str, schemes: tuple[str, ...]) -> str:
    if not value.lower().startswith(schemes) or not _URI_CHARS.fullmatch(value):
        raise ValueError(f"{field} must be an {'/'.join(schemes)} URI without spaces or commas")
    return value


def _set_address(msg: EmailMessage, header: str, field: str, value: str) -> None:
    msg[header] = value
    parsed = msg[header]
    addresses: tuple[Address, ...] = getattr(parsed, "addresses", ())
    if parsed.defects or len(addresses) != 1:
        raise ValueError(f"{field} is not a single valid e-mail address")
    address = addresses[0]
    if not address.domain.isascii():
        # Without SMTPUTF8 an internationalised domain travels as IDNA (punycode).
        try:
            domain = address.domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"{field} has an invalid domain") from None
        del msg[header]
        msg[header] = Address(address.display_name, address.username, domain)


def _list_id_value(list_id: str, list_name: str | None) -> str:
    if not list_name:
        return f"<{list_id}>"
    if list_name.isascii():
        # A quoted-string: escape what would end it.
        quoted = list_name.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{quoted}" <{list_id}>'
    return f"{list_name} <{list_id}>"  # becomes RFC 2047 encoded words


def _footer_html(physical_address: str, unsubscribe_url: str, label: str) -> str:
    address = "<br>".join(str(escape(line)) for line in physical_address.splitlines())
    return (
        '<div class="journeys-footer" style="margin-top:24px;font-size:12px;'
        'line-height:1.5;color:#666666;">'
        f"{address}<br>"
        f'<a href="{escape(unsubscribe_url)}" style="color:#666666;">{escape(label)}</a>'
        "</div>"
    )


def _footer_text(physical_address: str, unsubscribe_url: str, label: str) -> str:
    return f"\n-- \n{physical_address.strip()}\n{label}: {unsubscribe_url}\n"


def _trap_html(trap_url: str) -> str:
    # Invisible, unfocusable, empty and hidden from assistive tech: only a machine
    # that follows every href reaches it.
    return (
        '<div style="display:none !important;max-height:0;overflow:hidden;mso-hide:all;" '
        'aria-hidden="true">'
        f'<a href="{escape(trap_url)}" style="display:none !important;" aria-hidden="true" '
        'tabindex="-1"></a></div>'
    )


def _pixel_html(pixel_url: str) -> str:
    return (
        f'<img src="{escape(pixel_url)}" width="1" height="1" alt="" '
        'style="display:block;width:1px;height:1px;border:0;margin:0;padding:0;">'
    )


def _decorate_html(html: str, top: str, bottom: str) -> str:
    """`top` right after <body>, `bottom` right before </body> (or start/end)."""
    opening = _BODY_OPEN.search(html)
    if opening:
        html = html[: opening.end()] + top + html[opening.end() :]
    else:
        html = top + html
    closings = list(_BODY_CLOSE.finditer(html))
    if closings:
        at = closings[-1].start()
        return html[:at] + bottom + html[at:]
    return html + bottom


def _text_part(content: str, subtype: str) -> MIMEPart:
    part = MIMEPart(policy=_PART_POLICY)
    # quoted-printable keeps the body 7-bit: no relay re-encodes it and breaks DKIM.
    part.set_content(content, subtype=subtype, charset="utf-8", cte="quoted-printable")
    return part


class MessageFields(TypedDict):
    """build_message's keyword arguments, for the functions that pass them along."""

    from_addr: str
    to_addr: str
    message_id: str
    date: datetime
    unsubscribe_url: str
    unsubscribe_mailto: str
    list_id: str
    physical_address: str
    list_name: NotRequired[str | None]
    pixel_url: NotRequired[str | None]
    trap_url: NotRequired[str | None]
    reply_to: NotRequired[str | None]
    unsubscribe_label: NotRequired[str]


def _check(content: Rendered, fields: MessageFields) -> str:
    """The checks of build_message (ValueError naming the field); returns the mailto URI."""
    date, message_id, list_id = fields["date"], fields["message_id"], fields["list_id"]
    unsubscribe_mailto = fields["unsubscribe_mailto"]
    if date.tzinfo is None or date.utcoffset() is None:
        raise ValueError("date must be timezone-aware")
    if not _MSG_ID.fullmatch(message_id):
        raise ValueError("message_id must look like <id@domain>")
    if not _LIST_ID.fullmatch(list_id):
        raise ValueError("list_id must be a dotted identifier such as journey.example.org")
    _uri("unsubscribe_url", fields["unsubscribe_url"], ("https://", "http://"))
    mailto = _uri(
        "unsubscribe_mailto", f"mailto:{unsubscribe_mailto}?subject=unsubscribe", ("mailto:",)
    )
    if unsubscribe_mailto.count("@") != 1:
        raise ValueError("unsubscribe_mailto must be an e-mail address")
    for field, value in (("pixel_url", fields.get("pixel_url")), ("trap_url", fields.get("trap_url"))):
        if value is not None:
            _uri(field, value, ("https://", "http://"))
    for field, value in (
        ("from_addr", fields["from_addr"]),
        ("to_addr", fields["to_addr"]),
        ("reply_to", fields.get("reply_to") or ""),
        ("list_name", fields.get("list_name") or ""),
        ("subject", content.subject),
    ):
        _single_line(field, value)
    return mailto


def build_message(content: Rendered, **fields: Unpack[MessageFields]) -> EmailMessage:
    """A multipart/alternative marketing message.

    `unsubscribe_url` is the one-click endpoint (https in production; http is
    accepted for the dev stack and flagged by check_marketing_headers);
    `unsubscribe_mailto` is the bare address for the mailto: alternative;
    `list_id` is the dotted List-Id identifier (e.g. post-visit.clinic.example).
    """
    mailto = _check(content, fields)
    from_addr, to_addr, message_id = fields["from_addr"], fields["to_addr"], fields["message_id"]
    date, unsubscribe_url = fields["date"], fields["unsubscribe_url"]
    list_id, list_name = fields["list_id"], fields.get("list_name")
    pixel_url, trap_url = fields.get("pixel_url"), fields.get("trap_url")
    reply_to = fields.get("reply_to")
    unsubscribe_label = fields.get("unsubscribe_label", UNSUBSCRIBE_LABEL)

    msg = EmailMessage(policy=MESSAGE_POLICY)
    _set_address(msg, "From", "from_addr", from_addr)
    _set_address(msg, "To", "to_addr", to_addr)
    if reply_to:
        _set_address(msg, "Reply-To", "reply_to", reply_to)
    msg["Subject"] = content.subject
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = message_id
    msg["List-Id"] = _list_id_value(list_id, list_name)
    msg["List-Unsubscribe"] = f"<{unsubscribe_url}>, <{mailto}>"
    msg["List-Unsubscribe-Post"] = ONE_CLICK
    msg["MIME-Version"] = "1.0"

    text, html = _bodies(
        content, fields["physical_address"], unsubscribe_url, unsubscribe_label, pixel_url, trap_url
    )
    msg["Content-Type"] = "multipart/alternative"
    msg.set_payload([_text_part(text, "plain"), _text_part(html, "html")])
    msg.set_boundary(_boundary(message_id))
    return msg


def _bodies(
    content: Rendered,
    physical_address: str,
    unsubscribe_url: str,
    unsubscribe_label: str,
    pixel_url: str | None,
    trap_url: str | None,
) -> tuple[str, str]:
    """The text and HTML parts: the rendered content with footer, pixel and trap link."""
    footer_text = _footer_text(physical_address, unsubscribe_url, unsubscribe_label)
    text = content.text.rstrip("\n") + "\n" + footer_text
    html = _decorate_html(
        content.html,
        top=_trap_html(trap_url) if trap_url else "",
        bottom=_footer_html(physical_address, unsubscribe_url, unsubscribe_label)
        + (_pixel_html(pixel_url) if pixel_url else ""),
    )
    return text, html


def _boundary(message_id: str) -> str:
    # A boundary from the Message-ID keeps the bytes reproducible; "=_" never
    # occurs in quoted-printable output, so it cannot collide with the body.
    return "=_jr_" + hashlib.sha256(message_id.encode("ascii")).hexdigest()[:24]


# --- The same bytes without the email package, for the common case -------------------
#
# Building the message object and generating it costs ~1.5 ms of CPU (header objects
# parsed and refolded, MIME parts made and flattened); most of what it does is moot for
# our fixed header set when every header value is plain ASCII and fits on its line. For
# those messages `message_bytes_for` writes the same bytes directly (the unit tests
# compare the two over generated inputs); anything else (a non-ASCII subject or address,
# a value that would fold, an unusual address) goes through the email package.

_MAX_LINE = 78  # MESSAGE_POLICY.max_line_length
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
# A plain dot-atom address with an ASCII host name: written as given by the email package.
_PLAIN_ADDRESS = re.compile(
    rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+"
)
# Printable ASCII, single spaces between words, nothing that reads as an encoded word.
_PLAIN_SUBJECT = re.compile(r"[!-~]+(?: [!-~]+)*")
_PART_HEAD = (
    'Content-Type: text/{}; charset="utf-8"\r\n'
    "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
)


@functools.lru_cache(maxsize=64)
def _header_lines(from_addr: str, list_id: str, list_name: str | None) -> tuple[str, str]:
    """From and List-Id as the generator writes them (per sender and journey, so computed
    once): their display names may need quoting, encoding or folding."""
    msg = EmailMessage(policy=MESSAGE_POLICY)
    _set_address(msg, "From", "from_addr", from_addr)
    msg["List-Id"] = _list_id_value(list_id, list_name)
    lines = [MESSAGE_POLICY.fold_binary(h, v) for h, v in msg.raw_items()]
    from_line, list_id_line = (b.decode("ascii") for b in lines)  # ValueError unless ASCII
    return from_line, list_id_line


def _fits(line: str) -> bool:
    return len(line) <= _MAX_LINE


def _qp_part(content: str, subtype: str) -> str:
    """A text part as MIMEPart.set_content(..., cte="quoted-printable") and the generator
    write it (email.contentmanager._encode_text: lines re-joined with LF, then encoded)."""
    lines = content.encode("utf-8").splitlines()
    body = quoprimime.body_encode((b"\n".join(lines) + b"\n").decode("latin-1"), 76)
    return _PART_HEAD.format(subtype) + body.replace("\n", "\r\n")


def message_bytes_for(content: Rendered, **fields: Unpack[MessageFields]) -> bytes:
    """`message_bytes(build_message(...))` with the same arguments, the same checks and
    the same bytes; without the email package when the headers allow it."""
    fast = None if fields.get("reply_to") else _fast_bytes(content, fields)
    return fast if fast is not None else message_bytes(build_message(content, **fields))


def _fast_bytes(content: Rendered, fields: MessageFields) -> bytes | None:
    from_addr, to_addr, message_id = fields["from_addr"], fields["to_addr"], fields["message_id"]
    date, unsubscribe_url = fields["date"], fields["unsubscribe_url"]
    list_id, list_name = fields["list_id"], fields.get("list_name")
    pixel_url, trap_url = fields.get("pixel_url"), fields.get("trap_url")
    physical_address = fields["physical_address"]
    unsubscribe_label = fields.get("unsubscribe_label", UNSUBSCRIBE_LABEL)
    mailto = _check(content, fields)
    subject = content.subject
    to_line = f"To: {to_addr}"
    subject_line = f"Subject: {subject}"
    id_line = f"Message-ID: {message_id}"
    if not (
        _PLAIN_ADDRESS.fullmatch(to_addr)
        and _PLAIN_SUBJECT.fullmatch(subject)
        and "=?" not in subject
        and _fits(to_line)
        and _fits(subject_line)
        and _fits(id_line)
    ):
        return None
    try:
        from_line, list_id_line = _header_lines(from_addr, list_id, list_name)
    except ValueError:
        return None  # not ASCII, or invalid: build_message raises it, naming the field
    items = [f"<{unsubscribe_url}>", f"<{mailto}>"]
    unsub = "List-Unsubscribe: " + ", ".join(items)
    if not _fits(unsub):
        unsub = "List-Unsubscribe: " + ",\r\n ".join(items)
    boundary = _boundary(message_id)
    text, html = _bodies(
        content, physical_address, unsubscribe_url, unsubscribe_label, pixel_url, trap_url
    )
    out = (
        f"{from_line}{to_line}\r\n{subject_line}\r\n"
        f"Date: {format_datetime(date)}\r\n{id_line}\r\n{list_id_line}"
        f"{unsub}\r\nList-Unsubscribe-Post: {ONE_CLICK}\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\n{_qp_part(text, 'plain')}"
        f"\r\n--{boundary}\r\n{_qp_part(html, 'html')}"
        f"\r\n--{boundary}--\r\n"
    )
    return out.encode("ascii")
