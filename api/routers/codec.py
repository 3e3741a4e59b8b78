"""The Temporal codec server (remote codec protocol): POST /codec/encode and /codec/decode.

The Temporal UI and CLI send `{"payloads": [{"metadata": {k: base64}, "data": base64}]}`
with headers Content-Type, X-Namespace and, when configured, Authorization (or, from the
UI with "Include cross-origin credentials", the codec session cookie set by
/codec/login). Admins and operators get clear payloads; every call is audited with
who, role, namespace and payload count, never content. See api/codec_auth.py.
"""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from api import codec_auth, policy
from api.deps import SessionDep, SettingsDep, bearer_token, request_id
from api.errors import error_body
from core.codec import (
    CodecRequestError,
    EncryptionCodec,
    PayloadDecryptionError,
    decode_json_payloads,
    encode_json_payloads,
)
from core.config import Settings
from core.temporal import keyring
from services import audit
from services.apikeys import authenticate
from services.context import Actor, ServiceContext

router = APIRouter(prefix="/codec", tags=["codec"])

MAX_PAYLOADS = 10_000
OPERATIONS = ("encode", "decode")


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        self.status, self.code, self.message = status, code, message


def _codec(request: Request, settings: Settings) -> EncryptionCodec:
    codec: EncryptionCodec | None = getattr(request.app.state, "payload_codec", None)
    if codec is None:
        codec = EncryptionCodec(keyring(settings))
        request.app.state.payload_codec = codec
    return codec


def _cors(request: Request, settings: Settings) -> dict[str, str]:
    """CORS headers for a UI origin; refuses any other foreign origin."""
    origin = request.headers.get("origin")
    if origin is None:
        return {}  # not a browser (CLI, scripts)
    origin = origin.lower()
    if origin in codec_auth.ui_origins(settings):
        return codec_auth.cors_headers(origin)
    if origin in codec_auth.own_origins(request, settings):
        return {}
    raise _Refused(403, "forbidden", "origin not allowed to use the codec server")


async def _actor(request: Request, session: SessionDep, settings: Settings) -> tuple[Actor, str]:
    pepper = str(settings.secret_values()["api_key_pepper"])
    token = bearer_token(request)
    if token is not None:
        key = await authenticate(session, token, pepper)
        via = "bearer"
    elif cookie := request.cookies.get(codec_auth.COOKIE):
        key = await codec_auth.key_from_session(session, cookie, pepper)
        via = "session"
    else:
        raise _Refused(
            401, "unauthorized", "missing API key (Authorization: Bearer ... or /codec/login)"
        )
    if key is None:
        raise _Refused(401, "unauthorized", "invalid, expired or revoked credentials")
    return Actor(key.id, key.role, request_id(request)), via


def _namespace(request: Request, settings: Settings) -> str:
    given = request.headers.get("x-namespace", "").strip()
    # The UI sends "undefined" on pages outside a namespace.
    if given in ("", "undefined") or given == settings.temporal_namespace:
        return settings.temporal_namespace
    raise _Refused(403, "forbidden", "this codec server only serves its own namespace")


async def _run(
    operation: str, request: Request, session: SessionDep, settings: Settings
) -> Response:
    cors: dict[str, str] = {}
    try:
        cors = _cors(request, settings)
        actor, via = await _actor(request, session, settings)
        ctx = ServiceContext(session, settings, request.app.state.temporal, actor)
        rule = policy.rule_for("POST", f"/codec/{operation}") or policy.ADMIN_ONLY
        if not rule.allows(actor.role):
            await audit.record(ctx, "denied", f"codec/{operation}")
            raise _Refused(403, "forbidden", f"role '{actor.role}' may not use the codec server")
        namespace = _namespace(request, settings)
        try:
            body: Any = await request.json()
        except ValueError:
            raise _Refused(422, "invalid", "body is not JSON") from None
        count = (
            len(body.get("payloads") or [])
            if isinstance(body, dict) and isinstance(body.get("payloads"), list)
            else 0
        )
        if count > MAX_PAYLOADS:
            raise _Refused(413, "too_large", f"at most {MAX_PAYLOADS} payloads per call")
        codec = _codec(request, settings)
        try:
            if operation == "decode":
                out = await decode_json_payloads(codec, body)
            else:
                out = await encode_json_payloads(codec, body)
        except CodecRequestError as exc:
            raise _Refused(422, "invalid", str(exc)) from None
        except PayloadDecryptionError as exc:  # names the key id only
            raise _Refused(422, "undecryptable", str(exc)) from None
        # Written before the clear payloads leave.
        await audit.record(
            ctx,
            operation,
            f"temporal/{namespace}",
            details={"namespace": namespace, "payloads": count, "auth": via},
        )
        return JSONResponse(out, headers={**cors, "X-Request-ID": actor.request_id or ""})
    except _Refused as refused:
        headers = dict(cors)
        if refused.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(
            error_body(refused.code, refused.message), refused.status, headers=headers
        )


@router.post("/decode")
async def decode(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    """Temporal payloads in, clear payloads out (admin, operator)."""
    return await _run("decode", request, session, settings)


@router.post("/encode")
async def encode(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    """Clear payloads in (e.g. a signal typed in the UI), encrypted payloads out."""
    return await _run("encode", request, session, settings)


@router.options("/{operation}")
async def preflight(operation: str, request: Request, settings: SettingsDep) -> Response:
    """CORS preflight of the Temporal UI (never credentialed, so never authenticated)."""
    origin = (request.headers.get("origin") or "").lower()
    method = (request.headers.get("access-control-request-method") or "").upper()
    if operation not in OPERATIONS:
        return JSONResponse(error_body("not_found", "no such codec operation"), 404)
    if not origin:
        return JSONResponse(error_body("bad_request", "not a CORS preflight (no Origin)"), 400)
    if origin not in codec_auth.ui_origins(settings) or method not in ("POST", ""):
        return JSONResponse(
            error_body("forbidden", "origin not allowed to use the codec server"), 403
        )
    pna = request.headers.get("access-control-request-private-network", "").lower() == "true"
    return Response(status_code=204, headers=codec_auth.preflight_headers(origin, pna))


# --- signing the browser in -------------------------------------------------------------

_PAGE = """<!doctype html><meta charset="utf-8"><title>journeys codec sign-in</title>
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;line-height:1.5}}
input{{width:100%;padding:.4rem}} code{{background:#eee;padding:0 .2rem}}</style>
<h1>Codec server sign-in</h1>{body}"""

_FORM = """<p>Paste an <b>operator</b> or <b>admin</b> API key. This browser then gets a
session cookie (8 hours, this API only, the key itself is not stored) that the Temporal
UI sends to the codec server.</p>
<form method="post" action="/codec/login"><input type="password" name="key"
autocomplete="off" placeholder="jk_..." required autofocus> <p><button>Sign in</button></p></form>
<p>Then in the Temporal UI open <b>Codec Server</b> settings (top bar), choose
<i>Use my browser setting</i>, enter <code>{endpoint}</code>, tick
<b>Include cross-origin credentials</b> and apply.</p>"""


_CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"


def _page(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        _PAGE.format(body=body),
        status,
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": _CSP,
        },
    )


def _endpoint(settings: Settings) -> str:
    return escape(f"{settings.public_base_url.rstrip('/')}/codec")


@router.get("/login", response_class=HTMLResponse)
async def login_form(settings: SettingsDep) -> HTMLResponse:
    return _page(_FORM.format(endpoint=_endpoint(settings)))


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    origin = request.headers.get("origin")
    # Login CSRF: only this API's own page may sign a browser in.
    if origin is not None and origin.lower() not in codec_auth.own_origins(request, settings):
        return _page("<p>Refused: sign in from this API's own page.</p>", 403)
    if len(await request.body()) > 4096:
        return _page("<p>Refused: request too large.</p>", 413)
    form = parse_qs((await request.body()).decode("utf-8", errors="replace"))
    plaintext = (form.get("key") or [""])[0].strip()
    pepper = str(settings.secret_values()["api_key_pepper"])
    if not plaintext:
        return _page("<p>Paste a key.</p>" + _FORM.format(endpoint=_endpoint(settings)), 422)
    key = await authenticate(session, plaintext, pepper)
    if key is None:
        return _page(
            "<p>That key is not valid.</p>" + _FORM.format(endpoint=_endpoint(settings)), 401
        )
    ctx = ServiceContext(session, settings, None, Actor(key.id, key.role, request_id(request)))
    rule = policy.rule_for("POST", "/codec/decode") or policy.ADMIN_ONLY
    if not rule.allows(key.role):
        await audit.record(ctx, "denied", "codec/login")
        return _page(f"<p>Role <b>{escape(key.role)}</b> may not use the codec server.</p>", 403)
    await audit.record(ctx, "login", "codec/session")
    response = _page(
        f"<p>Signed in (key <code>{escape(key.id)}</code>, role {escape(key.role)}) "
        "for 8 hours.</p><p>In the Temporal UI, Codec Server settings: endpoint "
        f"<code>{_endpoint(settings)}</code>, <b>Include cross-origin credentials</b> ticked.</p>"
        '<form method="post" action="/codec/logout"><button>Sign out</button></form>'
    )
    response.set_cookie(
        codec_auth.COOKIE,
        codec_auth.make_session(key.id, pepper),
        max_age=codec_auth.SESSION_TTL_S,
        path=codec_auth.COOKIE_PATH,
        httponly=True,
        secure=codec_auth.cookie_secure(settings),
        samesite="strict",
    )
    return response


@router.post("/logout", response_class=HTMLResponse)
async def logout(settings: SettingsDep) -> HTMLResponse:
    response = _page("<p>Signed out.</p>")
    response.delete_cookie(
        codec_auth.COOKIE,
        path=codec_auth.COOKIE_PATH,
        httponly=True,
        secure=codec_auth.cookie_secure(settings),
        samesite="strict",
    )
    return response
