"""Reading CSV and NDJSON imports as a stream: any chunking, quoted newlines, BOM, CRLF,
bad bytes, header problems; rows and lines numbered for the error report."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from services.contact_import import _csv_records, _ndjson_records, format_for
from services.errors import Invalid

CSV = (
    "\ufeffexternal_id,email,note\r\n"
    "p1,a@example.com,plain\r\n"
    '"p2",b@example.com,"two\r\nlines, and ""quotes"""\r\n'
    "\r\n"
    "p3,c@example.com\r\n"
    "p4,d@example.com,caf\xe9\r\n"
).encode()


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def _read_csv(data: bytes, size: int) -> list[tuple[int, int, object, dict[str, object],
                                                           list[str]]]:
    return [
        (r.row, r.line, r.external_id, r.attributes, [p.code for p in r.problems])
        async for r in _csv_records(_chunks(data, size))
    ]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 1 << 16])
async def test_csv_any_chunking(size: int) -> None:
    assert await _read_csv(CSV, size) == [
        (1, 2, "p1", {"note": "plain"}, []),
        (2, 3, "p2", {"note": 'two\r\nlines, and "quotes"'}, []),
        (3, 6, None, {}, ["field_count"]),
        (4, 7, "p4", {"note": "café"}, []),
    ]


async def test_csv_bad_bytes_are_a_row_error() -> None:
    data = b"external_id,note\nok,fine\nbad,\xff\xfe\n"
    rows = await _read_csv(data, 5)
    assert rows[1][4] == ["encoding"] and rows[0][4] == []


async def test_csv_header_problems() -> None:
    with pytest.raises(Invalid) as caught:
        await _read_csv(b"email,email,bad name\n", 64)
    codes = {p["code"] for p in caught.value.details["problems"]}
    assert codes == {"missing_column", "duplicate_column", "invalid_name"}
    with pytest.raises(Invalid):
        await _read_csv(b"", 64)


async def test_ndjson_lines() -> None:
    data = (
        json.dumps({"external_id": "a", "plan": "gold", "attributes": {"age": 3}}) + "\n\n"
        + "{broken\n" + json.dumps([1]) + "\n" + json.dumps({"external_id": "b"})
    ).encode()
    records = [r async for r in _ndjson_records(_chunks(data, 3))]
    assert [(r.row, r.line) for r in records] == [(1, 1), (2, 3), (3, 4), (4, 5)]
    assert records[0].attributes == {"plan": "gold", "age": 3}
    assert [p.code for p in records[1].problems] == ["malformed"]
    assert [p.code for p in records[2].problems] == ["malformed"]
    assert records[3].external_id == "b" and not records[3].problems


def test_format_for() -> None:
    assert format_for("text/csv; charset=utf-8") == "csv"
    assert format_for("application/x-ndjson") == "ndjson"
    assert format_for("application/octet-stream", "x.jsonl") == "ndjson"
    assert format_for("text/plain") is None
