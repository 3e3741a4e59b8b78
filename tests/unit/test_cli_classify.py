"""`journeys classify` as a user runs it: a subprocess reading stdin, writing stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from classifier import Classifier, classify_stream

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "classifier"

SPEC_LINE = {
    "id": "e1",
    "kind": "click",
    "message_id": "m1",
    "link": "book",
    "links_in_message": 3,
    "sent_at": "2026-01-05T10:00:00Z",
    "at": "2026-01-05T10:00:21Z",
    "ip": "40.94.1.2",
    "method": "GET",
    "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/143.0.0.0 Safari/537.36",
    "headers": {"accept": "text/html"},
}


def run_classify(stdin: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JOURNEYS_HOME=str(home))
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "classify", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=home,
        timeout=120,
    )


def test_spec_example_line(tmp_path: Path) -> None:
    out = run_classify(json.dumps(SPEC_LINE) + "\n", tmp_path)
    assert out.returncode == 0, out.stderr
    [line] = out.stdout.splitlines()
    assert json.loads(line) == {
        "id": "e1",
        "verdict": "automated",
        "reason": "link_scanner",
        "confidence": json.loads(line)["confidence"],
    }
    assert 0.9 <= json.loads(line)["confidence"] <= 1.0


def test_trap_hit_revises_an_earlier_line_and_bad_lines_are_reported(tmp_path: Path) -> None:
    human = dict(SPEC_LINE, id="e1", ip="73.15.237.200", at="2026-01-05T10:03:00Z")
    human["headers"] = {"accept": "text/html", "sec-fetch-user": "?1"}
    other = dict(SPEC_LINE, id="x1", message_id="m2", ip="73.9.9.9", at="2026-01-05T10:03:30Z")
    trap = dict(human, id="e2", link="__trap__", at="2026-01-05T10:04:00Z")
    stdin = "\n".join(
        [
            json.dumps(human),
            json.dumps(other),
            "{not json",
            "",
            json.dumps({"id": "e9"}),
            json.dumps(trap),
        ]
    )
    out = run_classify(stdin + "\n", tmp_path)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert [(x.get("id"), x.get("verdict"), x.get("revised", False)) for x in lines] == [
        ("e1", "human", False),
        ("x1", "human", False),
        (None, None, False),
        (None, None, False),
        ("e2", "automated", False),
        ("e1", "automated", True),
    ]
    assert lines[2]["line"] == 3 and "invalid JSON" in lines[2]["error"]
    assert lines[3]["line"] == 5 and "kind" in lines[3]["error"]
    assert lines[5]["reason"] == "trap_link"


def test_fixture_logs_match_the_library_exactly(tmp_path: Path) -> None:
    stdin = "".join(
        (FIXTURES / name).read_text(encoding="utf-8")
        for name in ("trap_link.jsonl", "link_sweep.jsonl", "apple_mpp.jsonl")
    )
    out = run_classify(stdin, tmp_path)
    assert out.returncode == 0, out.stderr
    expected = list(classify_stream(stdin.splitlines(), Classifier()))
    assert out.stdout.splitlines() == expected
    assert sum('"revised": true' in line for line in expected) > 10


def test_networks_option_and_refreshed_list_are_used(tmp_path: Path) -> None:
    from classifier import shipped_document_text

    line = dict(SPEC_LINE, ip="198.18.7.9", at="2026-01-05T10:09:00Z")
    line["headers"] = {"accept": "text/html", "sec-fetch-user": "?1"}
    before = run_classify(json.dumps(line) + "\n", tmp_path)
    assert json.loads(before.stdout)["verdict"] == "human"

    doc = json.loads(shipped_document_text())
    doc["entries"].append(
        {
            "cidr": "198.18.7.0/24",
            "owner": "Example scanner",
            "scope": "link_scanner",
            "certainty": 0.95,
            "source": "https://example.org/ranges",
        }
    )
    custom = tmp_path / "custom.json"
    custom.write_text(json.dumps(doc))
    out = run_classify(json.dumps(line) + "\n", tmp_path, "--networks", str(custom))
    assert json.loads(out.stdout)["reason"] == "link_scanner"

    (tmp_path / "scanner_networks.json").write_text(
        json.dumps(doc)
    )  # what `networks update` writes
    out = run_classify(json.dumps(line) + "\n", tmp_path)
    assert json.loads(out.stdout)["reason"] == "link_scanner"

    missing = run_classify("", tmp_path, "--networks", str(tmp_path / "nope.json"))
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: cannot load the network list")
