"""A transaction of driver-level statements sent to PostgreSQL as one message.

The hot path's transactions (activities/sending.py, activities/runs.py) are a few
statements each, known in advance. psycopg's pipeline mode still queues, flushes and
awaits them one by one (a socket write and an event-loop wait per statement), which
profiled as a third of the send activity's CPU. Here the statements, bound client-side
(psycopg's ClientCursor: its literals are escaped by libpq for the connection, as
`mogrify` shows), go out as one simple-protocol Query:

    BEGIN; <statement>; <statement>; COMMIT[; <after-commit statement>]

PostgreSQL runs them one after another, each with its own snapshot (READ COMMITTED), as
when sent one by one. The first failing statement aborts the rest of the message and
its transaction (rolled back here before the error is raised); statements after the
COMMIT run only if the transaction committed.

Statements are joined with STATEMENT_SEPARATOR (the statement-budget test splits on it
to count them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from psycopg import AsyncClientCursor
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

Statement = tuple[str, Mapping[str, Any] | None]
Rows = list[dict[str, Any]]

STATEMENT_SEPARATOR = ";\n"


async def run_transaction(
    raw: Any, statements: Sequence[Statement], *, after_commit: Sequence[Statement] = ()
) -> list[Rows | None]:
    """BEGIN, `statements`, COMMIT, then `after_commit` (each in its own implicit
    transaction: a lock release), in one round trip on the psycopg connection `raw`,
    which must have no transaction open. Returns each statement's rows (None for a
    statement that returns none), `statements` then `after_commit`."""
    if raw.info.transaction_status != TransactionStatus.IDLE:
        # A transaction is open on this connection (an ORM session's): BEGIN would fail.
        raise RuntimeError("batched transaction inside an open transaction")
    cur = AsyncClientCursor(raw, row_factory=dict_row)
    parts = ["BEGIN"]
    parts.extend(cur.mogrify(sql, params or {}) for sql, params in statements)
    parts.append("COMMIT")
    parts.extend(cur.mogrify(sql, params or {}) for sql, params in after_commit)
    # In autocommit mode, or psycopg would send a BEGIN of its own first (a round trip).
    autocommit = raw.autocommit
    if not autocommit:
        await raw.set_autocommit(True)
    try:
        async with cur:
            await cur.execute(STATEMENT_SEPARATOR.join(parts))
            out: list[Rows | None] = []
            # Results: BEGIN, each statement, COMMIT, each after-commit statement.
            index = 0
            while True:
                if 1 <= index <= len(statements) or index > len(statements) + 1:
                    out.append(await cur.fetchall() if cur.description is not None else None)
                index += 1
                if not cur.nextset():
                    break
    finally:
        if raw.info.transaction_status != TransactionStatus.IDLE:
            await raw.rollback()  # a statement failed: its transaction is aborted
        if not autocommit:
            await raw.set_autocommit(False)
    wanted = len(statements) + len(after_commit)
    if len(out) != wanted:  # a statement we were given held more than one statement
        raise RuntimeError(f"expected {wanted} results from the batch, got {len(out)}")
    return out


def first(rows: Rows | None) -> dict[str, Any] | None:
    return rows[0] if rows else None
