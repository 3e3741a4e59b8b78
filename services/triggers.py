"""Which active journeys does an event start? An in-memory index of the triggers of every
active journey's newest published version.

The index is rebuilt when the journey table changes: every publish, pause, resume or
archive bumps `journey.updated_at`, so one tiny query (count and newest change) tells each
API process whether its copy is current, without any cross-process messaging.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.models import Journey, JourneyVersion
from dsl.conditions import matches_where

SEGMENT_ENTRY = "segment_entry"


@dataclass(frozen=True)
class Entry:
    """An active journey an event may start: its newest version and its rules."""

    version: JourneyVersion
    where: Mapping[str, Any] | None
    reentry: Mapping[str, Any] | None

    @property
    def journey_key(self) -> str:
        return self.version.journey_key


@dataclass
class TriggerSnapshot:
    stamp: tuple[int, datetime | None]
    by_event: dict[str, list[Entry]] = field(default_factory=dict)
    by_segment: dict[str, list[Entry]] = field(default_factory=dict)

    def entries_for(self, name: str, properties: Mapping[str, Any]) -> list[Entry]:
        """The journeys event `name` with `properties` starts, each once."""
        found: dict[str, Entry] = {}
        for e in self.by_event.get(name, ()):
            if matches_where(e.where, properties):
                found.setdefault(e.journey_key, e)
        if name == SEGMENT_ENTRY:
            segment = properties.get("segment")
            if isinstance(segment, str):
                for e in self.by_segment.get(segment, ()):
                    found.setdefault(e.journey_key, e)
        return list(found.values())


class TriggerIndex:
    def __init__(self) -> None:
        self._snap: TriggerSnapshot | None = None
        self.rebuilds = 0  # for tests and metrics

    async def entries_for(
        self, session: AsyncSession, name: str, properties: Mapping[str, Any]
    ) -> list[Entry]:
        return (await self.current(session)).entries_for(name, properties)

    def invalidate(self) -> None:
        self._snap = None

    async def current(self, session: AsyncSession) -> TriggerSnapshot:
        row = (
            await session.exec(select(func.count(), func.max(Journey.updated_at)))  # type: ignore[call-overload]
        ).one()
        stamp = (int(row[0]), row[1])
        if self._snap is None or self._snap.stamp != stamp:
            self._snap = await self._build(session, stamp)
            self.rebuilds += 1
        return self._snap

    async def _build(
        self, session: AsyncSession, stamp: tuple[int, datetime | None]
    ) -> TriggerSnapshot:
        rows = (
            await session.exec(
                select(JourneyVersion)
                .join(
                    Journey,
                    (col(Journey.key) == col(JourneyVersion.journey_key))
                    & (col(Journey.latest_version) == col(JourneyVersion.version)),
                )
                .where(Journey.status == "active")
            )
        ).all()
        snap = TriggerSnapshot(stamp)
        for v in rows:
            trigger = v.definition.get("trigger") or {}
            entry = Entry(v, trigger.get("where"), v.definition.get("reentry"))
            kind = trigger.get("type")
            if kind == "event" and isinstance(trigger.get("event"), str):
                snap.by_event.setdefault(trigger["event"], []).append(entry)
            elif kind == "segment_entry" and isinstance(trigger.get("segment"), str):
                snap.by_segment.setdefault(trigger["segment"], []).append(entry)
        return snap


_indexes: dict[str, TriggerIndex] = {}


def trigger_index(database_url: str | None) -> TriggerIndex:
    """One index per database this process talks to."""
    key = database_url or ""
    if key not in _indexes:
        _indexes[key] = TriggerIndex()
    return _indexes[key]
