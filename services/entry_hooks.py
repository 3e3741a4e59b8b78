"""Telling rule segments that contacts changed because of journey entry: new events
(`event:NAME`) and runs started (`journey:KEY`). The segments work provides the hook
(services.segment_membership.on_contacts_changed); without it this does nothing."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from services.context import ServiceContext

# Segment events never re-trigger segments: that could chase its own tail.
SEGMENT_EVENTS = frozenset({"segment_entry", "segment_exit"})


async def contacts_changed(
    ctx: ServiceContext, changes: Iterable[tuple[str, str]]
) -> None:
    """changes: (contact id, kind) pairs; one hook call per distinct set of kinds."""
    try:
        from services.segment_membership import on_contacts_changed
    except ImportError:  # segments not built on this branch
        return
    kinds_of: dict[str, set[str]] = defaultdict(set)
    for contact_id, kind in changes:
        kinds_of[contact_id].add(kind)
    groups: dict[frozenset[str], list[str]] = defaultdict(list)
    for contact_id, kinds in kinds_of.items():
        groups[frozenset(kinds)].append(contact_id)
    for group, contact_ids in groups.items():
        await on_contacts_changed(ctx, sorted(contact_ids), kinds=set(group))


def event_changes(events: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """(contact id, event name) -> hook changes, leaving out segment events."""
    return [(cid, f"event:{name}") for cid, name in events if name not in SEGMENT_EVENTS]


def run_changes(journey_key: str, contact_ids: Iterable[str]) -> list[tuple[str, str]]:
    return [(cid, f"journey:{journey_key}") for cid in contact_ids]
