"""The route policy table and per-field redaction (no stack needed)."""

from __future__ import annotations

import time

import pytest

from api import codec_auth, policy
from core.apikeys import ROLES


def test_rules_use_known_roles_and_admin_is_implicit() -> None:
    for (method, path), rule in policy.POLICY.items():
        assert method in {"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"}, path
        assert rule.roles <= set(ROLES), path
        assert rule.public or rule.allows("admin"), path
    with pytest.raises(ValueError):
        policy.allow("superuser")


def test_marketer_never_reaches_a_contact_record() -> None:
    """SPEC 7: marketers get aggregates only."""
    for (method, path), rule in policy.POLICY.items():
        per_contact = "contact" in path or "members" in path or path.endswith("/runs/{}")
        if per_contact or rule.audit is not None:
            assert not rule.allows("marketer") or rule.public, f"{method} {path}"


def test_integration_is_limited_to_events_and_contacts() -> None:
    for (method, path), rule in policy.POLICY.items():
        if rule.allows("integration") and not rule.public:
            assert path.startswith(("/v1/contacts", "/v1/events", "/v1/reports/inbound")), (
                f"{method} {path}"
            )


def test_auditor_reads_only() -> None:
    for (method, path), rule in policy.POLICY.items():
        if rule.allows("auditor") and not rule.public:
            assert method == "GET", f"{method} {path}"
    assert policy.rule_for("GET", "/v1/audit") is not None
    assert policy.rule_for("GET", "/v1/audit").allows("auditor")  # type: ignore[union-attr]


def test_lookup_ignores_parameter_names_and_folds_head_into_get() -> None:
    rule = policy.rule_for("GET", "/v1/contacts/{id}")
    assert rule is policy.rule_for("GET", "/v1/contacts/{contact_id}") and rule is not None
    assert policy.rule_for("HEAD", "/t/o/{tok}") is policy.rule_for("GET", "/t/o/{token}")
    assert policy.rule_for("GET", "/v1/nothing-here") is None


def test_redaction_by_role() -> None:
    contact = {
        "id": "c_1",
        "email": "a@b.c",
        "external_id": "mrn",
        "attributes": {"x": 1},
        "timezone": "UTC",
    }
    for role in ("admin", "designer", "operator", "integration"):
        assert policy.redact("contact", contact, role) == contact
    for role in ("auditor", "marketer"):
        out = policy.redact("contact", contact, role)
        assert out == {
            "id": "c_1",
            "timezone": "UTC",
            "redacted": ["external_id", "email", "attributes"],
        }
    assert policy.redact("event", {"id": "e", "properties": {"a": 1}}, "auditor") == {
        "id": "e",
        "redacted": ["properties"],
    }


def test_field_names_never_values() -> None:
    body = {"email": "a@b.c", "attributes": {"dx": "secret"}, "timezone": "UTC"}
    assert policy.field_names(body) == ["attributes", "attributes.dx", "email", "timezone"]
    assert policy.field_names(["not", "a", "map"]) == []


def test_codec_session_tokens() -> None:
    now = time.time()
    token = codec_auth.make_session("key_abc", "pepper", now=now, ttl=60)
    assert codec_auth.verify_session(token, "pepper", now=now) == "key_abc"
    assert codec_auth.verify_session(token, "pepper", now=now + 61) is None  # expired
    assert codec_auth.verify_session(token, "other-pepper", now=now) is None
    forged = token.replace("key_abc", "key_xyz")
    assert codec_auth.verify_session(forged, "pepper", now=now) is None
    for junk in ("", "v1", "a.b.c.d", "v1.key.notanumber.mac", "x" * 500):
        assert codec_auth.verify_session(junk, "pepper", now=now) is None
