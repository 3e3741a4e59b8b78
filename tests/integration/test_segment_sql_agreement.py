"""The SQL a rule segment compiles to agrees with the Python evaluator journeys use
(dsl.conditions.evaluate) on tricky values: numbers in text, leading zeros, boolean words,
dates and datetimes with offsets, impossible dates, lists, nulls, mixed types."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any

from pydantic import TypeAdapter

from core.db import Database
from dsl.conditions import SnapshotContext, evaluate
from dsl.model import Condition, ConditionUnion
from services.segment_sql import compile_rule, statement

CONDITION: TypeAdapter[ConditionUnion] = TypeAdapter(Condition)
NOW = datetime(2026, 1, 10, 12, tzinfo=UTC)

NUMBERS: list[Any] = [0, 1, -1, 42, 42.0, 7.5, -0.5, 100, 2139, 1e20, 0.1]
STRINGS: list[Any] = [
    "42", " 42 ", "042", "02139", "7.5", "1e3", "+.5", "1.", "abc", "", "ABC", "true", "TRUE",
    " false ", "yes", "2026-01-05", "2026-01-05T10:00:00Z", "2026-01-05T23:30-05:00",
    "2026-01-06", "2026-02-30", "2026-02-29", "2024-02-29", "2026-01-05 10:00",
    "2026-01-05T10:00:00.1234567+12:60", "2026-01-05T10:00+24:00", "2026-13-01",
    "2026-01-05T00:30+01:00", "2026-01-04T23:59:59.999999", "10", "9", "b", "a", "é", "Z",
    "1e400", "needs follow-up", "follow", "\u00a042\u2003",
]
BOOLS: list[Any] = [True, False]
LISTS: list[Any] = [["a", "b"], [1, 2], ["42"], [], ["2026-01-05"], ["true", "x"], [7.5, "abc"]]
MISSING = object()
STORED: list[Any] = NUMBERS + STRINGS + BOOLS + LISTS + [None, {"a": 1}, MISSING]
SCALARS: list[Any] = NUMBERS + STRINGS + BOOLS


def _date_like(rng: random.Random) -> str:
    """Valid and impossible dates and datetimes, with every separator and offset form."""
    text = (
        f"{rng.choice([1999, 2000, 2024, 2026, 2100]):04d}-{rng.randint(0, 13):02d}-"
        f"{rng.randint(0, 32):02d}"
    )
    if rng.random() < 0.6:
        text += f"{rng.choice('T ')}{rng.randint(0, 25):02d}:{rng.randint(0, 61):02d}"
        if rng.random() < 0.6:
            text += f":{rng.randint(0, 60):02d}"
            if rng.random() < 0.5:
                text += rng.choice(".,") + "".join(rng.choices("0123456789", k=rng.randint(1, 8)))
        offset = rng.random()
        if offset < 0.3:
            text += "Z"
        elif offset < 0.7:
            sep = rng.choice([":", ""])
            text += f"{rng.choice('+-')}{rng.randint(0, 25):02d}{sep}{rng.randint(0, 99):02d}"
        elif offset < 0.8:
            text += f"{rng.choice('+-')}{rng.randint(0, 25):02d}"
    return text


def _cases(count: int, seed: int) -> list[tuple[Any, dict[str, Any]]]:
    rng = random.Random(seed)
    cases: list[tuple[Any, dict[str, Any]]] = []
    for _ in range(count):
        if rng.random() < 0.3:
            when = _date_like(rng)
            op = rng.choice(["eq", "ne", "gt", "gte", "lt", "lte"])
            cases.append((when, {"attr": "x", "op": op, "value": _date_like(rng)}))
            continue
        op = rng.choice(["eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "contains",
                         "exists"])
        if op in ("eq", "ne"):
            value: Any = rng.choice(SCALARS + LISTS)
        elif op in ("gt", "gte", "lt", "lte"):
            value = rng.choice(NUMBERS + STRINGS)
        elif op in ("in", "not_in"):
            value = rng.sample(SCALARS, rng.randint(0, 3))
        elif op == "contains":
            value = rng.choice(SCALARS)
        else:
            value = rng.choice([None, True, False])
        condition = {"attr": "x", "op": op, "value": value}
        if op == "exists" and value is None:
            del condition["value"]
        cases.append((rng.choice(STORED), condition))
    return cases


async def _sql_says(db: Database, stored: Any, rule: ConditionUnion) -> bool:
    compiled = compile_rule(rule)
    attributes = {} if stored is MISSING else {"x": stored}
    params = compiled.bind(NOW) | {"attrs": json.dumps(attributes)}
    sql = (
        f"SELECT {compiled.predicate} FROM (SELECT CAST(:attrs AS jsonb) AS attributes, "
        "'c_test' AS id) c"
    )
    async with db.session() as s:
        result = await s.exec(statement(sql, params))  # type: ignore[call-overload]
        return bool(result.scalar_one())


def _context(stored: Any) -> SnapshotContext:
    attributes = {} if stored is MISSING else {"x": stored}
    return SnapshotContext(attributes=attributes, segments=set(), now=NOW)


async def test_sql_agrees_with_the_evaluator(db: Database) -> None:
    disagreements = []
    for stored, raw in _cases(1000, seed=7):
        rule = CONDITION.validate_python(raw)
        python = evaluate(rule, _context(stored))
        sql = await _sql_says(db, stored, rule)
        if python != sql:
            disagreements.append((stored, raw, python, sql))
    assert not disagreements, disagreements[:10]


async def test_combinators_and_negation_agree(db: Database) -> None:
    rng = random.Random(11)
    disagreements = []
    for _ in range(200):
        (stored, a), (_, b) = _cases(2, seed=rng.randint(0, 10**6))
        raw = rng.choice([{"all": [a, b]}, {"any": [a, b]}, {"not": {"any": [a, {"not": b}]}}])
        rule = CONDITION.validate_python(raw)
        python = evaluate(rule, _context(stored))
        sql = await _sql_says(db, stored, rule)
        if python != sql:
            disagreements.append((stored, raw, python, sql))
    assert not disagreements, disagreements[:10]
