"""Bulk contact import from CSV or NDJSON, streamed.

The body is read chunk by chunk and written in batches of `batch_size` contacts, each batch
one transaction (upsert by external_id), so 100,000 rows never sit in memory at once.
Every row is validated before its batch is written: a bad row is skipped whole and
reported by row number, line, field and why (never the value); the good rows around it are
written. `dry_run` does everything except write.

CSV: a header row naming the columns; `external_id` is required, `email` and `timezone`
are contact fields, every other column is an attribute (typed, services.attributes). An
empty cell leaves that field as it is. NDJSON: one JSON object per line with the same keys;
other keys (or an `attributes` object) are attributes, and an attribute set to null is
removed.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from core.models import new_id, utcnow
from services.attributes import (
    AttributeTypes,
    AttributeValueError,
    check_name,
    load_types,
    save_inferred,
)
from services.context import ServiceContext
from services.errors import Invalid, ServiceError
from services.identity import email_hash

Format = Literal["csv", "ndjson"]
CONTACT_FIELDS = ("external_id", "email", "timezone")
MAX_ERRORS = 1000
MAX_LINE = 1_000_000  # bytes; longer lines are reported, not buffered without end
MAX_EXTERNAL_ID = 200


class UnsupportedImport(ServiceError):
    status = 415
    code = "unsupported_media_type"


@dataclass
class RowError:
    row: int
    line: int
    field: str
    code: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "line": self.line,
            "field": self.field,
            "code": self.code,
            "message": self.message,
        }


@dataclass
class ImportReport:
    format: str
    dry_run: bool
    rows: int = 0
    created: int = 0
    updated: int = 0
    failed: int = 0
    errors: list[RowError] = field(default_factory=list)
    errors_truncated: bool = False
    seconds: float = 0.0

    def fail(self, problems: list[RowError]) -> None:
        self.failed += 1
        for problem in problems:
            if len(self.errors) >= MAX_ERRORS:
                self.errors_truncated = True
                return
            self.errors.append(problem)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "dry_run": self.dry_run,
            "rows": self.rows,
            "created": self.created,
            "updated": self.updated,
            "failed": self.failed,
            "errors": [e.as_dict() for e in self.errors],
            "errors_truncated": self.errors_truncated,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class Record:
    """One input row: its position and its raw fields (None: absent / leave as it is)."""

    row: int
    line: int
    external_id: Any
    email: Any = None
    timezone: Any = None
    attributes: dict[str, Any] = field(default_factory=dict)
    from_text: bool = False
    problems: list[RowError] = field(default_factory=list)


@dataclass
class CleanRow:
    row: int
    line: int
    external_id: str
    email: str | None
    timezone: str | None
    attributes: dict[str, Any]  # None values: remove
    raw_attributes: dict[str, Any]
    from_text: bool


def format_for(content_type: str | None, filename: str | None = None) -> Format | None:
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind in ("text/csv", "application/csv"):
        return "csv"
    if kind in ("application/x-ndjson", "application/ndjson", "application/jsonl",
                "application/x-jsonlines", "application/jsonlines"):
        return "ndjson"
    name = (filename or "").lower()
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".ndjson", ".jsonl")):
        return "ndjson"
    return None


# --- reading ------------------------------------------------------------------------------


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[int, bytes]]:
    """(line number, line bytes including its newline) from a byte stream."""
    buffer = b""
    number = 0
    first = True
    async for chunk in chunks:
        if not chunk:
            continue
        buffer += chunk
        if first and len(buffer) >= 3:
            buffer = buffer.removeprefix(codecs.BOM_UTF8)
            first = False
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            number += 1
            yield number, buffer[start : end + 1]
            start = end + 1
        buffer = buffer[start:]
        if len(buffer) > MAX_LINE:
            number += 1
            yield number, buffer  # reported as too long by the parser
            buffer = b""
    if first:
        buffer = buffer.removeprefix(codecs.BOM_UTF8)
    if buffer:
        number += 1
        yield number, buffer


def _has_bad_bytes(value: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in value)


async def _csv_records(chunks: AsyncIterator[bytes]) -> AsyncIterator[Record]:
    header: list[str] | None = None
    pending: list[str] = []
    pending_line = 0
    quotes = 0
    row = 0
    async for number, raw in _lines(chunks):
        line = raw.decode("utf-8", "surrogateescape")
        if not pending:
            pending_line = number
        pending.append(line)
        quotes += line.count('"')
        if quotes % 2 and len(raw) <= MAX_LINE:
            continue  # a quoted field runs on to the next line
        lines, pending, quotes = pending, [], 0
        if header is None:
            header = _header(lines)
            continue
        if not "".join(lines).strip():
            continue  # blank line
        row += 1
        yield _csv_record(header, lines, row, pending_line)
    if pending and header is not None and "".join(pending).strip():
        row += 1
        yield _csv_record(header, pending, row, pending_line)
    if header is None:
        raise Invalid("the CSV has no header row", {"field": "header"})


def _header(lines: list[str]) -> list[str]:
    try:
        names = next(csv.reader(lines, strict=True))
    except (csv.Error, StopIteration):
        raise Invalid("the CSV header row is malformed", {"field": "header"}) from None
    names = [n.strip() for n in names]
    problems = []
    for i, name in enumerate(names):
        if name in CONTACT_FIELDS:
            continue
        try:
            check_name(name)
        except AttributeValueError as exc:
            problems.append({"column": i + 1, "code": exc.code, "message": exc.message})
    if "external_id" not in names:
        problems.append({"column": None, "code": "missing_column",
                         "message": "the header needs an external_id column"})
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append({"column": None, "code": "duplicate_column",
                         "message": f"columns named twice: {', '.join(duplicates)}"})
    if problems:
        raise Invalid("the CSV header row is invalid", {"field": "header", "problems": problems})
    return names


def _csv_record(header: list[str], lines: list[str], row: int, line: int) -> Record:
    record = Record(row=row, line=line, external_id=None, from_text=True)
    if sum(len(x) for x in lines) > MAX_LINE:
        record.problems.append(RowError(row, line, "", "too_long", "the row is too long"))
        return record
    try:
        cells = next(csv.reader(lines, strict=True))
    except (csv.Error, StopIteration):
        record.problems.append(RowError(row, line, "", "malformed", "the row is not valid CSV"))
        return record
    if len(cells) != len(header):
        record.problems.append(
            RowError(row, line, "", "field_count",
                     f"the row has {len(cells)} fields; the header has {len(header)}")
        )
        return record
    for name, cell in zip(header, cells, strict=True):
        if _has_bad_bytes(cell):
            record.problems.append(RowError(row, line, name, "encoding", "not valid UTF-8"))
            continue
        if cell == "" or (name != "external_id" and not cell.strip()):
            continue  # empty cell: leave the field as it is
        if name == "external_id":
            record.external_id = cell.strip()
        elif name == "email":
            record.email = cell.strip()
        elif name == "timezone":
            record.timezone = cell.strip()
        else:
            record.attributes[name] = cell
    return record


async def _ndjson_records(chunks: AsyncIterator[bytes]) -> AsyncIterator[Record]:
    row = 0
    async for number, raw in _lines(chunks):
        if not raw.strip():
            continue
        row += 1
        record = Record(row=row, line=number, external_id=None)
        if len(raw) > MAX_LINE:
            record.problems.append(RowError(row, number, "", "too_long", "the line is too long"))
            yield record
            continue
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            record.problems.append(RowError(row, number, "", "encoding", "not valid UTF-8"))
            yield record
            continue
        except ValueError:
            record.problems.append(RowError(row, number, "", "malformed", "the line is not JSON"))
            yield record
            continue
        if not isinstance(data, dict):
            record.problems.append(
                RowError(row, number, "", "malformed", "each line must be a JSON object")
            )
            yield record
            continue
        record.external_id = data.pop("external_id", None)
        record.email = data.pop("email", None)
        record.timezone = data.pop("timezone", None)
        nested = data.pop("attributes", None)
        if nested is not None and not isinstance(nested, dict):
            record.problems.append(
                RowError(row, number, "attributes", "type_mismatch", "must be an object")
            )
        record.attributes = {**data, **(nested if isinstance(nested, dict) else {})}
        yield record


# --- validation ---------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def _zone_ok(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _clean(record: Record, types: AttributeTypes) -> tuple[CleanRow | None, list[RowError]]:
    problems = list(record.problems)
    row, line = record.row, record.line

    def bad(field_name: str, code: str, message: str) -> None:
        problems.append(RowError(row, line, field_name, code, message))

    if problems:
        return None, problems
    external_id = record.external_id
    if isinstance(external_id, int) and not isinstance(external_id, bool):
        external_id = str(external_id)
    if not isinstance(external_id, str) or not external_id.strip():
        bad("external_id", "missing", "external_id is required")
    elif len(external_id) > MAX_EXTERNAL_ID:
        bad("external_id", "too_long", f"external_id is at most {MAX_EXTERNAL_ID} characters")
    email = None
    if record.email is not None:
        if not isinstance(record.email, str):
            bad("email", "type_mismatch", "email must be a string")
        else:
            try:
                email = validate_email(record.email, check_deliverability=False).normalized
            except EmailNotValidError:
                bad("email", "invalid_email", "not a valid e-mail address")
    timezone = None
    if record.timezone is not None:
        if not isinstance(record.timezone, str) or not _zone_ok(record.timezone):
            bad("timezone", "invalid_timezone", "not a known IANA time zone")
        else:
            timezone = record.timezone
    newly_typed = set(types.inferred)
    attrs, attr_problems = types.clean(record.attributes, from_text=record.from_text)
    for p in attr_problems:
        bad(p.field, p.code, p.message)
    if problems:
        # A rejected row must not decide an attribute's type.
        for name in types.inferred.keys() - newly_typed:
            del types.inferred[name]
        return None, problems
    assert isinstance(external_id, str)
    return (
        CleanRow(row, line, external_id, email, timezone, attrs, record.attributes,
                 record.from_text),
        [],
    )


# --- writing ------------------------------------------------------------------------------


@dataclass
class _Batch:
    rows: dict[str, CleanRow] = field(default_factory=dict)
    inferred: dict[str, str] = field(default_factory=dict)  # types first seen in this batch

    def add(self, clean: CleanRow) -> None:
        earlier = self.rows.get(clean.external_id)
        if earlier is None:
            self.rows[clean.external_id] = clean
            return
        # The same contact twice in one batch: later values win, attributes merge.
        earlier.email = clean.email or earlier.email
        earlier.timezone = clean.timezone or earlier.timezone
        earlier.attributes = {**earlier.attributes, **clean.attributes}
        earlier.raw_attributes = {**earlier.raw_attributes, **clean.raw_attributes}

    def __len__(self) -> int:
        return len(self.rows)


async def _write(
    ctx: ServiceContext,
    batch: _Batch,
    types: AttributeTypes,
    report: ImportReport,
    clashes: dict[str, str],
) -> tuple[list[str], list[str], set[str]]:
    """Upserts the batch in one transaction; returns (created ids, updated ids, attribute
    names that changed on updated contacts)."""
    s = ctx.session
    if not report.dry_run and batch.inferred:
        clashes.update(await save_inferred(ctx, types, batch.inferred))
    if clashes:
        # Another writer typed a new attribute first: re-read those rows by its type.
        for key, clean in list(batch.rows.items()):
            if not clashes.keys() & clean.raw_attributes.keys():
                continue
            attrs, problems = types.clean(clean.raw_attributes, from_text=clean.from_text)
            if problems:
                del batch.rows[key]
                report.fail([RowError(clean.row, clean.line, p.field, p.code, p.message)
                             for p in problems])
            else:
                clean.attributes = attrs
    if not batch.rows:
        await s.commit()
        return [], [], set()
    ids = list(batch.rows)
    lock = "" if report.dry_run else " FOR UPDATE"
    existing = {
        ext: (cid, tz, email, ehash, attrs)
        for ext, cid, tz, email, ehash, attrs in (
            await s.exec(  # type: ignore[call-overload]
                text(
                    "SELECT external_id, id, timezone, email, email_hash, attributes FROM contact "
                    f"WHERE external_id = ANY(CAST(:ids AS text[])){lock}"
                ).bindparams(ids=ids)
            )
        ).all()
    }
    now = utcnow()
    values: list[dict[str, Any]] = []
    created: list[str] = []
    updated: list[str] = []
    changed: set[str] = set()
    pepper = ctx.pepper
    for ext, clean in batch.rows.items():
        found = existing.get(ext)
        before: dict[str, Any] = dict(found[4] or {}) if found else {}
        merged = {k: v for k, v in {**before, **clean.attributes}.items() if v is not None}
        cid = found[0] if found else new_id("c")
        email = clean.email if clean.email is not None else (found[2] if found else None)
        if clean.email is not None:
            ehash: str | None = email_hash(clean.email, pepper)
        else:
            ehash = found[3] if found else None
        values.append(
            {
                "id": cid,
                "external_id": ext,
                "email": email,
                "email_hash": ehash,
                "timezone": clean.timezone or (found[1] if found else "UTC"),
                "attributes": merged,
            }
        )
        if found:
            updated.append(cid)
            changed |= {k for k in before.keys() | merged.keys() if before.get(k) != merged.get(k)}
        else:
            created.append(cid)
    if report.dry_run:
        await s.rollback()
        return created, updated, changed
    # One statement over parallel arrays: compiled once, whatever the batch size.
    await s.exec(  # type: ignore[call-overload]
        text(
            "INSERT INTO contact (id, external_id, email, email_hash, timezone, attributes, "
            "created_at, updated_at) "
            "SELECT id, ext, email, ehash, tz, attrs, CAST(:now AS timestamptz), "
            "CAST(:now AS timestamptz) FROM unnest(CAST(:ids AS text[]), "
            "CAST(:exts AS text[]), CAST(:emails AS text[]), CAST(:hashes AS text[]), "
            "CAST(:tzs AS text[]), CAST(:attrs AS jsonb[])) "
            "AS v(id, ext, email, ehash, tz, attrs) "
            "ON CONFLICT (external_id) DO UPDATE SET email = EXCLUDED.email, "
            "email_hash = EXCLUDED.email_hash, timezone = EXCLUDED.timezone, "
            "attributes = EXCLUDED.attributes, updated_at = EXCLUDED.updated_at, "
            "deleted_at = NULL"
        ).bindparams(
            now=now,
            ids=[v["id"] for v in values],
            exts=[v["external_id"] for v in values],
            emails=[v["email"] for v in values],
            hashes=[v["email_hash"] for v in values],
            tzs=[v["timezone"] for v in values],
            attrs=[json.dumps(v["attributes"]) for v in values],
        )
    )
    await s.commit()
    return created, updated, changed


async def import_contacts(
    ctx: ServiceContext,
    chunks: AsyncIterator[bytes],
    fmt: Format,
    *,
    dry_run: bool = False,
    batch_size: int = 1000,
    progress: Callable[[int], Any] | None = None,
) -> ImportReport:
    """Reads, validates and upserts contacts; see the module docstring.

    Reading and validating (Python) and writing (PostgreSQL) overlap: a writer task with
    its own session takes finished batches from a queue of two, so at most three batches
    are in memory whatever the size of the input."""
    started = time.perf_counter()
    report = ImportReport(format=fmt, dry_run=dry_run)
    types = await load_types(ctx)
    await ctx.session.commit()
    queue: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=2)
    writer = asyncio.create_task(_writer(ctx, queue, types, report, progress))
    sent: set[str] = set()

    async def hand_over(batch: _Batch) -> None:
        if writer.done():
            await writer  # the writer failed: raise its error here
            raise RuntimeError("import writer stopped")
        batch.inferred = {n: t for n, t in types.inferred.items() if n not in sent}
        sent.update(batch.inferred)
        await queue.put(batch)

    try:
        batch = _Batch()
        records = _csv_records(chunks) if fmt == "csv" else _ndjson_records(chunks)
        async for record in records:
            report.rows += 1
            clean, problems = _clean(record, types)
            if clean is None:
                report.fail(problems)
                continue
            batch.add(clean)
            if len(batch) >= batch_size:
                await hand_over(batch)
                batch = _Batch()
        if batch:
            await hand_over(batch)
        await queue.put(None)
        await writer
    except BaseException:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        raise
    report.errors.sort(key=lambda e: e.row)
    if progress is not None:
        progress(report.rows)
    report.seconds = time.perf_counter() - started
    return report


async def _writer(
    ctx: ServiceContext,
    queue: asyncio.Queue[_Batch | None],
    types: AttributeTypes,
    report: ImportReport,
    progress: Callable[[int], Any] | None,
) -> None:
    from services.segment_membership import on_contacts_changed

    clashes: dict[str, str] = {}
    async with AsyncSession(ctx.session.bind, expire_on_commit=False) as session:
        wctx = ServiceContext(session, ctx.settings, ctx.temporal, ctx.actor)
        while (batch := await queue.get()) is not None:
            created, updated, changed = await _write(wctx, batch, types, report, clashes)
            report.created += len(created)
            report.updated += len(updated)
            if not report.dry_run:
                # Rule segments: new contacts against every rule, updated ones against the
                # rules reading the attributes that changed.
                if created:
                    await on_contacts_changed(wctx, created)
                if updated and changed:
                    kinds = {f"attr:{k}" for k in changed}
                    await on_contacts_changed(wctx, updated, kinds=kinds)
            if progress is not None:
                progress(report.rows)


def iter_file(path: str, chunk_size: int = 1 << 16) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            yield chunk
