"""CONDITION -> SQL, so a rule segment is evaluated inside PostgreSQL: a full (re)build over
every contact is one INSERT ... SELECT and re-checking one contact is one indexed query.

The SQL agrees with dsl.conditions.evaluate (the Python evaluator journeys use), including
dsl.compare's typing rules: a side is read as a number or a date when the other side is one,
booleans also match "true"/"false" text, strings order by code point, mismatched types are
unequal and unordered (tests/integration/test_segment_sql_agreement.py checks this against
the evaluator on generated values). Everything that could fail to cast is guarded by a
regular expression and range checks first, so odd stored data never makes a query fail.

Known, deliberate differences (values no real data holds): numbers beyond double precision
or with a 5-digit exponent, and whitespace other than Unicode's isspace set in padding.

Time: every `within` bound is computed from a `now` parameter, never the database clock, so
the same rule can be evaluated at any instant (the sweep and the tests pass their clock).
`recheck` is the instant the result can next change by time alone: for each `within` atom
that is true now, when its newest matching occurrence ages out.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import TextClause, text

from dsl.compare import _number as _py_number  # the evaluator's own reading of numbers
from dsl.compare import _temporal as _py_temporal
from dsl.durations import Duration, parse_duration
from dsl.model import (
    AllCondition,
    AnyCondition,
    AttrCondition,
    ConditionUnion,
    EngagedCondition,
    EngagementCondition,
    EventCondition,
    JourneyCondition,
    NotCondition,
    SegmentCondition,
)


class RuleNotSupported(ValueError):
    """A condition that has no meaning for a segment (e.g. `engaged`, which is run-scoped)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


# Python's str.strip() removes every character for which isspace() is true.
_WHITESPACE = "".join(ch for ch in map(chr, range(sys.maxunicode + 1)) if ch.isspace())
_RE_NUMBER = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?0*[0-9]{1,4})?$"
_RE_DATE = r"^([0-9]{4})-([0-9]{2})-([0-9]{2})$"
_RE_DATETIME = (
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})[T ]([0-9]{2}):([0-9]{2})"
    r"(:([0-9]{2})([.,]([0-9]+))?)?(Z|([+-])([0-9]{2})(:?([0-9]{2}))?)?$"
)
_MAX_FLOAT = "1.7976931348623157e308"

# Fixed parameters every compiled rule uses (bound once per statement).
FIXED_PARAMS: dict[str, Any] = {
    "ws": _WHITESPACE,
    "re_num": _RE_NUMBER,
    "re_date": _RE_DATE,
    "re_dt": _RE_DATETIME,
}


@dataclass
class CompiledRule:
    predicate: str  # SQL boolean over contact alias `c`, never NULL
    recheck: str | None  # SQL timestamptz (NULL: no time-based change ahead), or None
    params: dict[str, Any]
    windows: dict[str, Duration] = field(default_factory=dict)  # since-param -> duration
    deps: list[str] = field(default_factory=list)

    def bind(self, now: datetime) -> dict[str, Any]:
        """All parameters for evaluating the rule at `now`."""
        now = now.astimezone(UTC)
        values = {**FIXED_PARAMS, **self.params, "now": now}
        for name, duration in self.windows.items():
            values[name] = (-duration).add_to(now)
        return values


class _Compiler:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.params: dict[str, Any] = {}
        self.windows: dict[str, Duration] = {}
        self.deps: set[str] = set()
        self.rechecks: list[str] = []

    def param(self, value: Any, cast: str | None = None) -> str:
        name = f"{self.prefix}{len(self.params)}"
        self.params[name] = value
        return f"CAST(:{name} AS {cast})" if cast else f":{name}"

    def window(self, within: str) -> tuple[str, Duration]:
        duration = parse_duration(within)
        name = f"{self.prefix}w{len(self.windows)}"
        self.windows[name] = duration
        return f"CAST(:{name} AS timestamptz)", duration

    # --- tree ----------------------------------------------------------------------------

    def condition(self, node: ConditionUnion, path: str) -> str:
        if isinstance(node, AttrCondition):
            self.deps.add(f"attr:{node.attr}")
            return f"COALESCE({self.attr(node)}, false)"
        if isinstance(node, SegmentCondition):
            self.deps.add(f"segment:{node.segment}")
            key = self.param(node.segment, "text")
            return (
                "EXISTS (SELECT 1 FROM segment_membership sm "
                f"WHERE sm.segment_key = {key} AND sm.contact_id = c.id)"
            )
        if isinstance(node, EventCondition):
            self.deps.add(f"event:{node.event}")
            return self.event(node)
        if isinstance(node, EngagementCondition):
            self.deps.add("engagement")
            return self.engagement(node)
        if isinstance(node, JourneyCondition):
            self.deps.add(f"journey:{node.journey}")
            key = self.param(node.journey, "text")
            running = (
                "EXISTS (SELECT 1 FROM run r WHERE r.contact_id = c.id "
                f"AND r.journey_key = {key} AND r.status = 'running')"
            )
            return running if node.in_ else f"NOT {running}"
        if isinstance(node, AllCondition):
            parts = [self.condition(p, f"{path}.all[{i}]") for i, p in enumerate(node.all_)]
            return "(" + " AND ".join(parts) + ")"
        if isinstance(node, AnyCondition):
            parts = [self.condition(p, f"{path}.any[{i}]") for i, p in enumerate(node.any_)]
            return "(" + " OR ".join(parts) + ")"
        if isinstance(node, NotCondition):
            return f"(NOT {self.condition(node.not_, f'{path}.not')})"
        if isinstance(node, EngagedCondition):
            raise RuleNotSupported(
                f"{path}.engaged",
                "engaged names a send step of a run; in a segment use "
                '{"engagement": "open"|"click", "journey": KEY, "step": STEP, "within": ...}',
            )
        raise RuleNotSupported(path, "unsupported condition")

    # --- behaviour -----------------------------------------------------------------------

    def _timed(self, within: str | None, column: str, source: str) -> str:
        """EXISTS over source (rows of the contact), within a window ending at now; a window
        adds a recheck when its newest row ages out."""
        if within is None:
            return f"EXISTS (SELECT 1 {source})"
        since, duration = self.window(within)
        self.rechecks.append(
            f"(SELECT CASE WHEN m.v >= {since} THEN GREATEST("
            f"(m.v AT TIME ZONE 'UTC' + {_interval(duration)}) AT TIME ZONE 'UTC', "
            f"CAST(:now AS timestamptz)) END FROM (SELECT max({column}) AS v {source}) m)"
        )
        return f"EXISTS (SELECT 1 {source} AND {column} >= {since})"

    def event(self, node: EventCondition) -> str:
        name = self.param(node.event, "text")
        source = f"FROM event e WHERE e.contact_id = c.id AND e.name = {name}"
        return self._timed(node.within, "e.occurred_at", source)

    def engagement(self, node: EngagementCondition) -> str:
        kind = self.param(node.engagement, "text")
        source = (
            "FROM tracking_event te JOIN send s ON s.id = te.send_id "
            f"WHERE s.contact_id = c.id AND te.kind = {kind} AND te.verdict = 'human'"
        )
        if node.journey is not None:
            source += f" AND s.journey_key = {self.param(node.journey, 'text')}"
        if node.step is not None:
            source += f" AND s.step = {self.param(node.step, 'text')}"
        if node.link is not None:
            source += f" AND te.link = {self.param(node.link, 'text')}"
        return self._timed(node.within, "te.at", source)

    # --- attributes ----------------------------------------------------------------------

    def attr(self, node: AttrCondition) -> str:
        name = self.param(node.attr, "text")
        x = f"(c.attributes -> {name})"
        present = f"(COALESCE(jsonb_typeof({x}), 'null') <> 'null')"
        op, expected = node.op, node.value
        if op == "exists":
            # `?` can use the GIN index on contact.attributes; a JSON null is absent.
            has = f"(c.attributes ? {name} AND {present})"
            return f"(NOT {has})" if expected is False else has
        if op == "eq" and _plain_string(expected):
            # Only the very same string equals a plain string: exact, and GIN-indexable.
            return f"(c.attributes @> {self.param(json.dumps({node.attr: expected}), 'jsonb')})"
        if op == "in" and isinstance(expected, list) and expected and all(
            _plain_string(v) for v in expected
        ):
            return "(" + " OR ".join(
                f"c.attributes @> {self.param(json.dumps({node.attr: v}), 'jsonb')} OR "
                f"c.attributes @> {self.param(json.dumps({node.attr: [v]}), 'jsonb')}"
                for v in expected
            ) + ")"
        if op in ("eq", "ne"):
            test = self.equal(x, expected)
            return f"({present} AND {test})" if op == "eq" else f"({present} AND NOT {test})"
        if op in ("gt", "gte", "lt", "lte"):
            return f"({present} AND COALESCE({self.order(x, op, expected)}, false))"
        if op in ("in", "not_in"):
            options = expected if isinstance(expected, list) else [expected]
            found = self.any_item(x, options)
            return f"({present} AND {found})" if op == "in" else f"({present} AND NOT {found})"
        if op == "contains":
            return f"({present} AND {self.contains(x, expected)})"
        raise RuleNotSupported("op", "unknown op")

    def any_item(self, x: str, options: list[Any]) -> str:
        """Some item of x (x itself when it is not a list) equals some option."""
        if not options:
            return "false"
        el = "el.value"
        tests = " OR ".join(self.equal(el, option) for option in options)
        items = f"CASE WHEN jsonb_typeof({x}) = 'array' THEN {x} ELSE jsonb_build_array({x}) END"
        return f"EXISTS (SELECT 1 FROM jsonb_array_elements({items}) el WHERE {tests})"

    def contains(self, x: str, expected: Any) -> str:
        # CASE, not AND: PostgreSQL may reorder AND-ed quals, and the elements of a
        # scalar cannot be extracted.
        in_list = (
            f"(CASE WHEN jsonb_typeof({x}) = 'array' THEN EXISTS (SELECT 1 FROM "
            f"jsonb_array_elements({x}) el WHERE {self.equal('el.value', expected)}) "
            "ELSE false END)"
        )
        if isinstance(expected, str):
            needle = self.param(expected, "text")
            return (
                f"({in_list} OR (jsonb_typeof({x}) = 'string' "
                f"AND strpos(({x} #>> '{{}}'), {needle}) > 0))"
            )
        return in_list

    def equal(self, x: str, expected: Any) -> str:
        """dsl.compare.equal(stored x, expected) as a non-NULL SQL boolean."""
        t = f"jsonb_typeof({x})"
        raw = f"({x} #>> '{{}}')"
        if isinstance(expected, bool):
            word = "true" if expected else "false"
            return (
                f"(({t} = 'boolean' AND {x} = '{word}'::jsonb) OR ({t} = 'string' "
                f"AND lower(btrim({raw}, :ws)) = '{word}'))"
            )
        if isinstance(expected, int | float):
            value = self.param(_num_text(expected), "numeric")
            return (
                f"(CASE {t} WHEN 'number' THEN ({x})::numeric = {value} "
                f"WHEN 'string' THEN COALESCE({_text_number(raw)} = {value}, false) "
                "ELSE false END)"
            )
        if isinstance(expected, str):
            parts = []
            as_bool = expected.strip().lower()
            if as_bool in ("true", "false"):
                parts.append(f"({t} = 'boolean' AND {x} = '{as_bool}'::jsonb)")
            number = _py_number(expected)
            if number is not None:
                value = self.param(_num_text(number), "numeric")
                parts.append(
                    f"(CASE WHEN {t} = 'number' THEN ({x})::numeric = {value} ELSE false END)"
                )
            when = _py_temporal(expected)
            if when is not None:
                same = self.temporal(raw, "=", when)
                parts.append(f"({t} = 'string' AND COALESCE({same}, false))")
            else:
                parts.append(f"({t} = 'string' AND {raw} = {self.param(expected, 'text')})")
            return "(" + " OR ".join(parts) + ")"
        if expected is None:
            return f"({t} = 'null')"
        return f"COALESCE({x} = {self.param(json.dumps(expected), 'jsonb')}, false)"

    def order(self, x: str, op: str, expected: Any) -> str:
        """dsl.compare.compare(stored x, expected) <op> 0; NULL when unordered."""
        sql_op = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[op]
        t = f"jsonb_typeof({x})"
        raw = f"({x} #>> '{{}}')"
        if isinstance(expected, int | float) and not isinstance(expected, bool):
            value = self.param(_num_text(expected), "numeric")
            return (
                f"(CASE {t} WHEN 'number' THEN ({x})::numeric {sql_op} {value} "
                f"WHEN 'string' THEN {_text_number(raw)} {sql_op} {value} END)"
            )
        if not isinstance(expected, str):
            return "NULL::boolean"
        number = _py_number(expected)
        when = _py_temporal(expected)
        text_value = self.param(expected, "text")
        lexical = f'({raw} COLLATE "C" {sql_op} {text_value} COLLATE "C")'
        if number is not None:
            value = self.param(_num_text(number), "numeric")
            on_string = (
                f"COALESCE({_text_number(raw)} {sql_op} {value}, {lexical})"
            )
            on_number = f"({x})::numeric {sql_op} {value}"
        elif when is not None:
            on_string = f"COALESCE({self.temporal(raw, sql_op, when)}, {lexical})"
            on_number = "NULL::boolean"
        else:
            on_string = lexical
            on_number = "NULL::boolean"
        return f"(CASE {t} WHEN 'number' THEN {on_number} WHEN 'string' THEN {on_string} END)"

    def temporal(self, raw: str, sql_op: str, when: date | datetime) -> str:
        """The stored text read as a date/datetime compared with `when`; NULL if it is not
        one. Datetimes compare as UTC instants (naive = UTC); when either side is a bare
        date, UTC calendar days are compared."""
        if isinstance(when, datetime):
            utc = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
            day = self.param(utc.date(), "date")
            instant = self.param(utc.replace(tzinfo=None), "timestamp")
            on_datetime = f"{_ts_utc('q.t')} {sql_op} {instant}"
        else:
            day = self.param(when, "date")
            on_datetime = f"({_ts_utc('q.t')})::date {sql_op} {day}"
        on_date = f"make_date(q.d[1]::int, q.d[2]::int, q.d[3]::int) {sql_op} {day}"
        return (
            "(SELECT CASE "
            f"WHEN q.d IS NOT NULL AND {_valid_date('q.d')} THEN {on_date} "
            f"WHEN q.t IS NOT NULL AND {_valid_datetime('q.t')} THEN {on_datetime} END "
            f"FROM (SELECT regexp_match(btrim({raw}, :ws), :re_date) AS d, "
            f"regexp_match(btrim({raw}, :ws), :re_dt) AS t) q)"
        )


def _plain_string(value: Any) -> bool:
    """A string the evaluator compares only as itself: not a boolean word, a number or a
    date (those also equal other spellings or types)."""
    return (
        isinstance(value, str)
        and value.strip().lower() not in ("true", "false")
        and _py_number(value) is None
        and _py_temporal(value) is None
    )


def _num_text(value: int | float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def _text_number(raw: str) -> str:
    """The stored text read as a number (as dsl.compare reads "42"), else NULL."""
    trimmed = f"btrim({raw}, :ws)"
    return (
        f"(CASE WHEN {trimmed} ~ :re_num THEN CASE WHEN abs(({trimmed})::numeric) <= "
        f"{_MAX_FLOAT} THEN ({trimmed})::numeric END END)"
    )


def _valid_date(m: str) -> str:
    y, mo, d = f"{m}[1]::int", f"{m}[2]::int", f"{m}[3]::int"
    leap = f"(({y} % 4 = 0 AND {y} % 100 <> 0) OR {y} % 400 = 0)"
    dim = (
        f"(CASE WHEN {mo} = 2 THEN (CASE WHEN {leap} THEN 29 ELSE 28 END) "
        f"WHEN {mo} IN (4, 6, 9, 11) THEN 30 ELSE 31 END)"
    )
    return f"({y} >= 1 AND {mo} BETWEEN 1 AND 12 AND {d} BETWEEN 1 AND {dim})"


def _valid_datetime(m: str) -> str:
    offset_ok = f"({m}[11] IS NULL OR {m}[12]::int * 60 + COALESCE({m}[14], '0')::int < 1440)"
    return (
        f"({_valid_date(m)} AND {m}[4]::int <= 23 AND {m}[5]::int <= 59 "
        f"AND COALESCE({m}[7], '0')::int <= 59 AND {offset_ok})"
    )


def _ts_utc(m: str) -> str:
    """The UTC timestamp of a matched datetime (fractions beyond microseconds truncated,
    as datetime.fromisoformat does)."""
    local = (
        f"(make_timestamp({m}[1]::int, {m}[2]::int, {m}[3]::int, {m}[4]::int, {m}[5]::int, 0)"
        f" + COALESCE({m}[7], '0')::int * interval '1 second'"
        f" + left(COALESCE({m}[9], '') || '000000', 6)::int * interval '1 microsecond')"
    )
    offset = (
        f"(CASE WHEN {m}[11] IS NULL THEN 0 ELSE (CASE WHEN {m}[11] = '-' THEN -1 ELSE 1 END)"
        f" * ({m}[12]::int * 60 + COALESCE({m}[14], '0')::int) END)"
    )
    return f"({local} - {offset} * interval '1 minute')"


def _interval(d: Duration) -> str:
    return (
        f"make_interval(years => {int(d.years)}, months => {int(d.months)}, "
        f"days => {int(d.days)}, secs => {float(d.seconds)!r})"
    )


_BIND_RE = re.compile(r"(?<![:\w]):(\w+)")


def statement(sql: str, params: dict[str, Any]) -> TextClause:
    """text(sql) with the parameters it uses (compiled rules carry more than one query needs)."""
    used = set(_BIND_RE.findall(sql))
    missing = used - params.keys()
    if missing:
        raise KeyError(f"unbound SQL parameters: {sorted(missing)}")
    return text(sql).bindparams(**{k: v for k, v in params.items() if k in used})


def compile_rule(rule: ConditionUnion, prefix: str = "r") -> CompiledRule:
    """The rule as SQL over `contact c`; raises RuleNotSupported naming the path."""
    compiler = _Compiler(prefix)
    predicate = compiler.condition(rule, "rule")
    recheck: str | None = None
    if compiler.rechecks:
        recheck = (
            compiler.rechecks[0]
            if len(compiler.rechecks) == 1
            else "LEAST(" + ", ".join(compiler.rechecks) + ")"
        )
    return CompiledRule(
        predicate=predicate,
        recheck=recheck,
        params=compiler.params,
        windows=compiler.windows,
        deps=sorted(compiler.deps),
    )


def walk(rule: ConditionUnion) -> Iterator[ConditionUnion]:
    yield rule
    if isinstance(rule, AllCondition):
        for part in rule.all_:
            yield from walk(part)
    elif isinstance(rule, AnyCondition):
        for part in rule.any_:
            yield from walk(part)
    elif isinstance(rule, NotCondition):
        yield from walk(rule.not_)
