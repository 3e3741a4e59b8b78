"""Rebuild the network list from the providers' published files.

No network access here: the caller (`journeys networks update`) fetches each
source's `fetch` address and hands the texts to build_networks_document, which
parses, collapses and dates them. Sources not fetched keep their current entries,
and a fetched source that yields nothing is an error rather than a silently
shorter list (a moved URL should be noticed).
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from classifier.networks import (
    IPNetwork,
    NetworkListError,
    NetworkRange,
    Scope,
    parse_document,
)

Format = Literal[
    "google_json",  # {"prefixes": [{"ipv4Prefix"|"ipv6Prefix": ...}]}: goog.json, cloud.json
    "apple_egress_csv",  # prefix,country,region,city,
    "spf",  # an SPF TXT record: ip4:/ip6: terms
    "cidr_lines",  # one CIDR per line, '#' comments
    "m365_endpoints_json",  # endpoints.office.com list; select = comma-separated endpoint ids
    "aws_json",  # ip-ranges.amazonaws.com; select = service name
    "azure_service_tags_json",  # ServiceTags_Public; select = tag name
]


@dataclass(frozen=True, slots=True)
class PublishedSource:
    fetch: str  # what the updater retrieves: an https URL, or dns-txt:NAME for SPF records
    source: str  # the public page recorded on each entry
    owner: str
    scope: Scope
    certainty: float
    format: Format
    select: str = ""
    note: str = ""


_MIMECAST_DOC = "https://community.mimecast.com/docs/DOC-2010"

PUBLISHED_SOURCES: tuple[PublishedSource, ...] = (
    PublishedSource(
        "https://mask-api.icloud.com/egress-ip-ranges.csv",
        "https://mask-api.icloud.com/egress-ip-ranges.csv",
        "Apple iCloud Private Relay",
        "mpp_proxy",
        0.6,
        "apple_egress_csv",
        note="Mail Privacy Protection fetches through this relay; so does Private Relay Safari.",
    ),
    PublishedSource(
        "https://developers.google.com/static/crawling/ipranges/user-triggered-fetchers-google.json",
        "https://developers.google.com/static/crawling/ipranges/user-triggered-fetchers-google.json",
        "Google (Gmail image proxy, user-triggered fetchers)",
        "image_proxy",
        0.85,
        "google_json",
    ),
    PublishedSource(
        "https://endpoints.office.com/endpoints/worldwide?clientrequestid=b10c5ed1-bad1-445f-b386-b919946339a7",
        "https://learn.microsoft.com/en-us/microsoft-365/enterprise/urls-and-ip-address-ranges",
        "Microsoft Exchange Online Protection",
        "link_scanner",
        0.9,
        "m365_endpoints_json",
        select="9,10",
    ),
    PublishedSource(
        "dns-txt:spf.protection.outlook.com",
        "https://learn.microsoft.com/en-us/microsoft-365/enterprise/urls-and-ip-address-ranges",
        "Microsoft Exchange Online Protection",
        "link_scanner",
        0.9,
        "spf",
    ),
    PublishedSource(
        "https://www.gstatic.com/ipranges/cloud.json",
        "https://www.gstatic.com/ipranges/cloud.json",
        "Google Cloud",
        "cloud",
        0.4,
        "google_json",
    ),
    PublishedSource(
        "https://ip-ranges.amazonaws.com/ip-ranges.json",
        "https://ip-ranges.amazonaws.com/ip-ranges.json",
        "Amazon Web Services",
        "cloud",
        0.4,
        "aws_json",
        select="EC2",
    ),
    *(
        PublishedSource(
            f"dns-txt:{region}._netblocks.mimecast.com",
            _MIMECAST_DOC,
            f"Mimecast ({region.upper()})",
            "link_scanner",
            0.9,
            "spf",
            note=f"From Mimecast's {region}._netblocks.mimecast.com SPF record.",
        )
        for region in ("us", "eu", "za", "de", "au", "ca")
    ),
)


def _network(text: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None


def _google_json(text: str) -> Iterator[str]:
    doc = json.loads(text)
    for item in doc.get("prefixes", []):
        if isinstance(item, Mapping):
            value = item.get("ipv4Prefix") or item.get("ipv6Prefix")
            if isinstance(value, str):
                yield value


def _apple_csv(text: str) -> Iterator[str]:
    for row in csv.reader(io.StringIO(text)):
        if row:
            yield row[0]


def _spf(text: str) -> Iterator[str]:
    for term in text.replace('"', " ").split():
        lowered = term.lower()
        if lowered.startswith(("ip4:", "ip6:")):
            yield term[4:]


def _cidr_lines(text: str) -> Iterator[str]:
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            yield line.split()[0]


def _m365(text: str, select: str) -> Iterator[str]:
    wanted = {int(part) for part in select.split(",") if part.strip()}
    for item in json.loads(text):
        if not isinstance(item, Mapping):
            continue
        if wanted and item.get("id") not in wanted:
            continue
        for value in item.get("ips", []):
            if isinstance(value, str):
                yield value


def _aws(text: str, select: str) -> Iterator[str]:
    doc = json.loads(text)
    for key, field in (("prefixes", "ip_prefix"), ("ipv6_prefixes", "ipv6_prefix")):
        for item in doc.get(key, []):
            if not isinstance(item, Mapping):
                continue
            if select and item.get("service") != select:
                continue
            value = item.get(field)
            if isinstance(value, str):
                yield value


def _azure(text: str, select: str) -> Iterator[str]:
    doc = json.loads(text)
    for item in doc.get("values", []):
        if not isinstance(item, Mapping) or (select and item.get("name") != select):
            continue
        props = item.get("properties", {})
        for value in props.get("addressPrefixes", []) if isinstance(props, Mapping) else []:
            if isinstance(value, str):
                yield value


def extract_networks(text: str, fmt: Format, select: str = "") -> list[IPNetwork]:
    """Parse one published file and collapse its prefixes (IPv4 first, then IPv6)."""
    try:
        if fmt == "google_json":
            raw: Iterable[str] = list(_google_json(text))
        elif fmt == "apple_egress_csv":
            raw = _apple_csv(text)
        elif fmt == "spf":
            raw = _spf(text)
        elif fmt == "cidr_lines":
            raw = _cidr_lines(text)
        elif fmt == "m365_endpoints_json":
            raw = list(_m365(text, select))
        elif fmt == "aws_json":
            raw = list(_aws(text, select))
        elif fmt == "azure_service_tags_json":
            raw = list(_azure(text, select))
        else:
            raise NetworkListError(f"unknown source format {fmt!r}")
    except (json.JSONDecodeError, AttributeError, TypeError):
        raise NetworkListError(f"source text is not valid {fmt} data") from None
    v4: list[ipaddress.IPv4Network] = []
    v6: list[ipaddress.IPv6Network] = []
    for value in raw:
        net = _network(value)
        if isinstance(net, ipaddress.IPv4Network):
            v4.append(net)
        elif isinstance(net, ipaddress.IPv6Network):
            v6.append(net)
    out: list[IPNetwork] = list(ipaddress.collapse_addresses(v4))
    out.extend(ipaddress.collapse_addresses(v6))
    return out


def _covers(spec: PublishedSource, entry: NetworkRange) -> bool:
    # Hand summaries carry a qualified owner ("... (Akamai egress)") under the same source.
    return entry.source == spec.source and entry.owner.startswith(spec.owner)


def _sort_key(item: NetworkRange) -> tuple[int, int, int, str]:
    net = item.network
    return (net.version, int(net.network_address), net.prefixlen, item.owner)


def build_networks_document(
    fetched: Mapping[str, str],
    as_of: date,
    *,
    sources: Sequence[PublishedSource] = PUBLISHED_SOURCES,
    base: Mapping[str, Any] | None = None,
    description: str = "",
) -> dict[str, Any]:
    """A dated network list: fetched sources rebuilt, the rest of `base` kept as it was.

    `fetched` maps a source's `fetch` address to the text retrieved from it.
    """
    rebuilt: list[NetworkRange] = []
    replaced: list[PublishedSource] = []
    for spec in sources:
        text = fetched.get(spec.fetch)
        if text is None:
            continue
        networks = extract_networks(text, spec.format, spec.select)
        if not networks:
            raise NetworkListError(f"source {spec.fetch} yielded no networks")
        replaced.append(spec)
        rebuilt.extend(
            NetworkRange(net, spec.owner, spec.scope, spec.certainty, spec.source, spec.note)
            for net in networks
        )
    kept: list[NetworkRange] = []
    base_description = ""
    if base is not None:
        _, base_ranges = parse_document(base)
        kept = [r for r in base_ranges if not any(_covers(spec, r) for spec in replaced)]
        raw_description = base.get("description", "")
        base_description = raw_description if isinstance(raw_description, str) else ""
    entries = sorted([*kept, *rebuilt], key=_sort_key)
    return {
        "as_of": as_of.isoformat(),
        "description": description or base_description,
        "entries": [entry.as_json() for entry in entries],
    }
