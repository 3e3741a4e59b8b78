"""Who may use the codec server, and from which browser origin.

Two ways to present an API key (role admin or operator, per api/policy.py):

* `Authorization: Bearer jk_...` — the Temporal CLI (`--codec-auth "Bearer jk_..."`),
  scripts, and a Temporal UI behind an auth proxy that adds the header.
* A codec session cookie — the Temporal UI cannot send a static key: its "Pass the
  user access token" option forwards the UI's own OIDC token (and only to https).
  What it can do is "Include cross-origin credentials", i.e. send cookies. So an
  operator signs in once at `/codec/login` on the API's origin with their key; the
  API sets an HttpOnly, SameSite=Strict cookie scoped to /codec holding a signed,
  expiring session (key id + expiry + HMAC), never the key itself. Every request
  re-checks that the key still exists, is not revoked and still has a codec role.

CORS: only the Temporal UI origin(s) get CORS headers, and a request whose Origin is
neither one of them nor the API itself is refused outright.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from urllib.parse import urlsplit

from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.requests import Request

from core.config import Settings
from core.models import ApiKey

COOKIE = "journeys_codec"
COOKIE_PATH = "/codec"
SESSION_TTL_S = 8 * 3600
ALLOWED_HEADERS = "content-type, authorization, authorization-extras, x-namespace, x-request-id"
_SESSION_VERSION = "v1"


def _origin_of(url: str) -> str:
    parts = urlsplit(url.strip())
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else ""


def ui_origins(settings: Settings) -> frozenset[str]:
    """TEMPORAL_UI_ORIGIN (comma-separated), else in dev the embedded UI on 127.0.0.1
    and localhost. Outside dev with nothing set, no browser origin is allowed."""
    if settings.temporal_ui_origin:
        return frozenset(
            o for o in (_origin_of(x) for x in settings.temporal_ui_origin.split(",")) if o
        )
    if settings.dev_mode:
        port = settings.temporal_ui_port
        return frozenset({f"http://127.0.0.1:{port}", f"http://localhost:{port}"})
    return frozenset()


def own_origins(request: Request, settings: Settings) -> frozenset[str]:
    return frozenset(
        o for o in (_origin_of(settings.public_base_url), _origin_of(str(request.base_url))) if o
    )


def cors_headers(origin: str) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }


def preflight_headers(origin: str, private_network: bool) -> dict[str, str]:
    headers = cors_headers(origin)
    headers.update(
        {
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": "600",
        }
    )
    if private_network:  # Chrome's Private Network Access preflight
        headers["Access-Control-Allow-Private-Network"] = "true"
    return headers


# --- the session cookie ----------------------------------------------------------------


def _mac_key(pepper: str) -> bytes:
    # A key of its own, derived from the pepper, so a session MAC is never an API-key hash.
    return hmac.new(pepper.encode(), b"journeys/codec-session", hashlib.sha256).digest()


def _mac(pepper: str, message: str) -> str:
    digest = hmac.new(_mac_key(pepper), message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def make_session(
    key_id: str, pepper: str, now: float | None = None, ttl: int = SESSION_TTL_S
) -> str:
    expires = int(now if now is not None else time.time()) + ttl
    message = f"{_SESSION_VERSION}.{key_id}.{expires}"
    return f"{message}.{_mac(pepper, message)}"


def verify_session(token: str, pepper: str, now: float | None = None) -> str | None:
    """The key id of a valid, unexpired session token; None otherwise. Never raises."""
    if not isinstance(token, str) or len(token) > 200:
        return None
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != _SESSION_VERSION or not parts[2].isdigit():
        return None
    message = ".".join(parts[:3])
    if not hmac.compare_digest(_mac(pepper, message), parts[3]):
        return None
    if int(parts[2]) < int(now if now is not None else time.time()):
        return None
    return parts[1]


async def key_from_session(session: AsyncSession, token: str, pepper: str) -> ApiKey | None:
    key_id = verify_session(token, pepper)
    if key_id is None:
        return None
    key = await session.get(ApiKey, key_id)
    if key is None or key.revoked_at is not None:
        return None
    return key


def cookie_secure(settings: Settings) -> bool:
    return settings.public_base_url.lower().startswith("https://")
