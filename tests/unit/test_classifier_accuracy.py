"""The labelled fixtures meet the accuracy bar, and the bench fails when they do not."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "classifier"
BENCH = ROOT / "bench" / "classifier_accuracy.py"


def _events() -> list[dict[str, object]]:
    return [
        json.loads(line)
        for path in sorted(FIXTURES.glob("*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]


def test_fixtures_are_large_varied_and_labelled() -> None:
    events = _events()
    assert len(events) >= 400
    scenarios = Counter(str(e["scenario"]) for e in events)
    assert len(scenarios) >= 10
    assert {e["label"] for e in events} == {"human", "automated"}
    for name in ("phone_notification", "azure_desktop", "gmail_proxy", "trap_link", "link_sweep"):
        assert scenarios[name] > 0


def test_bench_meets_the_thresholds() -> None:
    done = subprocess.run([sys.executable, str(BENCH)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    overall = next(line for line in done.stdout.splitlines() if line.startswith("overall"))
    precision, recall = (float(x) for x in overall.split()[-2:])
    assert precision >= 0.98 and recall >= 0.95


def test_bench_fails_on_fixtures_it_gets_wrong(tmp_path: Path) -> None:
    # Relabel the Apple proxy fetches as human: the classifier (rightly) disagrees.
    source = FIXTURES / "apple_mpp.jsonl"
    flipped = tmp_path / "flipped.jsonl"
    lines = []
    for line in source.read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        event["label"] = "human"
        lines.append(json.dumps(event))
    flipped.write_text("\n".join(lines) + "\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(BENCH), str(flipped)], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "NOT met" in done.stdout
