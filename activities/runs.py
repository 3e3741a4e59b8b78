"""Recording what runs do: the run row (current step, status) and its step log."""

from __future__ import annotations

import json
from typing import Any

from psycopg.pq import TransactionStatus
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from activities.sql_batch import Rows, Statement, first, run_transaction
from core.config import Settings
from core.db import Database
from core.models import utcnow
from services.report_rollup import RUNS_ROLLUP_ONE, STEPS_ROLLUP_OF_RUN
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
        statements: list[Statement] = [(_RECORD, _record_params(inp, ended))]
        if records:
            statements.append(
                (STEPS_ROLLUP_OF_RUN, {"run_id": inp.run_id, "seqs": [r.seq for r in records]})
            )
        # Report counters move in the same transaction; both statements are retry-safe.
        statements.append((RUNS_ROLLUP_ONE, {"run_id": inp.run_id}))
        if ended and self.settings is not None:
            # Ended runs re-check every time (a retry after a failed check must not skip
            # it): the rule segments are read in the same transaction, so a run no segment
            # watches (the common case) costs nothing more.
            statements.append((_RULE_SEGMENTS, {}))
        async with self.db.engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            try:
                results = await run_transaction(raw, statements)
            finally:
                if raw.info.transaction_status != TransactionStatus.IDLE:
                    await raw.rollback()  # the failed batch's transaction
            before_row = first(results[0])
            before = before_row["before"] if before_row else None
            if ended and self.settings is not None:
                recheck = _watched(results[-1], inp)
            elif before is None or before != inp.status:
                # A started run (or a status the run row did not have): the rare case,
                # read the segment list in a transaction of its own.
                async with AsyncSession(bind=conn, expire_on_commit=False) as s:
                    recheck = await self._segments_to_recheck(s, inp)
                    await s.commit()
            else:
                recheck = False
            if recheck:
                async with AsyncSession(bind=conn, expire_on_commit=False) as s:
                    await self._run_status_changed(s, inp)


def _record_params(inp: RecordInput, ended: bool) -> dict[str, Any]:
    records = inp.records
    return {
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
    }


_RULE_SEGMENTS = "SELECT key, updated_at, rule FROM segment WHERE kind = 'rule' ORDER BY key"


def _watched(rows: Rows | None, inp: RecordInput) -> bool:
    """Whether any rule segment (rows of _RULE_SEGMENTS) reads this journey's runs."""
    if not rows:
        return False
    from services.segment_membership import RuleSegment, affected, compiled_for

    segments = [
        RuleSegment(r["key"], compiled_for(r["key"], r["updated_at"], r["rule"])) for r in rows
    ]
    return bool(affected(segments, {f"journey:{inp.journey_key}"}))


# The run row, its new step_log rows and the lock of its report state row in one
# statement (driver-level SQL: no ORM statement building per call), returning the status the run
# had before. A retried call is a no-op for step_log rows already written (seq); a
# conversion is recorded once, a later write never clears or moves it. The report state
# row is made to exist and locked here (services.report_rollup._lock does the same), so
# the run counters' statement that follows reads a snapshot taken after the lock.
_RECORD = """\
WITH old AS (SELECT status FROM run WHERE id = %(id)s),
up AS (
  INSERT INTO run AS r (id, journey_key, version, contact_id, workflow_id, status, step,
                        exit_reason, waiting_for, visits, goal_reached_at, started_at,
                        ended_at, trigger_event_id)
  VALUES (%(id)s, %(journey_key)s, %(version)s, %(contact_id)s, %(workflow_id)s, %(status)s,
          %(step)s, %(exit_reason)s, CAST(%(waiting_for)s AS jsonb), CAST(%(visits)s AS jsonb),
          %(goal_reached_at)s, %(now)s,
          CASE WHEN %(ended)s THEN CAST(%(now)s AS timestamptz) END, %(trigger_event_id)s)
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
  SELECT %(id)s, x.seq, %(journey_key)s, %(version)s, %(contact_id)s, x.step, x.visit,
         x.action, x.outcome, x.at
  FROM unnest(CAST(%(seqs)s AS int[]), CAST(%(steps)s AS text[]), CAST(%(visit_nos)s AS int[]),
              CAST(%(actions)s AS text[]), CAST(%(outcomes)s AS text[]),
              CAST(%(ats)s AS timestamptz[])) AS x(seq, step, visit, action, outcome, at)
  ON CONFLICT ON CONSTRAINT uq_step_log_seq DO NOTHING
  RETURNING 1
), locked AS (
  INSERT INTO report_run_state (run_id) VALUES (%(id)s)
  ON CONFLICT (run_id) DO UPDATE SET run_id = EXCLUDED.run_id
  RETURNING 1
)
SELECT (SELECT status FROM old) AS before"""
