"""A transaction of driver-level statements sent to PostgreSQL as one message.

The hot path's transactions (activities/sending.py, activities/runs.py) are a few
statements each, known in advance. psycopg's pipeline mode still queues, flushes and
awaits them one by one (a socket write and an event-loop wait per statement), which
profiled as a third of the send activity's CPU. Here they go out as one simple-protocol
Query:

    [PREPARE jr_<hash> AS <statement>; ...] BEGIN; EXECUTE jr_<hash>(<values>); ...;
    COMMIT[; <after-commit statement>]

Each statement is prepared on the connection with its first use (so PostgreSQL parses
it once per connection, as with psycopg's automatic preparation); the values are bound
client-side by psycopg's ClientCursor (literals escaped by libpq for the connection).
PostgreSQL runs the statements one after another, each with its own snapshot (READ
COMMITTED), as when sent one by one. The first failing statement aborts the rest of the
message and its transaction (rolled back here before the error is raised); statements
after the COMMIT run only if the transaction committed. After a failure the
connection's statements are deallocated and prepared again with their next use (a
statement whose plan went stale, e.g. a column added under `SELECT *`, fails once).

Statements are joined with STATEMENT_SEPARATOR (the statement-budget test splits on it
to count them).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import AsyncClientCursor
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

Statement = tuple[str, Mapping[str, Any] | None]
Rows = list[dict[str, Any]]

STATEMENT_SEPARATOR = ";\n"

log = logging.getLogger("journeys.sql_batch")


async def run_transaction(
    raw: Any, statements: Sequence[Statement], *, after_commit: Sequence[Statement] = ()
) -> list[Rows | None]:
    """BEGIN, `statements`, COMMIT, then `after_commit` (each in its own implicit
    transaction: a lock release), in one round trip on the psycopg connection `raw`,
    which must have no transaction open. Returns each statement's rows (None for a
    statement that returns none), `statements` then `after_commit`.

    Each statement is a server-side prepared statement of the connection (PREPARE sent
    with its first use, then EXECUTE with the values bound client-side), so PostgreSQL
    parses it once per connection rather than per send, as psycopg's automatic
    preparation did for the extended protocol."""
    if raw.info.transaction_status != TransactionStatus.IDLE:
        # A transaction is open on this connection (an ORM session's): BEGIN would fail.
        raise RuntimeError("batched transaction inside an open transaction")
    # In autocommit mode, or psycopg would send a BEGIN of its own first (a round trip).
    autocommit = raw.autocommit
    if not autocommit:
        await raw.set_autocommit(True)
    try:
        try:
            out = await _run(raw, statements, after_commit)
        except psycopg.errors.InvalidSqlStatementName:
            # One of our statements is gone: psycopg sends DEALLOCATE ALL after a ROLLBACK,
            # DROP or ALTER on a connection where it prepared statements of its own. The
            # EXECUTE failed inside the transaction, so nothing of it happened (the
            # after-commit statements are never prepared): prepare afresh, once.
            log.info("prepared statements of a connection were deallocated; preparing again")
            await raw.rollback()
            out = await _run(raw, statements, after_commit)
    finally:
        if raw.info.transaction_status != TransactionStatus.IDLE:
            await raw.rollback()  # a statement failed: its transaction is aborted
        if not autocommit:
            await raw.set_autocommit(False)
    wanted = len(statements) + len(after_commit)
    if len(out) != wanted:  # a statement we were given held more than one statement
        raise RuntimeError(f"expected {wanted} results from the batch, got {len(out)}")
    return out


_PREFIX = "jr_"
# The names of our statements prepared on each psycopg connection (psycopg's own
# prepared statements, _pg3_*, are its business). Dropped when unknown.
# None: unknown (a batch failed). Absent: a connection new to us.
_prepared: weakref.WeakKeyDictionary[Any, set[str] | None] = weakref.WeakKeyDictionary()
_NEW: set[str] = set()
_PLACEHOLDER = re.compile(r"%%|%\((\w+)\)s")


async def _ours_on(raw: Any) -> list[str]:
    """Our statements prepared on this connection (asked after a batch failed; in
    autocommit mode, so no transaction is left open)."""
    async with raw.cursor() as cur:
        await cur.execute(
            "SELECT name FROM pg_prepared_statements WHERE starts_with(name, %s)", [_PREFIX]
        )
        return [row[0] for row in await cur.fetchall()]


@functools.lru_cache(maxsize=256)
def _prepared_form(sql: str) -> tuple[str, str, tuple[str, ...]]:
    """(statement name, SQL with $n parameters, parameter names in $n order)."""
    names: list[str] = []

    def number(m: re.Match[str]) -> str:
        if m.group(1) is None:
            return "%"
        if m.group(1) not in names:
            names.append(m.group(1))
        return f"${names.index(m.group(1)) + 1}"

    positional = _PLACEHOLDER.sub(number, sql)
    name = _PREFIX + hashlib.sha256(sql.encode()).hexdigest()[:20]
    return name, positional, tuple(names)


async def _run(
    raw: Any, statements: Sequence[Statement], after_commit: Sequence[Statement]
) -> list[Rows | None]:
    stale: list[str] = []
    prepared = _prepared.get(raw, _NEW)
    if prepared is None:
        # A batch failed midway: which of its PREPAREs ran is unknown, and a statement
        # may have failed because its plan went stale (a column added under it). Start
        # this connection's statements afresh.
        stale = await _ours_on(raw)
        prepared = set()
    elif prepared is _NEW:
        prepared = set()  # a connection new to us: its session has none of ours
    cur = AsyncClientCursor(raw, row_factory=dict_row)
    new: dict[str, str] = {}
    body: list[str] = []
    for sql, params in statements:
        name, positional, names = _prepared_form(sql)
        if name not in prepared:
            new[name] = positional
        call = f"EXECUTE {name}"
        if names:
            call += "(" + ", ".join(f"%({n})s" for n in names) + ")"
        body.append(cur.mogrify(call, params or {}))
    body.append("COMMIT")
    # Not prepared: a failure after the COMMIT must not be mistaken for one before it.
    body.extend(cur.mogrify(sql, params or {}) for sql, params in after_commit)
    parts = [f"DEALLOCATE {name}" for name in stale]
    parts += [f"PREPARE {name} AS {sql}" for name, sql in new.items()]
    skip = len(parts) + 1  # those and BEGIN: no rows wanted
    parts.append("BEGIN")
    parts.extend(body)
    commit_at = skip + len(statements)
    async with cur:
        try:
            await cur.execute(STATEMENT_SEPARATOR.join(parts))
        except BaseException:
            _prepared[raw] = None
            raise
        _prepared[raw] = prepared | new.keys()
        out: list[Rows | None] = []
        # Results: DEALLOCATEs, PREPAREs, BEGIN, each statement, COMMIT, each after-commit one.
        index = 0
        while True:
            if index >= skip and index != commit_at:
                out.append(await cur.fetchall() if cur.description is not None else None)
            index += 1
            if not cur.nextset():
                break
    return out


def first(rows: Rows | None) -> dict[str, Any] | None:
    return rows[0] if rows else None
