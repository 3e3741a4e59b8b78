"""Deterministic weighted split: the same contact always takes the same path of a split in
a given journey version, in any process, with no random number generator."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

_SCALE = 2**64


def split_point(contact_id: str, journey_key: str, version: int, step: str = "") -> float:
    """A uniform-looking number in [0, 1) fixed by its arguments."""
    # Length-prefixed fields: no two different argument tuples hash the same text.
    parts = (contact_id, journey_key, str(version), step)
    material = "".join(f"{len(part)}:{part};" for part in parts).encode()
    digest = hashlib.sha256(material).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def choose_path(
    contact_id: str,
    journey_key: str,
    version: int,
    weights: Sequence[float],
    *,
    step: str = "",
) -> int:
    """Index of the path taken; path i is chosen with probability weights[i] / sum(weights).

    Pass the split's step key as step so that two splits in one journey are independent
    (with the default, a contact lands at the same relative point in every split).
    """
    if not weights:
        raise ValueError("a split needs at least one path")
    if any(not math.isfinite(w) or w <= 0 for w in weights):
        raise ValueError("split weights must be finite numbers greater than zero")
    target = split_point(contact_id, journey_key, version, step) * math.fsum(weights)
    cumulative = 0.0
    for index, weight in enumerate(weights):
        cumulative += weight
        if target < cumulative:
            return index
    return len(weights) - 1  # float rounding at the very top of the range
