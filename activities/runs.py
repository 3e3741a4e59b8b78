"""Recording what runs do: the run row (current step, status) and its step log."""

from __future__ import annotations

from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from core.config import Settings
from core.db import Database
from core.models import Run, StepLog, utcnow
from services.report_rollup import on_run_exit, on_steps_recorded
from workflows.types import RecordInput


class RunActivities:
    def __init__(self, db: Database, settings: Settings | None = None) -> None:
        self.db = db
        self.settings = settings

    async def _run_status_changed(self, s: AsyncSession, inp: RecordInput) -> None:
        """A run started or ended: segments with {"journey": KEY} conditions re-check the
        contact (on the session the records were committed with: one connection a call)."""
        if self.settings is None:
            return
        from services.context import ServiceContext
        from services.segment_membership import on_contact_changed

        ctx = ServiceContext(s, self.settings, activity.client())
        await on_contact_changed(ctx, inp.contact_id, kinds={f"journey:{inp.journey_key}"})

    @activity.defn(name="record_steps")
    async def record_steps(self, inp: RecordInput) -> None:
        ended = inp.status != "running"
        async with self.db.session() as s:
            before = None
            if not ended:  # an ended run re-checks segments whatever it was before
                before = (await s.exec(select(Run.status).where(Run.id == inp.run_id))).first()
            values = dict(
                id=inp.run_id,
                journey_key=inp.journey_key,
                version=inp.version,
                contact_id=inp.contact_id,
                workflow_id=inp.workflow_id,
                status=inp.status,
                step=inp.step,
                exit_reason=inp.exit_reason,
                waiting_for=inp.waiting_for,
                visits=inp.visits,
                ended_at=utcnow() if ended else None,
                goal_reached_at=inp.goal_reached_at,
                trigger_event_id=inp.trigger_event_id,
            )
            stmt = insert(Run).values(**values)
            update = {k: v for k, v in values.items() if k not in ("id", "started_at")}
            # A conversion is recorded once; a later write never clears or moves it.
            update["goal_reached_at"] = func.coalesce(
                Run.goal_reached_at, stmt.excluded.goal_reached_at
            )
            # What started the run is written once (by this or by event dispatch).
            update["trigger_event_id"] = func.coalesce(
                Run.trigger_event_id, stmt.excluded.trigger_event_id
            )
            await s.exec(stmt.on_conflict_do_update(index_elements=["id"], set_=update))  # type: ignore[call-overload]
            if inp.records:
                rows = [
                    dict(
                        run_id=inp.run_id,
                        seq=r.seq,
                        journey_key=inp.journey_key,
                        version=inp.version,
                        contact_id=inp.contact_id,
                        step=r.step,
                        visit=r.visit,
                        action=r.action,
                        outcome=r.outcome,
                        at=r.at,
                    )
                    for r in inp.records
                ]
                # seq makes a retried activity a no-op for rows already written.
                await s.exec(  # type: ignore[call-overload]
                    insert(StepLog).values(rows).on_conflict_do_nothing(
                        constraint="uq_step_log_seq"
                    )
                )
                await on_steps_recorded(s, inp.run_id, inp.records)
            # Report counters move in the same transaction; both calls are retry-safe.
            await on_run_exit(s, inp.run_id)
            await s.commit()
            # Ended runs re-check every time (a retry after a failed check must not skip it).
            if before is None or before != inp.status or ended:
                await self._run_status_changed(s, inp)
