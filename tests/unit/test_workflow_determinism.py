"""workflows/ and dsl/ are passed through the sandbox (imported once, outside it), so the
sandbox's restrictions never see their calls. This guard reads their source instead: no
clock, randomness, environment or I/O outside `workflow.*` (replay tests catch the rest)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PASSED_THROUGH = sorted(
    p for pkg in ("workflows", "dsl") for p in (ROOT / pkg).glob("*.py")
)
FORBIDDEN_MODULES = {
    "time", "random", "uuid", "os", "socket", "subprocess", "threading", "secrets",
    "httpx", "psycopg", "sqlalchemy", "sqlmodel", "aiosmtplib", "activities", "core.db",
}
CLOCK_CALLS = {"now", "utcnow", "today"}
FORBIDDEN_BUILTINS = {"open", "input", "hash", "id"}  # hash(str) and id() differ per process
# Reviewed exceptions: definitions.py locks its parse cache (a pure function's memo).
ALLOWED = {"workflows/definitions.py": {"import threading"}}


def violations(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            if any(name == m or name.startswith(m + ".") for m in FORBIDDEN_MODULES):
                assert isinstance(node, ast.stmt)
                found.append(f"line {node.lineno}: import {name}")
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr in CLOCK_CALLS:
                if not (isinstance(f.value, ast.Name) and f.value.id == "workflow"):
                    found.append(f"line {node.lineno}: .{f.attr}() (use workflow.now())")
            if isinstance(f, ast.Name) and f.id in FORBIDDEN_BUILTINS:
                found.append(f"line {node.lineno}: {f.id}()")
    return found


def test_the_guard_sees_what_it_forbids() -> None:
    bad = (
        "import time\nfrom os import environ\nfrom datetime import datetime\n"
        "def f(workflow):\n    workflow.now()\n    datetime.now()\n    return hash('x')\n"
    )
    assert violations(bad) == [
        "line 1: import time",
        "line 2: import os",
        "line 6: .now() (use workflow.now())",
        "line 7: hash()",
    ]


@pytest.mark.parametrize("path", PASSED_THROUGH, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_passed_through_workflow_code_is_deterministic(path: Path) -> None:
    allowed = ALLOWED.get(f"{path.parent.name}/{path.name}", set())
    assert [v for v in violations(path.read_text()) if v.split(": ", 1)[1] not in allowed] == []
