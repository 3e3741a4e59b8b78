"""The shipped network list, the lookup, and rebuilding the list from published files."""

from __future__ import annotations

import ipaddress
import json
import time
from datetime import date

import pytest

from classifier import (
    NetworkIndex,
    NetworkListError,
    NetworkRange,
    build_networks_document,
    extract_networks,
    load_document_text,
    shipped_document_text,
)
from classifier.network_sources import PUBLISHED_SOURCES, PublishedSource
from classifier.networks import client_prefix, default_index, parse_document


def rng(
    cidr: str, scope: str = "link_scanner", certainty: float = 0.9, owner: str = "X"
) -> NetworkRange:
    return NetworkRange(ipaddress.ip_network(cidr), owner, scope, certainty, "https://example.org")  # type: ignore[arg-type]


def test_shipped_list_is_dated_sourced_and_covers_each_scope() -> None:
    doc = json.loads(shipped_document_text())
    as_of, ranges = parse_document(doc)
    assert as_of >= date(2026, 1, 1)
    assert {r.scope for r in ranges} == {"mpp_proxy", "image_proxy", "link_scanner", "cloud"}
    owners = " ".join(r.owner for r in ranges)
    for vendor in ("Apple", "Google", "Microsoft", "Proofpoint", "Mimecast", "Barracuda", "Cisco"):
        assert vendor in owners
    assert all(r.source.startswith("https://") for r in ranges)


@pytest.mark.parametrize(
    ("ip", "scope", "owner_part"),
    [
        ("172.225.1.2", "mpp_proxy", "Apple"),
        ("66.249.84.10", "image_proxy", "Google"),
        ("40.94.1.2", "link_scanner", "Defender"),
        ("40.107.7.7", "link_scanner", "Exchange Online Protection"),
        ("20.85.14.7", "cloud", "Azure"),
        ("205.139.110.61", "link_scanner", "Mimecast"),
        ("::ffff:205.139.110.61", "link_scanner", "Mimecast"),
    ],
)
def test_default_lookup(ip: str, scope: str, owner_part: str) -> None:
    hit = default_index().lookup(ip)
    assert hit is not None and hit.scope == scope and owner_part in hit.owner


def test_lookup_misses_and_bad_input() -> None:
    index = default_index()
    assert index.lookup("73.15.22.41") is None
    assert index.lookup("not an ip") is None
    assert index.lookup("") is None


def test_most_specific_range_wins() -> None:
    index = NetworkIndex([rng("40.80.0.0/12", "cloud", 0.5), rng("40.94.0.0/16", "link_scanner")])
    hit = index.lookup("40.94.3.3")
    assert hit is not None and hit.scope == "link_scanner"
    wide = index.lookup("40.81.3.3")
    assert wide is not None and wide.scope == "cloud"
    assert index.lookup("40.96.0.1") is None


def test_ipv6_lookup_and_client_prefix() -> None:
    index = NetworkIndex([rng("2a01:111:f400::/48")])
    assert index.lookup("2a01:111:f400:1::9") is not None
    assert index.lookup("2a01:111:f401::9") is None
    assert client_prefix("88.198.10.20") == "88.198.10.0/24"
    assert client_prefix("2607:fb90:8e21:1::5") == "2607:fb90:8e21::/48"
    assert client_prefix("garbage") is None


def test_lookup_cost_does_not_grow_with_the_list() -> None:
    big = NetworkIndex(rng(f"10.{a}.{b}.0/24") for a in range(40) for b in range(250))
    assert len(big) == 10_000
    start = time.perf_counter()
    for n in range(20_000):
        big.lookup(f"11.0.{n % 250}.1")
    per_lookup = (time.perf_counter() - start) / 20_000
    assert per_lookup < 50e-6  # a linear scan over 10k ranges would take milliseconds


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        (
            {
                "cidr": "nope",
                "owner": "A",
                "scope": "cloud",
                "certainty": 0.5,
                "source": "https://a",
            },
            "cidr",
        ),
        (
            {
                "cidr": "1.2.3.0/24",
                "owner": "",
                "scope": "cloud",
                "certainty": 0.5,
                "source": "https://a",
            },
            "owner",
        ),
        (
            {
                "cidr": "1.2.3.0/24",
                "owner": "A",
                "scope": "isp",
                "certainty": 0.5,
                "source": "https://a",
            },
            "scope",
        ),
        (
            {
                "cidr": "1.2.3.0/24",
                "owner": "A",
                "scope": "cloud",
                "certainty": 2,
                "source": "https://a",
            },
            "certainty",
        ),
        (
            {
                "cidr": "1.2.3.0/24",
                "owner": "A",
                "scope": "cloud",
                "certainty": 0.5,
                "source": "a list",
            },
            "source",
        ),
    ],
)
def test_malformed_entries_are_rejected_by_field(entry: dict[str, object], field: str) -> None:
    valid = {
        "cidr": "1.1.1.0/24",
        "owner": "ok",
        "scope": "cloud",
        "certainty": 0.1,
        "source": "https://a",
    }
    with pytest.raises(NetworkListError, match=rf"entries\[1\].*{field}"):
        parse_document({"as_of": "2026-01-01", "entries": [valid, entry]})


def test_document_needs_a_date() -> None:
    with pytest.raises(NetworkListError, match="as_of"):
        load_document_text(json.dumps({"entries": []}))


# --- rebuilding from published files ------------------------------------------------------

GOOGLE = json.dumps(
    {
        "creationTime": "x",
        "prefixes": [
            {"ipv4Prefix": "66.249.80.0/24"},
            {"ipv4Prefix": "66.249.81.0/24"},
            {"ipv6Prefix": "2001:4860:4801:10::/64"},
        ],
    }
)
APPLE = (
    "172.224.226.0/27,US,US-CA,Los Angeles,\n"
    "172.224.226.32/27,US,US-CA,Los Angeles,\n"
    "2a02:26f7:b3c0::/45,DE,,,\n"
)
SPF = '"v=spf1 ip4:207.211.31.0/25 ip4:205.139.110.0/24 ip6:2a01:111:f400::/48 include:x ~all"'
M365 = json.dumps(
    [
        {"id": 9, "serviceArea": "Exchange", "ips": ["40.92.0.0/15", "40.107.0.0/16"]},
        {"id": 1, "serviceArea": "Exchange", "ips": ["40.96.0.0/13"]},
    ]
)
AWS = json.dumps(
    {
        "prefixes": [
            {"ip_prefix": "3.5.0.0/16", "service": "EC2"},
            {"ip_prefix": "52.94.0.0/22", "service": "AMAZON"},
        ],
        "ipv6_prefixes": [{"ipv6_prefix": "2600:1f00::/24", "service": "EC2"}],
    }
)
AZURE = json.dumps(
    {
        "values": [
            {"name": "AzureCloud", "properties": {"addressPrefixes": ["20.33.0.0/16"]}},
            {"name": "Storage", "properties": {"addressPrefixes": ["20.60.0.0/16"]}},
        ]
    }
)


def test_extract_each_format() -> None:
    def cidrs(text: str, fmt: str, select: str = "") -> list[str]:
        return [str(n) for n in extract_networks(text, fmt, select)]  # type: ignore[arg-type]

    assert cidrs(GOOGLE, "google_json") == ["66.249.80.0/23", "2001:4860:4801:10::/64"]  # collapsed
    assert cidrs(APPLE, "apple_egress_csv") == ["172.224.226.0/26", "2a02:26f7:b3c0::/45"]
    assert cidrs(SPF, "spf") == ["205.139.110.0/24", "207.211.31.0/25", "2a01:111:f400::/48"]
    assert cidrs(M365, "m365_endpoints_json", "9") == ["40.92.0.0/15", "40.107.0.0/16"]
    assert cidrs(AWS, "aws_json", "EC2") == ["3.5.0.0/16", "2600:1f00::/24"]
    assert cidrs(AZURE, "azure_service_tags_json", "AzureCloud") == ["20.33.0.0/16"]
    assert cidrs("# header\n10.0.0.0/8 comment\n\n", "cidr_lines") == ["10.0.0.0/8"]
    with pytest.raises(NetworkListError):
        extract_networks("{broken", "google_json")


def test_build_replaces_fetched_sources_and_keeps_the_rest() -> None:
    base = json.loads(shipped_document_text())
    google = next(
        s for s in PUBLISHED_SOURCES if s.format == "google_json" and "crawling" in s.fetch
    )
    doc = build_networks_document({google.fetch: GOOGLE}, date(2026, 12, 1), base=base)
    as_of, ranges = parse_document(doc)
    assert as_of == date(2026, 12, 1)
    google_ranges = {str(r.network) for r in ranges if r.source == google.source}
    assert google_ranges == {"66.249.80.0/23", "2001:4860:4801:10::/64"}  # hand summaries replaced
    # Everything not fetched is kept as it was.
    assert any(r.owner.startswith("Mimecast") for r in ranges)
    assert any(r.owner == "Microsoft Azure" for r in ranges)
    # Output is deterministic and loads as an index.
    assert doc == build_networks_document({google.fetch: GOOGLE}, date(2026, 12, 1), base=base)
    _, index = load_document_text(json.dumps(doc))
    assert index.lookup("66.249.81.5") is not None


def test_build_refuses_a_source_that_yields_nothing() -> None:
    spec = PublishedSource(
        "https://x.example/list", "https://x.example/list", "X", "cloud", 0.3, "cidr_lines"
    )
    with pytest.raises(NetworkListError, match="yielded no networks"):
        build_networks_document({spec.fetch: "# moved\n"}, date(2026, 1, 1), sources=[spec])


def test_build_from_nothing_with_explicit_sources() -> None:
    spec = PublishedSource(
        "dns-txt:us._netblocks.mimecast.com",
        "https://community.mimecast.com/docs/DOC-2010",
        "Mimecast (US)",
        "link_scanner",
        0.9,
        "spf",
    )
    doc = build_networks_document({spec.fetch: SPF}, date(2026, 1, 1), sources=[spec])
    assert [e["cidr"] for e in doc["entries"]] == [
        "205.139.110.0/24",
        "207.211.31.0/25",
        "2a01:111:f400::/48",
    ]
    assert all(e["scope"] == "link_scanner" for e in doc["entries"])
