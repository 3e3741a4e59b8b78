"""The dataclasses crossing the workflow/activity boundary keep evaluated annotations:
Temporal's converter resolves a dataclass's type hints for every payload it decodes, and
string annotations (`from __future__ import annotations`) make that several times dearer."""

from __future__ import annotations

import dataclasses
import inspect

import workflows.types as boundary


def test_boundary_dataclasses_have_evaluated_annotations() -> None:
    classes = [
        c
        for _, c in inspect.getmembers(boundary, inspect.isclass)
        if dataclasses.is_dataclass(c) and c.__module__ == boundary.__name__
    ]
    assert len(classes) > 10
    lazy = [
        f"{c.__name__}.{f.name}"
        for c in classes
        for f in dataclasses.fields(c)
        if isinstance(f.type, str)
    ]
    assert lazy == []
