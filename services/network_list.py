"""Which scanner-network list is in force: a refreshed one under JOURNEYS_HOME, else the shipped.

`journeys networks update` writes `$JOURNEYS_HOME/scanner_networks.json`; the judge and
`journeys classify` pick it up (the judge notices a newer file without a restart).
A refreshed file that does not parse is reported, never half-used: the shipped list
stays in force until a valid one is written.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from classifier import NetworkIndex, NetworkListError, load_document_text, shipped_document_text

log = logging.getLogger("journeys.networks")

OVERRIDE_FILE = "scanner_networks.json"


def override_path(home: Path) -> Path:
    return home / OVERRIDE_FILE


@dataclass(frozen=True)
class ActiveList:
    index: NetworkIndex
    as_of: date
    path: Path | None  # None: the shipped list
    entries: int


def current_document(home: Path) -> tuple[dict[str, Any], Path | None]:
    """The document in force as JSON (the base a refresh builds on) and where it came from."""
    path = override_path(home)
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        try:
            load_document_text(text)
            doc: dict[str, Any] = json.loads(text)
            return doc, path
        except NetworkListError:
            log.warning("ignoring invalid network list at %s; using the shipped list", path)
    shipped: dict[str, Any] = json.loads(shipped_document_text())
    return shipped, None


def load_active(home: Path) -> ActiveList:
    path = override_path(home)
    if path.is_file():
        try:
            as_of, index = load_document_text(path.read_text(encoding="utf-8"))
            return ActiveList(index, as_of, path, len(index))
        except NetworkListError as exc:
            log.warning(
                "ignoring invalid network list at %s (%s); using the shipped list", path, exc
            )
    as_of, index = load_document_text(shipped_document_text())
    return ActiveList(index, as_of, None, len(index))


class NetworkListCache:
    """Reloads the list when the override file appears, changes or goes away (one stat per call)."""

    def __init__(self, home: Path) -> None:
        self._path = override_path(home)
        self._home = home
        self._stamp: tuple[int, int] | None = None
        self._active: ActiveList | None = None

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def get(self) -> ActiveList:
        stamp = self._file_stamp()
        if self._active is None or stamp != self._stamp:
            self._active = load_active(self._home)
            self._stamp = stamp
        return self._active


def write_override(home: Path, document: dict[str, Any]) -> Path:
    """Validate then atomically replace the override file."""
    text = json.dumps(document, indent=1, ensure_ascii=False) + "\n"
    load_document_text(text)  # raises NetworkListError naming the bad entry
    home.mkdir(parents=True, exist_ok=True)
    path = override_path(home)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
