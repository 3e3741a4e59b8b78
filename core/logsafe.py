"""Keeps PHI out of logs (SPEC section 7), whatever logger or handler writes them.

Exception messages of libraries can quote data: psycopg's "Key (external_id)=(mrn-1)
already exists", pydantic's input echo, an SMTP server's "550 <pat@example.com>: no
such user", a Jinja error quoting a template value. So every log record, when it is
created, gets:

* its exception (exc_info) rendered as the traceback's code locations and exception
  TYPES only; the message is kept only for our own exceptions, which by rule name
  fields and ids, never values (services.errors, core.codec, ...);
* exception objects passed as %-arguments replaced the same way;
* for uvicorn's access log (when someone turns it on), the query string dropped
  from the path, and the client address masked on tracking and unsubscribe paths
  (a patient's IP next to their message's token is PHI).

Libraries that log the data they carry at INFO/DEBUG are held at WARNING: aiosmtpd
("mail.log", the dev SMTP sink) logs every RCPT TO address and message line.

It is a LogRecord factory, so it applies to handlers configured later as well
(uvicorn's dictConfig, pytest's caplog). `install()` is idempotent.
"""

from __future__ import annotations

import logging
import traceback
from types import TracebackType
from typing import Any

# Packages whose exception messages are written to be PHI-free (names and ids only).
OWN_PACKAGES = frozenset(
    {
        "api",
        "services",
        "core",
        "workflows",
        "activities",
        "dsl",
        "mail",
        "classifier",
        "devstack",
        "cli",
        "worker",
    }
)
WITHHELD = "<message withheld: may carry data>"
_MASKED_PATH_PREFIXES = ("/t/", "/u/")
# Loggers that write payload data below WARNING.
DATA_LOGGERS = ("mail.log",)
_MAX_CHAIN = 10

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def _is_own(exc: BaseException) -> bool:
    return type(exc).__module__.split(".", 1)[0] in OWN_PACKAGES


def describe(exc: BaseException) -> str:
    """`module.Type: message` for our own exceptions, `module.Type` otherwise."""
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    if _is_own(exc):
        text = str(exc)
        return f"{name}: {text}" if text else name
    return f"{name}: {WITHHELD}" if str(exc) else name


def format_exception(exc: BaseException) -> str:
    """A traceback (file, line, function, code) with messages withheld, causes included."""
    chain: list[tuple[BaseException, str | None]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    link: str | None = None
    while current is not None and id(current) not in seen and len(chain) < _MAX_CHAIN:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = (
                current.__cause__,
                "The above exception was the direct cause of the following exception:",
            )
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = (
                current.__context__,
                "During handling of the above exception, another exception occurred:",
            )
        else:
            current = None
    parts: list[str] = []
    for item, joiner in reversed(chain):
        tb = "".join(traceback.format_list(traceback.extract_tb(item.__traceback__)))
        if tb:
            parts.append("Traceback (most recent call last):\n" + tb + describe(item))
        else:
            parts.append(describe(item))
        if joiner:
            parts.append("\n" + joiner + "\n")
    return "\n".join(parts)


def _clean_access_args(args: tuple[Any, ...]) -> tuple[Any, ...]:
    # uvicorn.access: (client_addr, method, full_path, http_version, status_code)
    if len(args) != 5:
        return args
    client, method, path, version, status = args
    path = str(path).split("?", 1)[0]
    if path.startswith(_MASKED_PATH_PREFIXES):
        client = "-"
    return (client, method, path, version, status)


def sanitize(record: logging.LogRecord) -> logging.LogRecord:
    exc_info = record.exc_info
    if exc_info and isinstance(exc_info, tuple) and exc_info[1] is not None:
        record.exc_text = format_exception(exc_info[1])
        record.exc_info = None
    if isinstance(record.msg, BaseException):
        record.msg = describe(record.msg)
    if isinstance(record.args, tuple) and record.args:
        args = tuple(describe(a) if isinstance(a, BaseException) else a for a in record.args)
        if record.name == "uvicorn.access":
            args = _clean_access_args(args)
        record.args = args
    return record


def install() -> None:
    for name in DATA_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_journeys_logsafe", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return sanitize(previous(*args, **kwargs))

    factory._journeys_logsafe = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
