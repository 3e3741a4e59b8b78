"""activities/sql_batch.py: a transaction's statements in one message, each a prepared
statement of the connection; a failing statement rolls the whole transaction back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from psycopg.pq import TransactionStatus

from activities.sql_batch import run_transaction
from core.db import Database


@pytest_asyncio.fixture
async def raw(db: Database) -> AsyncIterator[Any]:
    async with db.engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        await driver.set_autocommit(True)
        await driver.execute("CREATE TEMP TABLE batch_t (a int PRIMARY KEY)")
        await driver.set_autocommit(False)
        try:
            yield driver
        finally:
            # Closed, not pooled: its temp table and prepared statements go with it.
            await conn.invalidate()


async def _count(raw: Any) -> int:
    [rows] = await run_transaction(raw, [("SELECT count(*) AS n FROM batch_t", {})])
    assert rows is not None
    return int(rows[0]["n"])


async def test_statements_and_after_commit_results(raw: Any) -> None:
    out = await run_transaction(
        raw,
        [("INSERT INTO batch_t (a) VALUES (%(a)s) RETURNING a", {"a": 1}),
         ("SELECT %(x)s::text AS x, %(x)s::text || '%%' AS y", {"x": "it's"})],
        after_commit=[("SELECT count(*) AS n FROM batch_t", {})],
    )  # fmt: skip
    assert out == [[{"a": 1}], [{"x": "it's", "y": "it's%"}], [{"n": 1}]]
    assert raw.info.transaction_status == TransactionStatus.IDLE
    assert not raw.autocommit  # as it was


async def test_a_failing_statement_rolls_back_its_transaction(raw: Any) -> None:
    with pytest.raises(psycopg.errors.UniqueViolation):
        await run_transaction(
            raw,
            [("INSERT INTO batch_t (a) VALUES (%(a)s)", {"a": 2}),
             ("INSERT INTO batch_t (a) VALUES (%(a)s)", {"a": 2})],
        )  # fmt: skip
    assert raw.info.transaction_status == TransactionStatus.IDLE
    assert await _count(raw) == 0


async def test_each_statement_is_prepared_once_per_connection(raw: Any) -> None:
    sql = "SELECT %(a)s::int + 1 AS b"
    assert await run_transaction(raw, [(sql, {"a": 1})]) == [[{"b": 2}]]
    cur = await raw.execute(
        "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s", ["%$1::int + 1%"]
    )
    assert (await cur.fetchone())[0] == 1
    await raw.rollback()
    # Again on the same connection: EXECUTE only (a second PREPARE of the name would fail).
    assert await run_transaction(raw, [(sql, {"a": 41})]) == [[{"b": 42}]]


async def test_a_stale_prepared_statement_is_made_again(raw: Any) -> None:
    """A prepared SELECT * fails once its table gained a column ("cached plan must not
    change result type"); the connection's statements are then prepared afresh."""
    sql = "SELECT * FROM batch_t ORDER BY a"
    await run_transaction(raw, [("INSERT INTO batch_t (a) VALUES (%(a)s)", {"a": 3})])
    assert await run_transaction(raw, [(sql, {})]) == [[{"a": 3}]]
    await raw.set_autocommit(True)
    await raw.execute("ALTER TABLE batch_t ADD COLUMN b int")
    await raw.set_autocommit(False)
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        await run_transaction(raw, [(sql, {})])
    assert await run_transaction(raw, [(sql, {})]) == [[{"a": 3, "b": None}]]


async def test_statements_psycopg_deallocated_are_prepared_again(raw: Any) -> None:
    """psycopg sends DEALLOCATE ALL after a ROLLBACK on a connection where it prepared
    statements of its own; the next batch finds its statements gone and makes them again."""
    sql = "SELECT %(a)s::int * 2 AS b"
    assert await run_transaction(raw, [(sql, {"a": 2})]) == [[{"b": 4}]]
    await raw.set_autocommit(True)
    await raw.execute("DEALLOCATE ALL")
    await raw.set_autocommit(False)
    assert await run_transaction(raw, [(sql, {"a": 3})]) == [[{"b": 6}]]
