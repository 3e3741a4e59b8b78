"""Precision and recall of the classifier's `human` verdict on the labelled fixtures.

    .venv/bin/python bench/classifier_accuracy.py [-v] [FIXTURE.jsonl ...]

Each fixture file is replayed through a fresh Classifier in line order; an event's
final verdict is its last one (revisions included). `unknown` counts as not human.
Exits 1 when overall precision < 0.98 or recall < 0.95.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from classifier import Classifier, evidence_from_json  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "classifier"
MIN_PRECISION = 0.98
MIN_RECALL = 0.95


@dataclass
class Tally:
    events: int = 0
    tp: int = 0  # labelled human, judged human
    fp: int = 0  # labelled automated, judged human
    fn: int = 0  # labelled human, judged otherwise
    misses: list[str] = field(default_factory=list)

    @property
    def precision(self) -> float:
        judged = self.tp + self.fp
        return self.tp / judged if judged else 1.0

    @property
    def recall(self) -> float:
        actual = self.tp + self.fn
        return self.tp / actual if actual else 1.0


def evaluate(paths: list[Path]) -> dict[str, Tally]:
    tallies: dict[str, Tally] = defaultdict(Tally)
    for path in paths:
        classifier = Classifier()
        labels: dict[str, tuple[str, str]] = {}
        final: dict[str, tuple[str, str]] = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            raw = json.loads(line)
            labels[raw["id"]] = (raw["label"], raw["scenario"])
            for verdict in classifier.judge(evidence_from_json(raw)):
                final[verdict.id] = (verdict.verdict, verdict.reason)
        for event_id, (label, scenario) in labels.items():
            judged, reason = final[event_id]
            tally = tallies[scenario]
            tally.events += 1
            human = judged == "human"
            if label == "human" and human:
                tally.tp += 1
            elif label == "human":
                tally.fn += 1
                tally.misses.append(f"{event_id}: human judged {judged} ({reason})")
            elif human:
                tally.fp += 1
                tally.misses.append(f"{event_id}: automated judged human ({reason})")
    return dict(tallies)


def overall(tallies: dict[str, Tally]) -> Tally:
    total = Tally()
    for tally in tallies.values():
        total.events += tally.events
        total.tp += tally.tp
        total.fp += tally.fp
        total.fn += tally.fn
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fixtures", nargs="*", type=Path)
    parser.add_argument("-v", "--verbose", action="store_true", help="list misjudged events")
    args = parser.parse_args(argv)
    paths = args.fixtures or sorted(FIXTURES.glob("*.jsonl"))
    tallies = evaluate(paths)
    print(f"{'scenario':<22}{'events':>7}{'humans':>8}{'precision':>11}{'recall':>8}")
    for name in sorted(tallies):
        t = tallies[name]
        print(f"{name:<22}{t.events:>7}{t.tp + t.fn:>8}{t.precision:>11.3f}{t.recall:>8.3f}")
        if args.verbose:
            for miss in t.misses:
                print(f"    {miss}")
    total = overall(tallies)
    print(
        f"{'overall':<22}{total.events:>7}{total.tp + total.fn:>8}"
        f"{total.precision:>11.3f}{total.recall:>8.3f}"
    )
    ok = total.precision >= MIN_PRECISION and total.recall >= MIN_RECALL
    print(
        f"thresholds: precision >= {MIN_PRECISION}, recall >= {MIN_RECALL}: "
        f"{'met' if ok else 'NOT met'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
