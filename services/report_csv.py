"""CSV exports of the reports: one row per step (journey) or per day (engagement).

Columns are the JSON report's fields flattened with dots (`send.opens.human.unique`);
breakdown lists become one column per entry (`send.blocked.by_reason.no_consent.count`).
A suppressed count is an empty cell and the row's `suppressed` column is true.
"""

from __future__ import annotations

import csv
import io
from datetime import date, datetime
from typing import Any

# Fields that name an entry of a breakdown list (they become part of the column name).
_LABELS = ("verdict", "reason", "step", "link")


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def flatten(node: Any, prefix: str, out: dict[str, Any]) -> bool:
    """Adds `node`'s leaves to `out`; True when anything inside was suppressed."""
    suppressed = False
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "suppressed":
                suppressed = suppressed or bool(value)
                continue
            suppressed = flatten(value, f"{prefix}.{key}" if prefix else key, out) or suppressed
    elif isinstance(node, list) and all(isinstance(x, dict) for x in node) and node:
        for entry in node:
            label = ":".join(
                "(none)" if entry[f] is None else str(entry[f]) for f in _LABELS if f in entry
            )
            rest = {k: v for k, v in entry.items() if k not in _LABELS}
            suppressed = flatten(rest, f"{prefix}.{label}", out) or suppressed
    elif isinstance(node, list):
        out[prefix] = " ".join(str(_cell(x)) for x in node)
    else:
        out[prefix] = _cell(node)
    return suppressed


def _write(rows: list[dict[str, Any]]) -> str:
    header: dict[str, None] = {}
    for row in rows:
        header.update(dict.fromkeys(row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(header), restval="", lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def journey_report_csv(report: dict[str, Any]) -> str:
    context = {
        "journey": report["journey"],
        "version": _cell(report["version"]),
        "from": _cell(report["from"]),
        "to": _cell(report["to"]),
        "include_automated": _cell(report["include_automated"]),
    }
    rows = []
    runs: dict[str, Any] = {**context, "section": "runs", "step": "", "suppressed": ""}
    runs["suppressed"] = _cell(flatten(report["runs"], "runs", runs))
    rows.append(runs)
    for step in report["steps"]:
        row: dict[str, Any] = {**context, "section": "step", "step": step["step"], "suppressed": ""}
        body = {k: v for k, v in step.items() if k != "step"}
        row["suppressed"] = _cell(flatten(body, "", row))
        rows.append(row)
    return _write(rows)


def engagement_report_csv(report: dict[str, Any]) -> str:
    rows = []
    for entry in [*report["days"], {"day": "total", **report["totals"]}]:
        row: dict[str, Any] = {"day": _cell(entry["day"])}
        for group in ("journey", "template"):
            if group in entry:
                row[group] = _cell(entry[group])
        row["suppressed"] = ""
        body = {k: v for k, v in entry.items() if k not in ("day", "journey", "template")}
        row["suppressed"] = _cell(flatten(body, "", row))
        rows.append(row)
    return _write(rows)
