"""Known proxy, scanner and cloud networks, and a fast "which network is this IP in" lookup.

The shipped list (data/scanner_networks.json) is dated and every entry names the
public page it came from. Lookup hashes the address masked to each prefix length
present in the list, most specific first: at most ~25 dict probes per IPv4 lookup
whatever the list size, no scan over the entries.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from importlib import resources
from typing import Any, Literal, cast

Scope = Literal["mpp_proxy", "image_proxy", "link_scanner", "cloud"]
SCOPES: frozenset[str] = frozenset({"mpp_proxy", "image_proxy", "link_scanner", "cloud"})

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DATA_PACKAGE = "classifier.data"
DATA_FILE = "scanner_networks.json"


class NetworkListError(ValueError):
    """The network list document is malformed; the message names the entry and field."""


@dataclass(frozen=True, slots=True)
class NetworkRange:
    network: IPNetwork
    owner: str
    scope: Scope
    certainty: float
    source: str
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "cidr": str(self.network),
            "owner": self.owner,
            "scope": self.scope,
            "certainty": self.certainty,
            "source": self.source,
        }
        if self.note:
            out["note"] = self.note
        return out


def parse_ip(value: str) -> IPAddress | None:
    """The address, with IPv4-mapped IPv6 (::ffff:a.b.c.d) unwrapped; None if unparseable."""
    try:
        addr = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def client_prefix(value: str) -> str | None:
    """The /24 (IPv4) or /48 (IPv6) a client address sits in: one scanner farm, one office."""
    addr = parse_ip(value)
    if addr is None:
        return None
    bits = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{bits}", strict=False))


class NetworkIndex:
    """Longest-prefix match over a fixed set of ranges."""

    def __init__(self, ranges: Iterable[NetworkRange]) -> None:
        # version -> prefix length -> network address as int -> range
        self._tables: dict[int, dict[int, dict[int, NetworkRange]]] = {4: {}, 6: {}}
        count = 0
        for item in ranges:
            net = item.network
            by_len = self._tables[net.version].setdefault(net.prefixlen, {})
            key = int(net.network_address)
            current = by_len.get(key)
            # Two entries for the same block: keep the more certain one.
            if current is None or item.certainty > current.certainty:
                by_len[key] = item
            count += 1
        self._lengths: dict[int, list[int]] = {
            version: sorted(table, reverse=True) for version, table in self._tables.items()
        }
        self._size = count

    def __len__(self) -> int:
        return self._size

    def lookup(self, ip: str) -> NetworkRange | None:
        addr = parse_ip(ip)
        if addr is None:
            return None
        return self.lookup_address(addr)

    def lookup_address(self, addr: IPAddress) -> NetworkRange | None:
        width = 32 if addr.version == 4 else 128
        value = int(addr)
        table = self._tables[addr.version]
        for length in self._lengths[addr.version]:
            mask = ((1 << length) - 1) << (width - length) if length else 0
            hit = table[length].get(value & mask)
            if hit is not None:
                return hit
        return None


def _entry_error(index: int, message: str) -> NetworkListError:
    return NetworkListError(f"entries[{index}]: {message}")


def parse_entry(raw: Mapping[str, Any], index: int = 0) -> NetworkRange:
    cidr = raw.get("cidr")
    if not isinstance(cidr, str):
        raise _entry_error(index, "cidr must be a string")
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise _entry_error(index, "cidr is not a valid network") from None
    owner = raw.get("owner")
    if not isinstance(owner, str) or not owner:
        raise _entry_error(index, "owner must be a non-empty string")
    scope = raw.get("scope")
    if scope not in SCOPES:
        raise _entry_error(index, f"scope must be one of {sorted(SCOPES)}")
    certainty = raw.get("certainty")
    if isinstance(certainty, bool) or not isinstance(certainty, int | float):
        raise _entry_error(index, "certainty must be a number")
    if not 0.0 <= float(certainty) <= 1.0:
        raise _entry_error(index, "certainty must be between 0 and 1")
    source = raw.get("source")
    if not isinstance(source, str) or not source.startswith(("https://", "http://")):
        raise _entry_error(index, "source must be a public URL")
    note = raw.get("note", "")
    if not isinstance(note, str):
        raise _entry_error(index, "note must be a string")
    return NetworkRange(network, owner, cast(Scope, scope), float(certainty), source, note)


def parse_document(doc: Mapping[str, Any]) -> tuple[date, list[NetworkRange]]:
    """Validate a network list document and return its date and ranges."""
    as_of_raw = doc.get("as_of")
    if not isinstance(as_of_raw, str):
        raise NetworkListError("as_of must be an ISO date string")
    try:
        as_of = date.fromisoformat(as_of_raw)
    except ValueError:
        raise NetworkListError("as_of is not a valid ISO date") from None
    entries = doc.get("entries")
    if not isinstance(entries, Sequence) or isinstance(entries, str | bytes):
        raise NetworkListError("entries must be a list")
    ranges = []
    for index, raw in enumerate(entries):
        if not isinstance(raw, Mapping):
            raise _entry_error(index, "must be an object")
        ranges.append(parse_entry(raw, index))
    return as_of, ranges


def load_document_text(text: str) -> tuple[date, NetworkIndex]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NetworkListError(f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(doc, Mapping):
        raise NetworkListError("the document must be a JSON object")
    as_of, ranges = parse_document(doc)
    return as_of, NetworkIndex(ranges)


def shipped_document_text() -> str:
    return resources.files(DATA_PACKAGE).joinpath(DATA_FILE).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def default_index() -> NetworkIndex:
    """The shipped list, read once per process (never at judge time)."""
    return load_document_text(shipped_document_text())[1]


def shipped_as_of() -> date:
    return load_document_text(shipped_document_text())[0]
