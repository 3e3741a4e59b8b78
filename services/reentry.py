"""Reentry rules (SPEC section 3): may this contact start a new run of this journey now?

`never`: one run ever; `after_exit`: a new run once `min_interval` has passed since the
last run ended; `always`: a new run whenever none is running. A journey has at most one
running run per contact (the workflow id is fixed), whatever the rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.common import WorkflowIDReusePolicy

from dsl.durations import parse_duration

ALREADY_RUNNING = "already_running"
REENTRY_NEVER = "reentry_never"
REENTRY_INTERVAL = "reentry_min_interval"


@dataclass(frozen=True)
class LastRun:
    """The newest run of a journey for a contact, as the run table has it."""

    run_id: str
    status: str  # running | completed | exited
    started_at: datetime
    ended_at: datetime | None


def mode(reentry: Mapping[str, Any] | None) -> str:
    return str((reentry or {}).get("mode", "never"))


def refusal(reentry: Mapping[str, Any] | None, last: LastRun | None, now: datetime) -> str | None:
    """None when a new run may start now, else the reason it may not."""
    if last is None:
        return None
    if last.status == "running":
        return ALREADY_RUNNING
    rule = mode(reentry)
    if rule == "always":
        return None
    if rule == "after_exit":
        assert reentry is not None
        ended = last.ended_at or last.started_at
        if parse_duration(str(reentry["min_interval"])).add_to(ended) <= now:
            return None
        return REENTRY_INTERVAL
    return REENTRY_NEVER


def reuse_policy(reentry: Mapping[str, Any] | None) -> WorkflowIDReusePolicy:
    """Temporal's own guard for `never` (within the namespace's retention); the run table
    decides beyond it."""
    if mode(reentry) == "never":
        return WorkflowIDReusePolicy.REJECT_DUPLICATE
    return WorkflowIDReusePolicy.ALLOW_DUPLICATE


async def last_runs_of_contacts(
    session: AsyncSession, journey_key: str, contact_ids: Iterable[str]
) -> dict[str, LastRun]:
    """contact id -> newest run of journey_key (one index scan per contact)."""
    ids = list(contact_ids)
    if not ids:
        return {}
    rows = await session.execute(
        text(
            "SELECT DISTINCT ON (contact_id) contact_id, id, status, started_at, ended_at "
            "FROM run WHERE journey_key = :key AND contact_id = ANY(:ids) "
            "ORDER BY contact_id, started_at DESC"
        ),
        {"key": journey_key, "ids": ids},
    )
    return {r.contact_id: LastRun(r.id, r.status, r.started_at, r.ended_at) for r in rows}


async def last_runs_of_pairs(
    session: AsyncSession, pairs: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], LastRun]:
    """(journey key, contact id) -> newest run, for many pairs in one query."""
    wanted = sorted(set(pairs))
    if not wanted:
        return {}
    rows = await session.execute(
        text(
            "SELECT DISTINCT ON (r.journey_key, r.contact_id) r.journey_key, r.contact_id, "
            "r.id, r.status, r.started_at, r.ended_at "
            "FROM run r JOIN unnest(CAST(:keys AS text[]), CAST(:ids AS text[])) "
            "AS w(journey_key, contact_id) "
            "ON r.journey_key = w.journey_key AND r.contact_id = w.contact_id "
            "ORDER BY r.journey_key, r.contact_id, r.started_at DESC"
        ),
        {"keys": [k for k, _ in wanted], "ids": [c for _, c in wanted]},
    )
    return {
        (r.journey_key, r.contact_id): LastRun(r.id, r.status, r.started_at, r.ended_at)
        for r in rows
    }
