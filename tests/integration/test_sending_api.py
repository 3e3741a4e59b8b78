"""Consents, suppressions and template validation/preview over HTTP."""

from __future__ import annotations

from datetime import timedelta

import httpx

from core.config import Settings
from core.db import Database
from core.models import utcnow
from tests.integration.sending_support import new_contact, tag


async def _contact(api: httpx.AsyncClient, **extra: object) -> tuple[str, str]:
    t = tag()
    email = f"pat-{t}@example.com"
    r = await api.post("/v1/contacts", json={"external_id": f"mrn-{t}", "email": email, **extra})
    assert r.status_code == 201, r.text
    return r.json()["id"], email


# --- consents ----------------------------------------------------------------------------


async def test_consent_grant_revoke_and_history(api: httpx.AsyncClient) -> None:
    cid, _ = await _contact(api)
    r = await api.put(
        f"/v1/contacts/{cid}/consents/care_reminders",
        json={"granted": True, "source": "intake-form"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["granted"] is True and r.json()["source"] == "intake-form"
    r = await api.put(
        f"/v1/contacts/{cid}/consents/care_reminders",
        json={"granted": False, "source": "phone-call"},
    )
    assert r.json()["granted"] is False
    # A backfilled grant from before the revocation does not win.
    old = (utcnow() - timedelta(days=10)).isoformat()
    r = await api.put(
        f"/v1/contacts/{cid}/consents/care_reminders",
        json={"granted": True, "source": "paper-form", "at": old},
    )
    assert r.status_code == 200 and r.json()["granted"] is False
    await api.put(
        f"/v1/contacts/{cid}/consents/billing", json={"granted": True, "source": "portal"}
    )

    r = await api.get(f"/v1/contacts/{cid}/consents")
    assert r.status_code == 200
    body = r.json()
    assert body["current"]["care_reminders"]["granted"] is False
    assert body["current"]["care_reminders"]["source"] == "phone-call"
    assert body["current"]["billing"]["granted"] is True
    assert [h["source"] for h in body["history"]] == [
        "portal",
        "phone-call",
        "intake-form",
        "paper-form",
    ]


async def test_consent_bad_input_is_a_clear_4xx(api: httpx.AsyncClient) -> None:
    cid, _ = await _contact(api)
    ok = {"granted": True, "source": "form"}
    r = await api.put(f"/v1/contacts/{cid}/consents/bad category!", json=ok)
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "category"
    r = await api.put(f"/v1/contacts/{cid}/consents/*", json=ok)
    assert r.status_code == 422
    r = await api.put("/v1/contacts/c_nobody/consents/care", json=ok)
    assert r.status_code == 404
    r = await api.put(f"/v1/contacts/{cid}/consents/care", json={"granted": True})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"].endswith("source")
    future = (utcnow() + timedelta(days=1)).isoformat()
    r = await api.put(f"/v1/contacts/{cid}/consents/care", json={**ok, "at": future})
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "at"
    r = await api.get(f"/v1/contacts/{cid}/consents")
    assert r.json()["history"] == []  # nothing half-written


async def test_consent_roles(
    app_client: httpx.AsyncClient, api: httpx.AsyncClient, key_for
) -> None:  # type: ignore[no-untyped-def]
    cid, _ = await _contact(api)
    integration = {"Authorization": f"Bearer {await key_for('integration')}"}
    marketer = {"Authorization": f"Bearer {await key_for('marketer')}"}
    body = {"granted": True, "source": "crm"}
    r = await app_client.put(f"/v1/contacts/{cid}/consents/care", json=body, headers=integration)
    assert r.status_code == 200
    r = await app_client.put(f"/v1/contacts/{cid}/consents/care", json=body, headers=marketer)
    assert r.status_code == 403
    r = await app_client.get(f"/v1/contacts/{cid}/consents", headers=marketer)
    assert r.status_code == 403


# --- suppressions ------------------------------------------------------------------------


async def test_suppressions_hide_addresses_from_operators(
    app_client: httpx.AsyncClient,
    api: httpx.AsyncClient,
    key_for,  # type: ignore[no-untyped-def]
) -> None:
    cid, email = await _contact(api)
    operator = {"Authorization": f"Bearer {await key_for('operator')}"}
    r = await app_client.post(
        "/v1/suppressions",
        json={"email": email, "category": "care_reminders", "reason": "manual"},
        headers=operator,
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert "email" not in created and email not in r.text
    assert created["contact_ids"] == [cid] and created["category"] == "care_reminders"
    r = await app_client.post(
        "/v1/suppressions", json={"contact_id": cid, "category": "care_reminders"}, headers=operator
    )
    assert r.status_code == 200 and r.json()["id"] == created["id"]  # already there

    r = await app_client.get(f"/v1/suppressions?contact_id={cid}", headers=operator)
    assert [s["id"] for s in r.json()] == [created["id"]] and email not in r.text
    r = await api.get(f"/v1/suppressions?contact_id={cid}")  # admin
    assert r.json()[0]["email"] == email

    r = await app_client.post(
        "/v1/suppressions/check", json={"contact_id": cid, "category": "billing"}, headers=operator
    )
    assert r.json() == {"suppressed": False, "matches": []}
    r = await app_client.post(
        "/v1/suppressions/check",
        json={"email": email, "category": "care_reminders"},
        headers=operator,
    )
    assert r.json()["suppressed"] is True and email not in r.text

    r = await app_client.delete(f"/v1/suppressions/{created['id']}", headers=operator)
    assert r.status_code == 204
    r = await app_client.post("/v1/suppressions/check", json={"email": email}, headers=operator)
    assert r.json()["suppressed"] is False


async def test_only_admin_lifts_an_unsubscribe(
    app_client: httpx.AsyncClient,
    api: httpx.AsyncClient,
    key_for,  # type: ignore[no-untyped-def]
) -> None:
    _, email = await _contact(api)
    operator = {"Authorization": f"Bearer {await key_for('operator')}"}
    r = await app_client.post(
        "/v1/suppressions", json={"email": email, "reason": "unsubscribe"}, headers=operator
    )
    sid = r.json()["id"]
    r = await app_client.delete(f"/v1/suppressions/{sid}", headers=operator)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert (await api.delete(f"/v1/suppressions/{sid}")).status_code == 204
    assert (await api.delete(f"/v1/suppressions/{sid}")).status_code == 404


async def test_suppression_bad_input(
    api: httpx.AsyncClient, app_client: httpx.AsyncClient, key_for
) -> None:  # type: ignore[no-untyped-def]
    r = await api.post("/v1/suppressions", json={"email": "not-an-address"})
    assert r.status_code == 422 and "not-an-address" not in r.text
    r = await api.post("/v1/suppressions", json={})
    assert r.status_code == 422
    r = await api.post("/v1/suppressions", json={"email": "a@example.com", "reason": "because"})
    assert r.status_code == 422
    r = await api.post("/v1/suppressions", json={"contact_id": "c_nobody"})
    assert r.status_code == 404
    integration = {"Authorization": f"Bearer {await key_for('integration')}"}
    assert (await app_client.get("/v1/suppressions", headers=integration)).status_code == 403


async def test_suppression_outlives_contact_erasure(
    api: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    contact = await new_contact(db, settings)
    assert contact.email
    r = await api.post("/v1/suppressions", json={"email": contact.email, "reason": "manual"})
    assert r.status_code == 201
    from core.models import Contact

    async with db.session() as s:
        row = await s.get(Contact, contact.id)
        assert row is not None
        row.email, row.deleted_at = None, utcnow()
        s.add(row)
        await s.commit()
    # The same address arrives again as a new contact: still suppressed.
    r = await api.post("/v1/contacts", json={"external_id": f"new-{tag()}", "email": contact.email})
    r = await api.post("/v1/suppressions/check", json={"contact_id": r.json()["id"]})
    assert r.json()["suppressed"] is True


# --- templates ---------------------------------------------------------------------------


async def test_template_save_validates_syntax(api: httpx.AsyncClient) -> None:
    key = f"bad-{tag()}"
    r = await api.post(
        "/v1/templates",
        json={"key": key, "subject": "Hi", "html": "<p>ok</p>\n<p>{{ contact.email </p>"},
    )
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert "html part" in err["message"] and "line 2" in err["message"]
    assert (
        err["details"]["errors"][0]["part"] == "html" and err["details"]["errors"][0]["line"] == 2
    )
    assert (await api.get(f"/v1/templates/{key}")).status_code == 404  # nothing written

    r = await api.post(
        "/v1/templates", json={"key": key, "subject": "Hi {{ patient }}", "html": "<p>ok</p>"}
    )
    assert r.status_code == 422 and r.json()["error"]["details"]["errors"][0]["part"] == "subject"

    r = await api.post("/v1/templates", json={"key": key, "subject": "Hi", "html": "<p>ok</p>"})
    assert r.status_code == 201
    r = await api.put(
        f"/v1/templates/{key}",
        json={"subject": "Hi", "html": "<p>ok</p>", "text": "{% for x in %}"},
    )
    assert r.status_code == 422 and r.json()["error"]["details"]["errors"][0]["part"] == "text"
    assert (await api.get(f"/v1/templates/{key}")).json()["text"] is None


async def test_template_preview_renders_for_a_contact(api: httpx.AsyncClient) -> None:
    cid, email = await _contact(api, attributes={"first": "Alice"})
    key = f"pv-{tag()}"
    r = await api.post(
        "/v1/templates",
        json={
            "key": key,
            "subject": "Hello {{ contact.attributes.first }}",
            "html": "<p>Hi {{ contact.attributes.first }}</p>"
            "<a href=\"{{ link('book', 'https://clinic.example/book') }}\">Book</a>",
        },
    )
    assert r.status_code == 201, r.text
    r = await api.post(f"/v1/templates/{key}/preview", json={"contact_id": cid})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["subject"] == "Hello Alice"
    assert 'href="https://clinic.example/book"' in body["html"]  # untracked in a preview
    assert body["links"] == [{"name": "book", "url": "https://clinic.example/book"}]
    assert "Hi Alice" in body["text"]

    r = await api.post(f"/v1/templates/{key}/preview", json={"contact_id": "c_nobody"})
    assert r.status_code == 404
    r = await api.post("/v1/templates/no-such/preview", json={"contact_id": cid})
    assert r.status_code == 404


async def test_template_preview_render_error_names_part_and_line(api: httpx.AsyncClient) -> None:
    cid, email = await _contact(api, attributes={"first": "Zebediah"})
    key = f"pv-{tag()}"
    r = await api.post(
        "/v1/templates",
        json={
            "key": key,
            "subject": "Hi",
            "html": "<p>{{ contact.attributes.first }}</p>\n\n"
            "<p>{{ contact.attributes.plan.name }}</p>",
        },
    )
    assert r.status_code == 201, r.text
    r = await api.post(f"/v1/templates/{key}/preview", json={"contact_id": cid})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["details"]["errors"][0] == {
        "part": "html",
        "line": 3,
        "message": err["details"]["errors"][0]["message"],
    }
    assert "Zebediah" not in r.text and email not in r.text


async def test_lift_all_suppressions_of_an_address(api: httpx.AsyncClient, key_for) -> None:  # type: ignore[no-untyped-def]
    cid, email = await _contact(api)
    for category, reason in (("care_reminders", "manual"), ("billing", "hard_bounce")):
        r = await api.post(
            "/v1/suppressions", json={"email": email, "category": category, "reason": reason}
        )
        assert r.status_code == 201
    r = await api.request(
        "DELETE", "/v1/suppressions", json={"contact_id": cid, "category": "billing"}
    )
    assert r.json() == {"removed": 1}
    await api.post("/v1/suppressions", json={"email": email, "reason": "unsubscribe"})
    operator = {"Authorization": f"Bearer {await key_for('operator')}"}
    r = await api.request("DELETE", "/v1/suppressions", json={"email": email}, headers=operator)
    assert r.status_code == 403  # one of them is the recipient's own unsubscribe
    r = await api.post("/v1/suppressions/check", json={"email": email})
    assert len(r.json()["matches"]) == 2  # nothing half-done
    r = await api.request("DELETE", "/v1/suppressions", json={"email": email})
    assert r.json() == {"removed": 2}


async def test_hostile_input_is_4xx_never_500(api: httpx.AsyncClient) -> None:
    cid, email = await _contact(api)
    cases = [
        ("PUT", f"/v1/contacts/{cid}/consents/care", {"granted": True, "source": "a\x00b"}),
        ("PUT", "/v1/contacts/c_%00x/consents/care", {"granted": True, "source": "x"}),
        ("PUT", f"/v1/contacts/{cid}/consents/{'c' * 300}", {"granted": True, "source": "x"}),
        ("GET", "/v1/suppressions?offset=-1", None),
        ("GET", "/v1/suppressions?limit=0", None),
        ("GET", "/v1/suppressions?category=a%00b", None),
        ("GET", "/v1/suppressions?reason=whim", None),
        ("DELETE", f"/v1/suppressions/{2**70}", None),
        ("POST", "/v1/suppressions", {"email": email, "source": "x\x00"}),
        ("POST", "/v1/suppressions", {"contact_id": "c_\x00"}),
        ("POST", "/v1/suppressions/check", {"email": email, "category": "bad category"}),
        ("POST", "/v1/templates/a%00b/preview", {"contact_id": cid}),
        ("POST", "/v1/templates/x/preview", {"contact_id": "c_\x00"}),
    ]
    for method, path, body in cases:
        r = await api.request(method, path, json=body)
        assert r.status_code in (404, 422), (method, path, r.status_code, r.text)
        assert "error" in r.json()


async def test_template_fields_that_postgres_cannot_store_are_422(api: httpx.AsyncClient) -> None:
    key = f"nul-{tag()}"
    for field in ("subject", "html", "text", "name"):
        body = {"key": key, "subject": "Hi", "html": "<p>x</p>", field: "a\x00b"}
        r = await api.post("/v1/templates", json=body)
        assert r.status_code == 422, (field, r.text)
    r = await api.post(
        "/v1/templates", json={"key": key, "subject": "Hi", "html": "<p>x</p>", "category": "a b"}
    )
    assert r.status_code == 422
