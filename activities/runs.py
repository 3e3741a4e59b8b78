"""Recording what runs do: the run row (current step, status) and its step log."""

from __future__ import annotations

import json

from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from core.config import Settings
from core.db import Database
from core.models import utcnow
from services.report_rollup import ids, on_steps_recorded, rollup_runs_locked
from workflows.types import RecordInput


class RunActivities:
    def __init__(self, db: Database, settings: Settings | None = None) -> None:
        self.db = db
        self.settings = settings

    async def _segments_to_recheck(self, s: AsyncSession, inp: RecordInput) -> bool:
        """Whether any rule segment reads this journey's runs ({"journey": KEY}). Read in the
        records' transaction, so a run that no segment watches (the common case) costs no
        transaction of its own for the hook."""
        if self.settings is None:
            return False
        from services.context import ServiceContext
        from services.segment_membership import affected, rule_segments

        ctx = ServiceContext(s, self.settings, None)
        return bool(affected(await rule_segments(ctx), {f"journey:{inp.journey_key}"}))

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
        records = inp.records
        async with self.db.session() as s:
            result = await s.execute(
                _RECORD,
                {
                    "id": inp.run_id,
                    "journey_key": inp.journey_key,
                    "version": inp.version,
                    "contact_id": inp.contact_id,
                    "workflow_id": inp.workflow_id,
                    "status": inp.status,
                    "step": inp.step,
                    "exit_reason": inp.exit_reason,
                    "waiting_for": None if inp.waiting_for is None else json.dumps(inp.waiting_for),
                    "visits": json.dumps(inp.visits),
                    "goal_reached_at": inp.goal_reached_at,
                    "trigger_event_id": inp.trigger_event_id,
                    "now": utcnow(),
                    "ended": ended,
                    "seqs": [r.seq for r in records],
                    "steps": [r.step for r in records],
                    "visit_nos": [r.visit for r in records],
                    "actions": [r.action for r in records],
                    "outcomes": [r.outcome for r in records],
                    "ats": [r.at for r in records],
                },
            )
            before = result.scalar()
            if records:
                await on_steps_recorded(s, inp.run_id, records)
            # Report counters move in the same transaction; both calls are retry-safe.
            await rollup_runs_locked(s, ids([inp.run_id]))
            # Ended runs re-check every time (a retry after a failed check must not skip it).
            changed = before is None or before != inp.status or ended
            recheck = changed and await self._segments_to_recheck(s, inp)
            await s.commit()
            if recheck:
                await self._run_status_changed(s, inp)


# The run row, its new step_log rows and the lock of its report state row in one
# statement (text(): no ORM statement building per call), returning the status the run
# had before. A retried call is a no-op for step_log rows already written (seq); a
# conversion is recorded once, a later write never clears or moves it. The report state
# row is made to exist and locked here (services.report_rollup._lock does the same), so
# the run counters' statement that follows reads a snapshot taken after the lock.
_RECORD = text("""\
WITH old AS (SELECT status FROM run WHERE id = :id),
up AS (
  INSERT INTO run AS r (id, journey_key, version, contact_id, workflow_id, status, step,
                        exit_reason, waiting_for, visits, goal_reached_at, started_at,
                        ended_at, trigger_event_id)
  VALUES (:id, :journey_key, :version, :contact_id, :workflow_id, :status, :step,
          :exit_reason, CAST(:waiting_for AS jsonb), CAST(:visits AS jsonb),
          :goal_reached_at, :now, CASE WHEN :ended THEN CAST(:now AS timestamptz) END,
          :trigger_event_id)
  ON CONFLICT (id) DO UPDATE SET
    journey_key = EXCLUDED.journey_key, version = EXCLUDED.version,
    contact_id = EXCLUDED.contact_id, workflow_id = EXCLUDED.workflow_id,
    status = EXCLUDED.status, step = EXCLUDED.step, exit_reason = EXCLUDED.exit_reason,
    waiting_for = EXCLUDED.waiting_for, visits = EXCLUDED.visits,
    ended_at = EXCLUDED.ended_at,
    goal_reached_at = coalesce(r.goal_reached_at, EXCLUDED.goal_reached_at),
    -- what started the run is written once (by this record or by event dispatch)
    trigger_event_id = coalesce(r.trigger_event_id, EXCLUDED.trigger_event_id)
  RETURNING 1
), logged AS (
  INSERT INTO step_log (run_id, seq, journey_key, version, contact_id, step, visit, action,
                        outcome, at)
  SELECT :id, x.seq, :journey_key, :version, :contact_id, x.step, x.visit, x.action,
         x.outcome, x.at
  FROM unnest(CAST(:seqs AS int[]), CAST(:steps AS text[]), CAST(:visit_nos AS int[]),
              CAST(:actions AS text[]), CAST(:outcomes AS text[]),
              CAST(:ats AS timestamptz[])) AS x(seq, step, visit, action, outcome, at)
  ON CONFLICT ON CONSTRAINT uq_step_log_seq DO NOTHING
  RETURNING 1
), locked AS (
  INSERT INTO report_run_state (run_id) VALUES (:id)
  ON CONFLICT (run_id) DO UPDATE SET run_id = EXCLUDED.run_id
  RETURNING 1
)
SELECT (SELECT status FROM old) AS before""")
