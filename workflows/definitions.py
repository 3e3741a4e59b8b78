"""Parsing journey definitions for the interpreter, once per published version per process.

Imported by the workflow through imports_passed_through, so the cache outlives a single
workflow sandbox; parsing is a pure function of the JSON, which keeps it replay-safe.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from threading import Lock
from typing import Any

from dsl.model import ConditionUnion, JourneyDefinition

_CACHE_SIZE = 256
# (key, version, JSON text) -> (the JSON as first seen, parsed). One copy per version per
# process: a worker caching 1,000 parked runs of a journey holds one definition, not 1,000.
_cache: OrderedDict[tuple[str, int, str], tuple[dict[str, Any], JourneyDefinition]] = OrderedDict()
_lock = Lock()


def load_definition(
    journey_key: str, version: int, raw: dict[str, Any]
) -> tuple[dict[str, Any], JourneyDefinition]:
    """The shared JSON (equal to `raw`; never mutate it) and the parsed definition.

    Raises pydantic.ValidationError for a malformed one."""
    # The JSON text is part of the key: a test or a hand-edited row may reuse key+version.
    text = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    key = (journey_key, version, text)
    with _lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
            return found
    entry = (raw, JourneyDefinition.model_validate(raw))
    with _lock:
        entry = _cache.setdefault(key, entry)  # another thread may have parsed it meanwhile
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return entry


def parse_definition(journey_key: str, version: int, raw: dict[str, Any]) -> JourneyDefinition:
    """The parsed definition; raises pydantic.ValidationError for a malformed one."""
    return load_definition(journey_key, version, raw)[1]


def condition_json(condition: ConditionUnion) -> dict[str, Any]:
    """A CONDITION as the JSON the judge activity reads back."""
    data: dict[str, Any] = condition.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return data


def where_json(where: dict[str, Any] | None) -> dict[str, Any]:
    """A property filter ("where") as plain JSON ({} matches every event)."""
    out: dict[str, Any] = {}
    for name, test in (where or {}).items():
        dump = getattr(test, "model_dump", None)
        out[name] = dump(mode="json", exclude_unset=True) if dump is not None else test
    return out
