"""Who may see what in reports: small-count suppression for roles without PHI access.

Roles allowed PHI (admin, designer, operator) see exact counts and the drill-down to
contacts. Everyone else who may read reports (marketer, auditor) gets aggregates only,
and any count from 1 to 10 is replaced by null with `"suppressed": true` on the object
that held it, the usual small-cell rule for de-identified health statistics (a count
that small can single out a patient). Zero is shown: it discloses nobody.
"""

from __future__ import annotations

from typing import Any

PHI_ROLES = frozenset({"admin", "designer", "operator"})
THRESHOLD = 11  # counts below this (and above zero) are suppressed
# Integers in reports that are not counts of people or messages.
NOT_COUNTS = frozenset({"version", "versions", "suppression_threshold"})


def may_see_phi(role: str) -> bool:
    return role in PHI_ROLES


def suppress_small_counts(node: Any) -> bool:
    """Suppresses, in place, every count in 1..THRESHOLD-1; True when any was.

    Objects that held a suppressed count get `"suppressed": true`. Rates are computed
    after this pass, from what is left, so no rate reveals a suppressed count.
    """
    found = False
    if isinstance(node, dict):
        for key, value in list(node.items()):
            if type(value) is int and key not in NOT_COUNTS and 0 < value < THRESHOLD:
                node[key] = None
                node["suppressed"] = True
                found = True
            elif isinstance(value, dict | list):
                found = suppress_small_counts(value) or found
    elif isinstance(node, list):
        for item in node:
            found = suppress_small_counts(item) or found
    return found


def ratio(num: int | None, den: int | None) -> float | None:
    """num/den rounded to 4 places; None when either is unknown (suppressed) or den is 0."""
    if num is None or den is None or den == 0:
        return None
    return round(num / den, 4)
