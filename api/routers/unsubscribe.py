"""GET/POST /u/{token}: the unsubscribe page and RFC 8058 one-click unsubscribe.

GET only shows a confirmation form: link scanners and mail previewers fetch every URL
in a message, so a GET must never unsubscribe. POST unsubscribes: mailbox providers
send `List-Unsubscribe=One-Click` (RFC 8058), the page's form sends the same plus the
chosen scope. The answer is 200 with no redirect and no cookie, and repeating it
changes nothing. Pages never show the address (a forwarded message's reader is not
the recipient).
"""

from __future__ import annotations

import logging
from email.utils import parseaddr
from html import escape
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from api.deps import SessionDep, SettingsDep
from services.context import Actor, ServiceContext
from services.unsubscribe import Scope, resolve_token, unsubscribe

router = APIRouter(tags=["unsubscribe"])
log = logging.getLogger("journeys.unsubscribe")

MAX_FORM_BYTES = 4096
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'",
}
_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;"
    "color:#222}button{font-size:1rem;padding:.5rem 1.2rem}label{display:block;margin:.4rem 0}"
)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    html = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8>"
        f'<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<meta name="robots" content="noindex,nofollow">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(html, status_code=status, headers=_HEADERS)


def _not_found() -> HTMLResponse:
    return _page(
        "Link not recognised",
        "<p>This unsubscribe link is not valid. If you copied it, check that it is complete, "
        "or use the unsubscribe link of a more recent message.</p>",
        404,
    )


def _sender(ctx: ServiceContext) -> str:
    name, address = parseaddr(ctx.settings.mail_from)
    return name or address or "us"


def _category_label(category: str | None) -> str:
    return (category or "these").replace("_", " ").replace("-", " ")


def _ctx(request: Request, session: SessionDep, settings: SettingsDep) -> ServiceContext:
    # No API key here: the token is the credential, and it only unsubscribes.
    actor = Actor("unsubscribe-link", "system")
    return ServiceContext(session, settings, request.app.state.temporal, actor)


@router.get("/u/{token}", response_class=HTMLResponse, include_in_schema=True)
async def unsubscribe_page(
    token: str, request: Request, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    ctx = _ctx(request, session, settings)
    target = await resolve_token(ctx, token)
    if target is None:
        return _not_found()
    label = escape(_category_label(target.send.category))
    sender = escape(_sender(ctx))
    form = (
        f"<p>Stop receiving <strong>{label}</strong> emails from {sender}?</p>"
        f'<form method="post" action="{escape(token)}">'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<label><input type="radio" name="scope" value="category" checked> '
        f"Only {label} emails</label>"
        '<label><input type="radio" name="scope" value="all"> '
        f"All emails from {sender}</label>"
        '<p><button type="submit">Unsubscribe</button></p></form>'
    )
    return _page("Unsubscribe", form)


async def _scope(request: Request) -> Scope:
    """`scope=all` from our form; anything else (the one-click body) is the category."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            break
    ctype = request.headers.get("content-type", "")
    if "multipart/form-data" in ctype:
        # RFC 8058 allows multipart; one-click never asks for "all".
        return "all" if b'name="scope"\r\n\r\nall' in body else "category"
    fields = parse_qs(body[:MAX_FORM_BYTES].decode("latin-1"), keep_blank_values=True)
    return "all" if fields.get("scope", [""])[0] == "all" else "category"


@router.post("/u/{token}", response_class=HTMLResponse)
async def unsubscribe_post(
    token: str, request: Request, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    ctx = _ctx(request, session, settings)
    target = await resolve_token(ctx, token)
    if target is None:
        return _not_found()
    scope = await _scope(request)
    out = await unsubscribe(ctx, target, scope)
    log.info(
        "unsubscribe of send %s (%s), %d run(s) signalled",
        target.send.id,
        out["category"],
        out["runs_signalled"],
    )
    if out["category"] == "*":
        what = "any emails"
    else:
        what = f"{escape(_category_label(out['category']))} emails"
    return _page(
        "You are unsubscribed",
        f"<p>You will not receive {what} from {escape(_sender(ctx))} any more.</p>",
    )
