"""Who may call what (SPEC section 7): one table for every route, and per-field redaction.

Every route of the app has a rule here, keyed by method and path template. The
dependencies in api/deps.py (and the codec router) look the rule up for the route
being served, so changing who may do something is a one-line change in this file.
`admin` may call everything. A /v1 route without a rule falls back to the roles its
router declared (and tests/integration/test_security_matrix.py fails until a rule is
added here).

Roles:
  designer     journeys, templates, segments; may see PHI (previews, drill-downs)
  operator     runs, enrolments, contacts, suppressions, the codec; may see PHI
  marketer     aggregates only: definitions and reports, never a contact's record
  auditor      the audit log and reports; contact records without PHI
  integration  events and contacts only (EHR/CRM feeds)

A rule may also name what to audit. The dependency stages that audit row in the
request's transaction, so a change and its audit row commit together, and a read is
committed before the response leaves.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from core.apikeys import ROLES

ADMIN = "admin"
DESIGNER = "designer"
OPERATOR = "operator"
MARKETER = "marketer"
AUDITOR = "auditor"
INTEGRATION = "integration"
assert set(ROLES) == {ADMIN, DESIGNER, OPERATOR, MARKETER, AUDITOR, INTEGRATION}

# Roles that may see a contact's PHI (email, external id, attributes, event properties).
PHI_ROLES = frozenset({ADMIN, DESIGNER, OPERATOR, INTEGRATION})

READERS = (DESIGNER, OPERATOR, MARKETER, AUDITOR)  # definitions and aggregates


@dataclass(frozen=True)
class Audit:
    """An audit row written for every successful call of a route.

    `resource` is formatted with the route's path parameters ("contact/{contact_id}").
    `body_fields` adds the names (never the values) of the JSON body's fields.
    """

    action: str
    resource: str
    fields: tuple[str, ...] = ()
    body_fields: bool = False


@dataclass(frozen=True)
class Rule:
    roles: frozenset[str] = field(default_factory=frozenset)  # besides admin
    public: bool = False  # no API key at all (tracking pixels, health, docs)
    audit: Audit | None = None  # written by the dependency for every successful call
    # What the route touches, for the audit row of a refused call ("denied").
    resource: str | None = None

    def allows(self, role: str) -> bool:
        return self.public or role == ADMIN or role in self.roles


def allow(*roles: str, audit: Audit | None = None, resource: str | None = None) -> Rule:
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles in policy: {sorted(unknown)}")
    return Rule(
        frozenset(roles), audit=audit, resource=resource or (audit.resource if audit else None)
    )


PUBLIC = Rule(public=True)
ADMIN_ONLY = allow()


_CONTACT = "contact/{contact_id}"


def _contact(action: str, *fields: str, body: bool = False) -> Audit:
    return Audit(action, _CONTACT, fields, body)


CONTACT_FIELDS = ("external_id", "email", "timezone", "attributes")

# (METHOD, path template) -> rule. Path parameter names do not matter for matching.
_RULES: dict[tuple[str, str], Rule] = {
    # --- contacts (PHI) -------------------------------------------------------------
    # The contacts router audits these itself: it knows the id written and the fields shown.
    ("POST", "/v1/contacts"): allow(DESIGNER, OPERATOR, INTEGRATION, resource="contacts"),
    ("GET", "/v1/contacts/{contact_id}"): allow(
        DESIGNER, OPERATOR, INTEGRATION, AUDITOR, resource=_CONTACT
    ),
    ("PATCH", "/v1/contacts/{contact_id}"): allow(
        DESIGNER, OPERATOR, INTEGRATION, resource=_CONTACT
    ),
    ("DELETE", "/v1/contacts/{contact_id}"): allow(OPERATOR, resource=_CONTACT),
    ("POST", "/v1/contacts/import"): allow(
        DESIGNER, OPERATOR, INTEGRATION, audit=Audit("import", "contacts")
    ),
    ("PUT", "/v1/contacts/{contact_id}/consents/{category}"): allow(
        DESIGNER, OPERATOR, INTEGRATION, audit=_contact("update", "consent", body=True)
    ),
    ("GET", "/v1/contacts/{contact_id}/consents"): allow(
        DESIGNER, OPERATOR, INTEGRATION, AUDITOR, audit=_contact("read", "consents")
    ),
    # --- segments --------------------------------------------------------------------
    ("GET", "/v1/segments"): allow(*READERS),
    ("POST", "/v1/segments"): allow(DESIGNER, OPERATOR),
    ("POST", "/v1/segments/preview"): allow(DESIGNER, OPERATOR),
    ("GET", "/v1/segments/{key}"): allow(*READERS),
    ("PUT", "/v1/segments/{key}"): allow(DESIGNER, OPERATOR),
    ("DELETE", "/v1/segments/{key}"): allow(DESIGNER, OPERATOR),
    ("GET", "/v1/segments/{key}/members"): allow(DESIGNER, OPERATOR),
    # SPEC 7: integrations reach events and contacts only, so not segment members.
    ("POST", "/v1/segments/{key}/members"): allow(DESIGNER, OPERATOR),
    ("DELETE", "/v1/segments/{key}/members"): allow(DESIGNER, OPERATOR),
    ("DELETE", "/v1/segments/{key}/members/{contact_id}"): allow(DESIGNER, OPERATOR),
    # --- attribute schema (names and types only, no values) -------------------------
    ("GET", "/v1/attributes"): allow(*READERS),
    ("PUT", "/v1/attributes/{name}"): allow(DESIGNER),
    # --- templates -------------------------------------------------------------------
    ("GET", "/v1/templates"): allow(*READERS),
    ("POST", "/v1/templates"): allow(DESIGNER),
    ("GET", "/v1/templates/{key}"): allow(*READERS),
    ("PUT", "/v1/templates/{key}"): allow(DESIGNER),
    # Renders the template with a contact's data: PHI roles only, audited as a read.
    ("POST", "/v1/templates/{key}/preview"): allow(
        DESIGNER, OPERATOR, audit=Audit("read", "template-preview/{key}", ("render",), True)
    ),
    # --- journeys --------------------------------------------------------------------
    ("GET", "/v1/journeys"): allow(*READERS),
    ("POST", "/v1/journeys"): allow(DESIGNER),
    ("GET", "/v1/journeys/{key}"): allow(*READERS),
    ("PUT", "/v1/journeys/{key}"): allow(DESIGNER),
    ("POST", "/v1/journeys/{key}/validate"): allow(DESIGNER),
    ("POST", "/v1/journeys/{key}/publish"): allow(DESIGNER),
    ("POST", "/v1/journeys/{key}/pause"): allow(DESIGNER, OPERATOR),
    ("POST", "/v1/journeys/{key}/resume"): allow(DESIGNER, OPERATOR),
    ("POST", "/v1/journeys/{key}/archive"): allow(DESIGNER),
    # --- runs (who is in which journey is itself PHI) ---------------------------------
    ("POST", "/v1/journeys/{key}/enrollments"): allow(DESIGNER, OPERATOR),
    ("GET", "/v1/journeys/{key}/runs"): allow(DESIGNER, OPERATOR),
    ("GET", "/v1/journeys/{key}/runs/{contact_id}"): allow(
        DESIGNER, OPERATOR, audit=_contact("read", "run")
    ),
    ("POST", "/v1/journeys/{key}/runs/{contact_id}/exit"): allow(
        DESIGNER, OPERATOR, audit=_contact("update", "run.exit")
    ),
    # --- events ----------------------------------------------------------------------
    ("POST", "/v1/events"): allow(
        DESIGNER, OPERATOR, INTEGRATION, audit=Audit("create", "events", body_fields=True)
    ),
    ("POST", "/v1/reports/inbound"): allow(OPERATOR, INTEGRATION),
    # --- suppressions (addresses only shown to admin, by the router) -----------------
    ("GET", "/v1/suppressions"): allow(OPERATOR, AUDITOR),
    ("POST", "/v1/suppressions"): allow(OPERATOR),
    ("POST", "/v1/suppressions/check"): allow(OPERATOR),
    ("DELETE", "/v1/suppressions"): allow(OPERATOR),
    ("DELETE", "/v1/suppressions/{suppression_id}"): allow(OPERATOR),
    # --- reports (aggregates; small counts suppressed for marketers by the router) ---
    ("GET", "/v1/journeys/{key}/report"): allow(*READERS),
    ("GET", "/v1/journeys/{key}/report/steps/{step}/contacts"): allow(
        DESIGNER, OPERATOR, audit=Audit("read", "report-contacts/{key}/{step}")
    ),
    ("GET", "/v1/reports/engagement"): allow(*READERS),
    # --- settings and audit ----------------------------------------------------------
    ("GET", "/v1/settings"): allow(*READERS),
    ("PUT", "/v1/settings"): ADMIN_ONLY,
    ("GET", "/v1/audit"): allow(AUDITOR),
    # --- outside /v1 -----------------------------------------------------------------
    # Temporal codec server: clear payloads for operators only (auth in the codec router).
    ("POST", "/codec/decode"): allow(OPERATOR),
    ("POST", "/codec/encode"): allow(OPERATOR),
    ("OPTIONS", "/codec/{operation}"): PUBLIC,  # CORS preflight, never credentialed
    ("GET", "/codec/login"): PUBLIC,  # the form checks the key it is given
    ("POST", "/codec/login"): PUBLIC,
    ("POST", "/codec/logout"): PUBLIC,
    # Tracking and unsubscribe links are opened by mail clients: the token is the auth.
    ("GET", "/t/o/{token}"): PUBLIC,
    ("HEAD", "/t/o/{token}"): PUBLIC,
    ("GET", "/t/c/{token}"): PUBLIC,
    ("HEAD", "/t/c/{token}"): PUBLIC,
    ("GET", "/u/{token}"): PUBLIC,
    ("POST", "/u/{token}"): PUBLIC,
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
    # Dev only (DEV_ONLY routers are not mounted in production): the SMTP sink's outbox.
    ("GET", "/dev/outbox"): PUBLIC,
    ("GET", "/dev/outbox/messages"): PUBLIC,
    ("GET", "/dev/outbox/messages/{message_id}"): PUBLIC,
    ("GET", "/dev/outbox/messages/{message_id}/raw"): PUBLIC,
}

_PARAM = re.compile(r"\{[^}]*\}")


def normalize(path: str) -> str:
    """Path template without parameter names: "/v1/contacts/{}"."""
    return _PARAM.sub("{}", path.rstrip("/") or "/")


POLICY: Mapping[tuple[str, str], Rule] = {
    (method, normalize(path)): rule for (method, path), rule in _RULES.items()
}


def rule_for(method: str, path_template: str) -> Rule | None:
    method = method.upper()
    found = POLICY.get((method, normalize(path_template)))
    if found is None and method == "HEAD":
        found = POLICY.get(("GET", normalize(path_template)))
    return found


def route_template(request: Request) -> str:
    """The full template of the route being served ("/v1/contacts/{contact_id}").

    FastAPI >= 0.16x keeps included routers whole: scope["route"] is then the router's
    own route with a path RELATIVE to its prefix, and the full template sits in the
    effective route context. Older FastAPI copies routes with the full path.
    """
    fastapi_scope = request.scope.get("fastapi")
    if isinstance(fastapi_scope, Mapping):
        effective = fastapi_scope.get("effective_route_context")
        path_format = getattr(effective, "path_format", None)
        if path_format:
            return str(path_format)
    route = request.scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(path) if path else request.url.path


def app_endpoints(routes: Iterable[Any]) -> list[tuple[str, str]]:
    """(METHOD, full path template) of every route of an app, HEAD folded into GET."""
    try:  # FastAPI >= 0.16x: included routers are expanded lazily
        from fastapi.routing import iter_route_contexts

        contexts: Iterable[Any] = iter_route_contexts(list(routes))
    except ImportError:
        contexts = routes
    found: set[tuple[str, str]] = set()
    for route in contexts:
        path = getattr(route, "path_format", None) or getattr(route, "path", None)
        for method in getattr(route, "methods", None) or ():
            if path and method != "HEAD":
                found.add((method, str(path)))
    return sorted(found, key=lambda e: (e[1], e[0]))


def rule_for_request(request: Request) -> Rule | None:
    return rule_for(request.method, route_template(request))


def may_see_phi(role: str) -> bool:
    return role in PHI_ROLES


# --- per-field redaction ----------------------------------------------------------------

# Fields of each resource that carry PHI; everything else there is ids, times, states.
PHI_FIELDS: Mapping[str, tuple[str, ...]] = {
    "contact": ("external_id", "email", "attributes"),
    "event": ("properties",),
    "suppression": ("email",),
}


def redact(kind: str, data: Mapping[str, Any], role: str) -> dict[str, Any]:
    """`data` without the PHI fields of `kind` unless `role` may see PHI.

    A redacted answer lists what was withheld under "redacted", so a client can tell
    "withheld" from "empty".
    """
    out = dict(data)
    if may_see_phi(role):
        return out
    withheld = [f for f in PHI_FIELDS.get(kind, ()) if f in out]
    for f in withheld:
        del out[f]
    if withheld:
        out["redacted"] = withheld
    return out


def field_names(body: Any, nested: Iterable[str] = ("attributes", "properties")) -> list[str]:
    """Names (never values) of a JSON body's fields, one level into attribute maps."""
    if not isinstance(body, Mapping):
        return []
    names: set[str] = set()
    for key, value in body.items():
        k = str(key)[:100]
        names.add(k)
        if k in nested and isinstance(value, Mapping):
            names.update(f"{k}.{str(sub)[:100]}" for sub in value)
    return sorted(names)[:200]
