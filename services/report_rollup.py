"""Report rollups: counters kept current as runs, sends and tracking verdicts arrive.

Reports read `report_counter` (a few thousand rows per journey) instead of scanning
step_log, send and tracking_event. Every writer calls one of the `on_*` functions
inside its own transaction, before commit, so the counts change atomically with the
data they describe:

- `on_steps_recorded(session, run_id, seqs)`  after step_log rows are written
- `on_run_exit(session, run_id)`              after the run row changes (start, exit, goal)
- `on_send_status(session, send_id)`          after a send's status/delivery/unsubscribe changes
- `on_tracking_verdict(session, event_id, previous_verdict)`
                                              after an open/click is judged or re-judged

Each is idempotent and safe to call again (activity retries, duplicate callbacks):
step_log rows are counted once through `report_step_seen`; runs, sends and tracking
events keep the state they were counted under (`report_*_state`), and a call applies
only the difference between that state and the row as it is now. A revised verdict
therefore moves its counts from the old verdict to the new one, and unique counts are
recomputed for the message from its counted events (`report_unique`), so they stay
exact. Every function works on a set of rows (`Selection`), so a backfill of a whole
journey (`backfill`, `journeys reports backfill`) runs the same SQL as a single event.

Days are UTC calendar days of when the thing happened (step time, send time, event
time; a unique open/click counts on the day of the first event of its class).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Result, text
from sqlmodel.ext.asyncio.session import AsyncSession

SHARDS = 4  # counter rows per key, spread by source id, so concurrent writers rarely wait
KEY = "journey_key, version, step, template_key, metric, verdict, dimension, day, shard"
# Verdict classes a unique count is kept for (besides each verdict itself).
ALL, NON_AUTOMATED = "all", "non_automated"


@dataclass(frozen=True)
class Selection:
    """A SELECT yielding the ids of the raw rows to (re)count, with its bind parameters."""

    sql: str
    params: Mapping[str, Any] = field(default_factory=dict)


def ids(values: Iterable[str]) -> Selection:
    return Selection("SELECT unnest(CAST(:sel_ids AS text[]))", {"sel_ids": list(values)})


def _id(obj: Any) -> str:
    return obj if isinstance(obj, str) else str(obj.id)


def _shard(expr: str) -> str:
    return f"(hashtext({expr}) & {SHARDS - 1})::smallint"


def _upsert(delta: str) -> str:
    """INSERT the net deltas of relation `delta` (KEY columns + n) into the counters.

    Rows are upserted in key order so concurrent writers lock counter rows in the same
    order and cannot deadlock.
    """
    return f"""
INSERT INTO report_counter AS rc ({KEY}, count)
SELECT {KEY}, sum(n) FROM {delta} GROUP BY {KEY} HAVING sum(n) <> 0 ORDER BY {KEY}
ON CONFLICT ({KEY}) DO UPDATE SET count = rc.count + EXCLUDED.count"""


async def run_sql(session: AsyncSession, sql: str, params: Mapping[str, Any]) -> Result[Any]:
    """Raw SQL on the session's connection, inside the caller's transaction."""
    conn = await session.connection()
    return await conn.execute(text(sql), dict(params))


async def _exec(session: AsyncSession, sql: str, sel: Selection) -> None:
    await run_sql(session, sql, sel.params)


# --- steps -------------------------------------------------------------------------

_STEPS = f"""
WITH src AS (
  SELECT l.id, l.journey_key, l.version, l.step, l.visit, l.action, l.outcome,
         (l.at AT TIME ZONE 'UTC')::date AS day
  FROM step_log l WHERE l.id IN ({{sel}})
), fresh AS (
  INSERT INTO report_step_seen (step_log_id) SELECT id FROM src
  ON CONFLICT DO NOTHING RETURNING step_log_id
), d AS (
  SELECT src.journey_key, src.version, src.step, ''::text AS template_key, c.metric,
         ''::text AS verdict, c.dimension, src.day, (src.id % {SHARDS})::smallint AS shard,
         1 AS n
  FROM src JOIN fresh ON fresh.step_log_id = src.id
  CROSS JOIN LATERAL (VALUES
    (CASE src.action WHEN 'entered' THEN 'entries' WHEN 'left' THEN 'left'
                     WHEN 'exited' THEN 'exited' END,
     CASE WHEN src.action IN ('left', 'exited') THEN coalesce(src.outcome, '') ELSE '' END),
    (CASE WHEN src.action = 'entered' AND src.visit = 1 THEN 'entered' END, '')
  ) AS c(metric, dimension)
  WHERE c.metric IS NOT NULL
)
{_upsert("d")}"""


async def rollup_steps(session: AsyncSession, sel: Selection) -> None:
    """Counts step_log rows (ids from `sel`) not counted before.

    entries: every entry; entered: runs entering (first visit); left/exited: by next step
    or exit reason.
    """
    await _exec(session, _STEPS.format(sel=sel.sql), sel)


async def on_steps_recorded(session: AsyncSession, run_id: str, records: Iterable[Any]) -> None:
    """After record_steps wrote step_log rows for these seqs (records or plain ints)."""
    seqs = [r if isinstance(r, int) else int(r.seq) for r in records]
    if seqs:
        await rollup_steps(
            session,
            Selection(
                "SELECT id FROM step_log "
                "WHERE run_id = :sel_run AND seq = ANY(CAST(:sel_seqs AS int[]))",
                {"sel_run": run_id, "sel_seqs": seqs},
            ),
        )


# --- state-diff rollups (runs, sends, tracking events) --------------------------------


def _lock(table: str, pk: str, keys: str) -> list[str]:
    """Make sure each run/send in `keys` has a state row and lock those rows in id order,
    in one statement: ON CONFLICT DO UPDATE locks a row that exists (waiting for a rollup
    in flight to commit), and a row it inserts is its own until commit.

    The lock serialises concurrent rollups of one run/send; the next statement's fresh
    snapshot then sees what a rollup that finished meanwhile stored.
    """
    return [
        f"INSERT INTO {table} ({pk}) SELECT DISTINCT k FROM ({keys}) AS keys(k) "
        f"ORDER BY 1 ON CONFLICT ({pk}) DO UPDATE SET {pk} = EXCLUDED.{pk}",
    ]


# Runs -------------------------------------------------------------------------------

_RUN_NEW = """
  SELECT r.id AS run_id, r.journey_key, r.version,
         (r.started_at AT TIME ZONE 'UTC')::date AS started_day,
         CASE WHEN r.status <> 'running' THEN coalesce(r.exit_reason, r.status) END
           AS exit_reason,
         CASE WHEN r.status <> 'running'
              THEN (coalesce(r.ended_at, now()) AT TIME ZONE 'UTC')::date END AS ended_day,
         (coalesce(r.goal_reached_at, CASE WHEN r.exit_reason = 'goal' THEN r.ended_at END)
           AT TIME ZONE 'UTC')::date AS goal_day
  FROM run r WHERE r.id IN ({sel})"""


def _run_contrib(rel: str, n: int) -> str:
    return f"""
  SELECT x.journey_key, x.version, ''::text AS step, ''::text AS template_key, c.metric,
         ''::text AS verdict, c.dimension, c.day, {_shard("x.run_id")} AS shard, {n} AS n
  FROM {rel} x CROSS JOIN LATERAL (VALUES
    ('run_started', '', x.started_day),
    ('run_exit', coalesce(x.exit_reason, ''), x.ended_day),
    ('goal', '', x.goal_day)
  ) AS c(metric, dimension, day)
  WHERE c.day IS NOT NULL AND x.journey_key IS NOT NULL"""


_RUNS = f"""
WITH new AS ({_RUN_NEW}),
old AS (SELECT * FROM report_run_state WHERE run_id IN (SELECT run_id FROM new)),
upd AS (
  UPDATE report_run_state t SET journey_key = new.journey_key, version = new.version,
    started_day = new.started_day, exit_reason = new.exit_reason,
    ended_day = new.ended_day, goal_day = new.goal_day
  FROM new WHERE t.run_id = new.run_id RETURNING 1
), d AS ({_run_contrib("new", 1)} UNION ALL {_run_contrib("old", -1)})
{_upsert("d")}"""


async def rollup_runs(session: AsyncSession, sel: Selection) -> None:
    """Runs started, ended by exit reason, and goal conversions."""
    for sql in _lock("report_run_state", "run_id", f"SELECT id FROM run WHERE id IN ({sel.sql})"):
        await _exec(session, sql, sel)
    await _exec(session, _RUNS.format(sel=sel.sql), sel)


async def rollup_runs_locked(session: AsyncSession, sel: Selection) -> None:
    """rollup_runs for callers that already made the selected runs' state rows exist and
    locked them in an earlier statement of their transaction (activities.runs does it
    with the run row's upsert); one statement instead of two."""
    await _exec(session, _RUNS.format(sel=sel.sql), sel)


async def on_run_exit(session: AsyncSession, run: Any) -> None:
    """After the run row changed: started, exited (reason) or reached its goal.

    Safe on every run update; only changes are counted.
    """
    await rollup_runs(session, ids([_id(run)]))


# Sends ------------------------------------------------------------------------------

_SEND_NEW = """
  SELECT s.id AS send_id, s.journey_key, s.version, s.step, s.template_key, s.status,
         s.detail, s.delivery,
         (coalesce(s.sent_at, s.created_at) AT TIME ZONE 'UTC')::date AS day,
         (s.unsubscribed_at AT TIME ZONE 'UTC')::date AS unsub_day
  FROM send s WHERE s.id IN ({sel})"""


def _send_contrib(rel: str, n: int) -> str:
    return f"""
  SELECT x.journey_key, x.version, x.step, x.template_key, c.metric, ''::text AS verdict,
         c.dimension, c.day, {_shard("x.send_id")} AS shard, {n} AS n
  FROM {rel} x CROSS JOIN LATERAL (VALUES
    (CASE WHEN x.status IN ('sent', 'blocked', 'failed', 'uncertain') THEN x.status END,
     CASE WHEN x.status IN ('blocked', 'failed') THEN coalesce(x.detail, 'unknown') ELSE '' END,
     x.day),
    (CASE WHEN x.status = 'sent' THEN
       CASE WHEN x.delivery = 'bounced' THEN 'bounced' ELSE 'delivered' END END, '', x.day),
    (CASE WHEN x.status = 'sent' AND x.delivery = 'complained' THEN 'complained' END,
     '', x.day),
    (CASE WHEN x.unsub_day IS NOT NULL THEN 'unsubscribed' END, '', x.unsub_day)
  ) AS c(metric, dimension, day)
  WHERE c.metric IS NOT NULL AND x.journey_key IS NOT NULL"""


_SENDS = f"""
WITH new AS ({_SEND_NEW}),
old AS (SELECT * FROM report_send_state WHERE send_id IN (SELECT send_id FROM new)),
upd AS (
  UPDATE report_send_state t SET journey_key = new.journey_key, version = new.version,
    step = new.step, template_key = new.template_key, status = new.status,
    detail = new.detail, delivery = new.delivery, day = new.day, unsub_day = new.unsub_day
  FROM new WHERE t.send_id = new.send_id RETURNING 1
), d AS ({_send_contrib("new", 1)} UNION ALL {_send_contrib("old", -1)})
{_upsert("d")}"""


async def rollup_sends(session: AsyncSession, sel: Selection) -> None:
    """sent / blocked (by reason) / failed / uncertain; delivered, bounced, complained;
    unsubscribed through the message."""
    for sql in _lock(
        "report_send_state", "send_id", f"SELECT id FROM send WHERE id IN ({sel.sql})"
    ):
        await _exec(session, sql, sel)
    await _exec(session, _SENDS.format(sel=sel.sql), sel)


# The send counters' statement for one send whose state row the caller already made exist
# and locked earlier in its transaction (the send path does it with its status update,
# activities.sending): driver-level SQL (psycopg's %(send_id)s parameter), for the send
# path's batched transactions (activities/sql_batch.py).
SEND_ROLLUP_ONE = _SENDS.format(sel="SELECT CAST(%(send_id)s AS text)")

# The same for record_steps (activities.runs): the step counters of one run's new step_log
# rows (by seq), and the run counters of a run whose state row it locked with the run row.
# ('%' doubled: psycopg's parameter syntax.)
STEPS_ROLLUP_OF_RUN = _STEPS.replace("%", "%%").format(
    sel="SELECT id FROM step_log WHERE run_id = %(run_id)s AND seq = ANY(CAST(%(seqs)s AS int[]))"
)
RUNS_ROLLUP_ONE = _RUNS.replace("%", "%%").format(sel="SELECT CAST(%(run_id)s AS text)")


async def on_send_status(session: AsyncSession, send: Any) -> None:
    """After a send's status, delivery (bounced/complained) or unsubscribed_at changed."""
    await rollup_sends(session, ids([_id(send)]))


# Tracking events --------------------------------------------------------------------

_EVENT_NEW = """
  SELECT te.id AS event_id, te.send_id, s.journey_key, s.version, s.step, s.template_key,
         te.kind, te.verdict, te.reason, te.link, (te.at AT TIME ZONE 'UTC')::date AS day
  FROM tracking_event te JOIN send s ON s.id = te.send_id
  WHERE te.id IN ({sel}) AND te.verdict IS NOT NULL AND te.kind IN ('open', 'click')"""


def _event_contrib(rel: str, n: int) -> str:
    return f"""
  SELECT x.journey_key, x.version, x.step, x.template_key, c.metric, x.verdict,
         c.dimension, x.day, {_shard("x.send_id")} AS shard, {n} AS n
  FROM {rel} x CROSS JOIN LATERAL (VALUES
    (x.kind, coalesce(x.reason, '')),
    (CASE WHEN x.kind = 'click' THEN 'click_link' END, coalesce(x.link, ''))
  ) AS c(metric, dimension)
  WHERE c.metric IS NOT NULL"""


_EVENTS = f"""
WITH new AS ({_EVENT_NEW}),
old AS (SELECT * FROM report_tracking_state WHERE event_id IN ({{sel}})),
gone AS (
  DELETE FROM report_tracking_state
  WHERE event_id IN (SELECT event_id FROM old EXCEPT SELECT event_id FROM new) RETURNING 1
), put AS (
  INSERT INTO report_tracking_state
    (event_id, send_id, journey_key, version, step, template_key, kind, verdict, reason, link, day)
  SELECT event_id, send_id, journey_key, version, step, template_key, kind, verdict, reason,
         link, day FROM new
  ON CONFLICT (event_id) DO UPDATE SET verdict = EXCLUDED.verdict, reason = EXCLUDED.reason,
    link = EXCLUDED.link, day = EXCLUDED.day, kind = EXCLUDED.kind
  RETURNING 1
), d AS ({_event_contrib("new", 1)} UNION ALL {_event_contrib("old", -1)})
{_upsert("d")}"""

# Unique opens/clicks per send, per verdict class and per link, recomputed for the sends
# touched from their counted events; the day is the first event's day in that class.
_UNIQUE_NEW = """
  SELECT t.send_id, t.kind, v.vclass, l.link, t.journey_key, t.version, t.step,
         t.template_key, min(t.day) AS day
  FROM report_tracking_state t
  CROSS JOIN LATERAL unnest(
    ARRAY[t.verdict, 'all']
    || CASE WHEN t.verdict <> 'automated' THEN ARRAY['non_automated'] ELSE ARRAY[]::text[] END
  ) AS v(vclass)
  CROSS JOIN LATERAL unnest(
    CASE WHEN t.kind = 'click' THEN ARRAY['', coalesce(t.link, '')] ELSE ARRAY[''] END
  ) AS l(link)
  WHERE t.send_id IN ({sends})
  GROUP BY t.send_id, t.kind, v.vclass, l.link, t.journey_key, t.version, t.step,
           t.template_key"""


def _unique_contrib(rel: str, n: int) -> str:
    return f"""
  SELECT x.journey_key, x.version, x.step, x.template_key,
         CASE WHEN x.link = '' THEN 'unique_' || x.kind ELSE 'unique_click_link' END AS metric,
         x.vclass AS verdict, x.link AS dimension, x.day, {_shard("x.send_id")} AS shard,
         {n} AS n
  FROM {rel} x"""


_UNIQUES = f"""
WITH new AS ({_UNIQUE_NEW}),
old AS (SELECT * FROM report_unique WHERE send_id IN ({{sends}})),
gone AS (
  DELETE FROM report_unique u USING (
    SELECT send_id, kind, vclass, link FROM old
    EXCEPT SELECT send_id, kind, vclass, link FROM new
  ) g
  WHERE (u.send_id, u.kind, u.vclass, u.link) = (g.send_id, g.kind, g.vclass, g.link)
  RETURNING 1
), put AS (
  INSERT INTO report_unique
    (send_id, kind, vclass, link, journey_key, version, step, template_key, day)
  SELECT send_id, kind, vclass, link, journey_key, version, step, template_key, day FROM new
  ON CONFLICT (send_id, kind, vclass, link) DO UPDATE SET day = EXCLUDED.day
  RETURNING 1
), d AS ({_unique_contrib("new", 1)} UNION ALL {_unique_contrib("old", -1)})
{_upsert("d")}"""


async def rollup_tracking(session: AsyncSession, sel: Selection) -> None:
    """Opens and clicks by verdict and reason, clicks by link, and exact unique counts.

    Events without a verdict yet are not counted; a verdict that changes moves its counts.
    """
    sends = f"SELECT send_id FROM tracking_event WHERE id IN ({sel.sql})"
    for sql in _lock("report_send_state", "send_id", sends):
        await _exec(session, sql, sel)
    await _exec(session, _EVENTS.format(sel=sel.sql), sel)
    await _exec(session, _UNIQUES.format(sends=sends), sel)


# The same three statements as rollup_tracking for a list of tracking_event ids, at driver
# level (psycopg's %(event_ids)s parameter, a text[]), for callers that run their own
# statements on a psycopg connection inside their transaction (the judge's batched
# transaction, services.tracking_judge). The first locks the sends' state rows; each runs
# with its own snapshot, as rollup_tracking's do.
_EVENT_IDS = "SELECT unnest(CAST(%(event_ids)s AS text[]))"
_EVENT_SENDS = f"SELECT send_id FROM tracking_event WHERE id IN ({_EVENT_IDS})"
TRACKING_ROLLUP_OF_EVENTS: tuple[str, ...] = (
    *_lock("report_send_state", "send_id", _EVENT_SENDS),
    _EVENTS.replace("%", "%%").format(sel=_EVENT_IDS),
    _UNIQUES.replace("%", "%%").format(sends=_EVENT_SENDS),
)


async def on_tracking_verdict(
    session: AsyncSession, event: Any, previous_verdict: str | None = None
) -> None:
    """After an open/click was judged (previous_verdict None) or re-judged.

    `previous_verdict` documents the caller's intent; the counted state in
    `report_tracking_state` is what is moved, so a repeated or out-of-order call is harmless.
    """
    await rollup_tracking(session, ids([_id(event)]))


# --- whole journeys -------------------------------------------------------------------


async def backfill(session: AsyncSession, journey_key: str) -> None:
    """Counts every raw row of a journey not counted yet (or counted under an older state).

    The same SQL as the per-event hooks, over the whole journey: use it after importing
    data or to catch up rows written before a writer called its hook. Idempotent.
    """
    p = {"sel_journey": journey_key}
    await rollup_steps(
        session, Selection("SELECT id FROM step_log WHERE journey_key = :sel_journey", p)
    )
    await rollup_runs(session, Selection("SELECT id FROM run WHERE journey_key = :sel_journey", p))
    await rollup_sends(
        session, Selection("SELECT id FROM send WHERE journey_key = :sel_journey", p)
    )
    await rollup_tracking(
        session,
        Selection(
            "SELECT te.id FROM tracking_event te JOIN send s ON s.id = te.send_id "
            "WHERE s.journey_key = :sel_journey",
            p,
        ),
    )
