"""JSON lines in, verdict lines out: the engine behind `journeys classify`.

One output line per input line, in order; revision lines follow the line that
caused them. A bad line yields {"line": n, "error": ...} and the stream goes on.
Blank lines are skipped without output. Error texts name fields, never values.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from classifier.classifier import Classifier
from classifier.evidence import EvidenceError, evidence_from_json


def _dump(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False)


def classify_stream(lines: Iterable[str], classifier: Classifier | None = None) -> Iterator[str]:
    """Judge each JSON event line; yield the verdict line and any revision lines."""
    judge = classifier if classifier is not None else Classifier()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            # exc.msg describes the syntax fault only (no document text).
            yield _dump({"line": number, "error": f"invalid JSON: {exc.msg}"})
            continue
        try:
            evidence = evidence_from_json(obj)
        except EvidenceError as exc:
            yield _dump({"line": number, "error": str(exc)})
            continue
        for verdict in judge.judge(evidence):
            yield _dump(verdict.as_json())
