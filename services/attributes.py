"""Typed contact attributes: string, number, boolean, date, list.

An attribute's type is declared (PUT /v1/attributes/{name}) or inferred from the first value
seen, and kept in `attribute_def`; later values are coerced to it or rejected, so a segment
rule on `age` compares numbers with numbers. JSON input is already typed; CSV cells are text
and are read the way a person would read them ("true" is a boolean, "42" a number, "02139"
stays a string because a number would lose its leading zero, "2026-01-05" is a date).
Error messages name the attribute and the rule, never the value.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, select

from core.models import AttributeDef, utcnow
from dsl.dates import parse_date_or_datetime
from services.context import ServiceContext
from services.errors import Conflict, Invalid

TYPES = ("string", "number", "boolean", "date", "list")
RESERVED = frozenset({"id", "external_id", "email", "timezone", "attributes"})
MAX_STRING = 4096
MAX_LIST = 1000
MAX_ATTRIBUTES = 500
_NAME_RE = re.compile(r"[^\s\x00-\x1f\x7f]{1,128}")
_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INT_RE = re.compile(r"[+-]?[0-9]+")
# Beyond 15 significant digits a float no longer holds the number exactly (and such long
# digit strings are identifiers such as MRNs, not quantities).
_MAX_DIGITS = 15
_TRUE = frozenset({"true", "yes", "y", "1"})
_FALSE = frozenset({"false", "no", "n", "0"})


@dataclass(frozen=True)
class AttributeProblem:
    field: str
    code: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "code": self.code, "message": self.message}


class AttributeValueError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise AttributeValueError(
            "invalid_name", "an attribute name is 1-128 characters without spaces or controls"
        )
    if name in RESERVED:
        raise AttributeValueError("reserved_name", "this name is reserved for a contact field")


# --- inference ----------------------------------------------------------------------------


def infer_type(value: Any) -> str:
    """The type of a JSON value (raises for values no type holds)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "date" if _is_date(value) else "string"
    if isinstance(value, list):
        return "list"
    raise AttributeValueError(
        "unsupported_type", "a value must be a string, number, boolean, date or list"
    )


def read_text(text_value: str) -> Any:
    """A CSV cell as the typed value a person would read it as (for unknown attributes)."""
    s = text_value.strip()
    low = s.lower()
    if low in ("true", "false"):
        return low == "true"
    number = _text_number(s, strict=True)
    if number is not None:
        return number
    if _is_date(s):
        return _canonical_date(s)
    if s.startswith("[") and s.endswith("]"):
        try:
            parsed = json.loads(s)
        except ValueError:
            parsed = None
        if isinstance(parsed, list):
            return parsed
    return text_value


def _text_number(s: str, *, strict: bool) -> int | float | None:
    """A number written in s; strict (inference) refuses leading zeros and long digit runs."""
    if not _NUMBER_RE.fullmatch(s):
        return None
    digits = s.lstrip("+-")
    mantissa = re.split(r"[eE]", digits)[0]
    if strict:
        whole = mantissa.split(".")[0]
        if len(whole) > 1 and whole.startswith("0"):
            return None
        if len(mantissa.replace(".", "").lstrip("0")) > _MAX_DIGITS:
            return None
    if _INT_RE.fullmatch(s):
        return int(s)
    number = float(s)
    return number if math.isfinite(number) else None


def _is_date(s: str) -> bool:
    try:
        parse_date_or_datetime(s)
    except ValueError:
        return False
    return True


def _canonical_date(s: str) -> str:
    value = parse_date_or_datetime(s)
    if isinstance(value, datetime):
        return value.isoformat()
    assert isinstance(value, date)
    return value.isoformat()


# --- coercion -----------------------------------------------------------------------------


def coerce(value: Any, type_: str, *, from_text: bool = False) -> Any:
    """value as type_, or AttributeValueError naming why not. from_text: a CSV cell."""
    if type_ == "string":
        if isinstance(value, str):
            result = value
        elif isinstance(value, bool):
            result = "true" if value else "false"
        elif isinstance(value, int | float):
            result = json.dumps(value)
        else:
            raise AttributeValueError("type_mismatch", "expected a string")
        if len(result) > MAX_STRING:
            raise AttributeValueError("too_long", f"a string is at most {MAX_STRING} characters")
        return result
    if type_ == "number":
        if isinstance(value, bool):
            raise AttributeValueError("type_mismatch", "expected a number")
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise AttributeValueError("type_mismatch", "expected a finite number")
            return value
        if isinstance(value, str):
            s = value.strip()
            whole = s.lstrip("+-").split(".")[0]
            if len(whole) > 1 and whole.startswith("0") and whole.isdigit():
                raise AttributeValueError(
                    "leading_zeros",
                    "expected a number; this value has leading zeros a number would lose "
                    "(declare the attribute as string)",
                )
            number = _text_number(s, strict=False)
            if number is not None:
                return number
        raise AttributeValueError("type_mismatch", "expected a number")
    if type_ == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            low = value.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
        raise AttributeValueError("type_mismatch", "expected a boolean (true or false)")
    if type_ == "date":
        if isinstance(value, str):
            try:
                return _canonical_date(value.strip())
            except ValueError:
                pass
        raise AttributeValueError(
            "type_mismatch", "expected an ISO 8601 date or datetime (e.g. 2026-01-05)"
        )
    if type_ == "list":
        if isinstance(value, str) and from_text:
            s = value.strip()
            parsed: Any = None
            if s.startswith("["):
                try:
                    parsed = json.loads(s)
                except ValueError:
                    raise AttributeValueError(
                        "type_mismatch", "expected a list (a|b|c or a JSON array)"
                    ) from None
            value = parsed if parsed is not None else [p.strip() for p in s.split("|") if p.strip()]
        if not isinstance(value, list):
            raise AttributeValueError("type_mismatch", "expected a list")
        if len(value) > MAX_LIST:
            raise AttributeValueError("too_long", f"a list holds at most {MAX_LIST} items")
        for item in value:
            if isinstance(item, str):
                if len(item) > MAX_STRING:
                    raise AttributeValueError("too_long", "a list item is too long")
            elif isinstance(item, float) and not math.isfinite(item):
                raise AttributeValueError("invalid_item", "list items must be finite numbers")
            elif not isinstance(item, str | int | float | bool):
                raise AttributeValueError(
                    "invalid_item", "list items must be strings, numbers or booleans"
                )
        return value
    raise AttributeValueError("unknown_type", f"type must be one of {', '.join(TYPES)}")


# --- schema -------------------------------------------------------------------------------


@dataclass
class AttributeTypes:
    """Known attribute types plus those inferred while reading input (written on flush)."""

    known: dict[str, str] = field(default_factory=dict)
    inferred: dict[str, str] = field(default_factory=dict)

    def type_of(self, name: str) -> str | None:
        return self.known.get(name) or self.inferred.get(name)

    def clean(
        self,
        values: Mapping[str, Any],
        *,
        from_text: bool = False,
        prefix: str = "attributes.",
        allow_null: bool = True,
    ) -> tuple[dict[str, Any], list[AttributeProblem]]:
        """Values coerced to their types; None stays None (meaning: remove). New names get
        an inferred type. Problems name the field, never the value."""
        out: dict[str, Any] = {}
        problems: list[AttributeProblem] = []
        if len(values) > MAX_ATTRIBUTES:
            problems.append(
                AttributeProblem(
                    prefix.rstrip("."), "too_many", f"at most {MAX_ATTRIBUTES} attributes"
                )
            )
            return out, problems
        pending: dict[str, str] = {}
        for name, raw in values.items():
            where = f"{prefix}{name}"
            try:
                check_name(name)
                if raw is None:
                    if not allow_null:
                        continue
                    out[name] = None
                    continue
                type_ = self.type_of(name) or pending.get(name)
                if type_ is None:
                    guess = read_text(raw) if from_text and isinstance(raw, str) else raw
                    type_ = infer_type(guess)
                    value = coerce(guess, type_)
                    pending[name] = type_
                else:
                    value = coerce(raw, type_, from_text=from_text)
            except AttributeValueError as exc:
                problems.append(AttributeProblem(where, exc.code, exc.message))
                continue
            out[name] = value
        if not problems:
            self.inferred.update(pending)
        return out, problems


async def load_types(ctx: ServiceContext, names: Iterable[str] | None = None) -> AttributeTypes:
    q = select(AttributeDef.name, AttributeDef.type)
    if names is not None:
        wanted = list(set(names))
        if not wanted:
            return AttributeTypes()
        q = q.where(col(AttributeDef.name).in_(wanted))
    rows = (await ctx.session.exec(q)).all()
    return AttributeTypes(known={n: t for n, t in rows})


async def save_inferred(
    ctx: ServiceContext, types: AttributeTypes, names: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Writes inferred types (all of types.inferred, or just `names`; first writer wins, in
    the caller's transaction), after which they are known types. Returns the names whose
    stored type turned out different (another writer typed them first), with that type."""
    wanted = dict(types.inferred if names is None else names)
    if not wanted:
        return {}
    now = utcnow()
    rows = [
        {"name": n, "type": t, "source": "inferred", "description": "", "created_at": now,
         "updated_at": now}
        for n, t in sorted(wanted.items())
    ]
    await ctx.session.exec(  # type: ignore[call-overload]
        insert(AttributeDef).values(rows).on_conflict_do_nothing(index_elements=["name"])
    )
    stored = await load_types(ctx, wanted)
    clashes = {n: t for n, t in stored.known.items() if wanted.get(n) != t}
    types.known.update(stored.known)
    for name in wanted:
        types.inferred.pop(name, None)
    return clashes


def attribute_out(a: AttributeDef) -> dict[str, Any]:
    return {
        "name": a.name,
        "type": a.type,
        "source": a.source,
        "description": a.description,
        "created_at": a.created_at,
        "updated_at": a.updated_at,
    }


async def list_attributes(ctx: ServiceContext) -> list[dict[str, Any]]:
    rows = (await ctx.session.exec(select(AttributeDef).order_by(col(AttributeDef.name)))).all()
    return [attribute_out(a) for a in rows]


# SQL tests of whether a stored JSON value already has a type (used before re-typing).
_CONFORMS = {
    "string": "jsonb_typeof(v) = 'string'",
    "number": "jsonb_typeof(v) = 'number'",
    "boolean": "jsonb_typeof(v) = 'boolean'",
    "list": "jsonb_typeof(v) = 'array'",
    "date": "jsonb_typeof(v) = 'string' AND (v #>> '{}') ~ "
    "'^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}.*)?$'",
}


async def declare_attribute(
    ctx: ServiceContext, name: str, type_: str, description: str | None = None
) -> tuple[dict[str, Any], bool]:
    """Declares (or re-types) an attribute. Re-typing is refused while stored values do not
    fit the new type, with how many contacts hold such values (never the values)."""
    try:
        check_name(name)
    except AttributeValueError as exc:
        raise Invalid(exc.message, {"field": "name", "code": exc.code}) from None
    if type_ not in TYPES:
        raise Invalid(f"type must be one of {', '.join(TYPES)}", {"field": "type"})
    existing = await ctx.session.get(AttributeDef, name)
    if existing is None or existing.type != type_:
        bad = (
            await ctx.session.exec(  # type: ignore[call-overload]
                text(
                    "SELECT count(*) FROM (SELECT c.attributes -> :name AS v FROM contact c "
                    "WHERE c.deleted_at IS NULL AND c.attributes ? :name) s "
                    f"WHERE NOT ({_CONFORMS[type_]})"
                ).bindparams(name=name)
            )
        ).scalar_one()
        if bad:
            raise Conflict(
                f"{bad} contacts hold values of this attribute that are not of type {type_}",
                {"field": "type", "attribute": name, "contacts": bad},
            )
    created = existing is None
    row = existing or AttributeDef(name=name, type=type_)
    row.type = type_
    row.source = "declared"
    if description is not None:
        row.description = description
    row.updated_at = utcnow()
    ctx.session.add(row)
    await ctx.session.commit()
    await ctx.session.refresh(row)
    return attribute_out(row), created
