"""No PHI in logs: library exception messages withheld, ours kept; access logs cleaned."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from core import logsafe
from services.errors import NotFound

SECRET = "pat.secret@example.com"


@pytest.fixture()
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    logsafe.install()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    logger = logging.getLogger(f"logsafe-test-{id(out)}")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, out
    logger.removeHandler(handler)


def test_library_exception_messages_are_withheld(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured
    try:
        try:
            raise KeyError(SECRET)
        except KeyError as inner:
            raise ValueError(f"bad row for {SECRET}") from inner
    except ValueError:
        logger.exception("import failed")
    text = out.getvalue()
    assert SECRET not in text
    assert "import failed" in text
    assert "KeyError: " + logsafe.WITHHELD in text and "ValueError: " + logsafe.WITHHELD in text
    assert "direct cause" in text and "test_logsafe.py" in text  # the traceback's locations stay


def test_our_own_exception_messages_are_kept(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = captured
    try:
        raise NotFound("contact not found", {"contact_id": "c_1"})
    except NotFound:
        logger.error("lookup failed", exc_info=True)
    assert "services.errors.NotFound: contact not found" in out.getvalue()


def test_exceptions_passed_as_arguments_are_described(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured
    logger.warning("send failed: %s (%r)", RuntimeError(SECRET), OSError(5, SECRET))
    logger.warning(ValueError(SECRET))  # type: ignore[arg-type]
    text = out.getvalue()
    assert SECRET not in text
    assert "RuntimeError: " + logsafe.WITHHELD in text and "ValueError" in text


def test_access_log_drops_query_strings_and_masks_tracking_clients() -> None:
    logsafe.install()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger("uvicorn.access")
    access.addHandler(handler)
    old_level, access.level = access.level, logging.INFO
    try:
        fmt = '%s - "%s %s HTTP/%s" %d'
        access.info(fmt, "203.0.113.9:5000", "GET", "/t/c/TOKEN?email=" + SECRET, "1.1", 302)
        access.info(fmt, "10.0.0.1:5000", "GET", "/v1/contacts/c_1?x=" + SECRET, "1.1", 200)
    finally:
        access.removeHandler(handler)
        access.level = old_level
    lines = out.getvalue().splitlines()
    assert lines == [
        '- - "GET /t/c/TOKEN HTTP/1.1" 302',
        '10.0.0.1:5000 - "GET /v1/contacts/c_1 HTTP/1.1" 200',
    ]


def test_install_is_idempotent() -> None:
    logsafe.install()
    factory = logging.getLogRecordFactory()
    logsafe.install()
    assert logging.getLogRecordFactory() is factory
