"""send_email's suppression and consent checks are SQL of their own (one statement with
the reservation, activities/sending.py _RESERVE_AND_CHECK); the services'
find_suppression and has_valid_grant answer the same questions for the API. Both must
agree, case by case, so the two cannot drift apart."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.config import Settings
from core.db import Database
from core.models import utcnow
from services.consents import ConsentIn, has_valid_grant, set_consent
from services.context import ServiceContext
from services.suppressions import find_suppression, suppress
from tests.integration.sending_support import (
    activities_for,
    new_contact,
    new_template,
    run_send,
    send_input,
    set_grant,
)

CAT = "care_reminders"


Consents = list[tuple[str, bool, int | None]]
Outcome = tuple[str, str | None]

CASES: dict[str, tuple[Consents, str | None, Outcome]] = {
    # case: (consents in order as (category, granted, days ago or None), suppression, outcome)
    "granted": ([(CAT, True, None)], None, ("sent", None)),
    "suppressed_all": ([(CAT, True, None)], "*", ("blocked", "suppressed")),
    "suppressed_category": ([(CAT, True, None)], CAT, ("blocked", "suppressed")),
    "suppressed_other_category": ([(CAT, True, None)], "billing", ("sent", None)),
    "never_granted": ([], None, ("blocked", "no_consent")),
    "granted_other_category": ([("billing", True, None)], None, ("blocked", "no_consent")),
    "revoked": ([(CAT, True, None), (CAT, False, None)], None, ("blocked", "no_consent")),
    "granted_again": ([(CAT, False, None), (CAT, True, None)], None, ("sent", None)),
    "backfilled_grant_older_than_revocation": (
        [(CAT, False, None), (CAT, True, 30)],
        None,
        ("blocked", "no_consent"),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_activity_and_services_agree(db: Database, env: Settings, case: str) -> None:
    consents, suppressed_for, outcome = CASES[case]
    contact = await new_contact(db, env)
    assert contact.email_hash
    for category, granted, days_ago in consents:
        if days_ago is None:
            await set_grant(db, env, contact.id, category, granted)
            continue
        async with db.session() as s:
            at = utcnow() - timedelta(days=days_ago)
            await set_consent(
                ServiceContext(s, env),
                contact.id,
                category,
                ConsentIn(granted=granted, source="t", at=at),
            )
    if suppressed_for is not None:
        async with db.session() as s:
            await suppress(
                ServiceContext(s, env), contact.email_hash, suppressed_for, "manual", "t"
            )
            await s.commit()

    async with db.session() as s:
        ctx = ServiceContext(s, env)
        blocked_by = await find_suppression(ctx, contact.email_hash, CAT)
        granted_now = await has_valid_grant(ctx, contact.id, CAT)
    services_say = (
        ("blocked", "suppressed")
        if blocked_by is not None
        else ("sent", None)
        if granted_now
        else ("blocked", "no_consent")
    )

    tpl = await new_template(db)
    result = await run_send(activities_for(db, env), send_input(contact.id, tpl.key, CAT))
    assert (result.status, result.detail) == services_say == outcome
