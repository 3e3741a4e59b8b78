"""Property: over random sequences of grant, revoke, unsubscribe and send, a message goes
out exactly when the newest consent for its category is a grant and the address is not
suppressed (for that category or globally). Drives the real activity, API, database and
SMTP sink."""

from __future__ import annotations

import httpx
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from core.config import Settings
from core.db import Database
from devstack.smtp_sink import SmtpSink
from tests.integration.sending_support import (
    activities_for,
    get_send,
    new_contact,
    new_template,
    outbox_for,
    run_send,
    send_input,
    sending_settings,
    unsubscribe_path,
)

CATEGORIES = ("care_reminders", "billing")

Op = tuple[str, str]
ops_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("grant"), st.sampled_from(CATEGORIES)),
        st.tuples(st.just("revoke"), st.sampled_from(CATEGORIES)),
        st.tuples(st.just("unsubscribe"), st.sampled_from((*CATEGORIES, "all"))),
        st.tuples(st.just("send"), st.sampled_from(CATEGORIES)),
    ),
    min_size=1,
    max_size=10,
)
# Sequences that must always be covered, whatever the random draw.
KEY_SEQUENCE: list[Op] = [
    ("send", "care_reminders"),  # never granted
    ("grant", "care_reminders"),
    ("send", "care_reminders"),
    ("unsubscribe", "care_reminders"),  # through the message's link
    ("send", "care_reminders"),
    ("grant", "billing"),
    ("send", "billing"),  # another category is unaffected
    ("unsubscribe", "all"),
    ("send", "billing"),
    ("revoke", "billing"),
    ("grant", "billing"),
    ("send", "billing"),
]


@hsettings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=ops_strategy)
@example(ops=KEY_SEQUENCE)
@example(ops=[("grant", "billing"), ("unsubscribe", "billing"), ("send", "billing")])
@example(ops=[("grant", "billing"), ("revoke", "billing"), ("send", "billing")])
async def test_no_send_without_a_valid_grant_and_no_suppression(
    ops: list[Op], api: httpx.AsyncClient, db: Database, settings: Settings, sink: SmtpSink
) -> None:
    env = sending_settings(settings)
    acts = activities_for(db, env)
    contact = await new_contact(db, env)
    template = await new_template(db)
    granted: dict[str, bool] = {}
    suppressed: set[str] = set()
    # Unsubscribe links of messages this contact received, with their category.
    received: list[tuple[str, str]] = []

    for n, (op, arg) in enumerate(ops):
        if op in ("grant", "revoke"):
            r = await api.put(
                f"/v1/contacts/{contact.id}/consents/{arg}",
                json={"granted": op == "grant", "source": "property"},
            )
            assert r.status_code == 200, r.text
            granted[arg] = op == "grant"
        elif op == "unsubscribe":
            category = "*" if arg == "all" else arg
            link = next((p for p, c in reversed(received) if arg == "all" or c == arg), None)
            if link is not None:
                # The message's own link (RFC 8058 one-click, or the page's "all" choice).
                body = b"List-Unsubscribe=One-Click" + (b"&scope=all" if arg == "all" else b"")
                r = await api.post(
                    link,
                    content=body,
                    headers={"content-type": "application/x-www-form-urlencoded"},
                )
                assert r.status_code == 200
            else:
                # No message of that category yet: the operator records the request.
                r = await api.post(
                    "/v1/suppressions",
                    json={"contact_id": contact.id, "category": category, "reason": "unsubscribe"},
                )
                assert r.status_code in (200, 201), r.text
            suppressed.add(category)
        else:
            result = await run_send(acts, send_input(contact.id, template.key, arg, step=f"s{n}"))
            blocked_by_suppression = "*" in suppressed or arg in suppressed
            allowed = granted.get(arg, False) and not blocked_by_suppression
            send = await get_send(db, result.send_id or "")
            delivered = await outbox_for(db, send.message_id)
            if allowed:
                assert result.status == "sent", (ops, n, result)
                assert len(delivered) == 1
                received.append((unsubscribe_path(delivered[0].raw), arg))
            else:
                reason = "suppressed" if blocked_by_suppression else "no_consent"
                assert (result.status, result.detail) == ("blocked", reason), (ops, n)
                assert delivered == []
