"""Client address and evidence headers of a tracking request (TRUSTED_PROXIES rules)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.tracking_request import (
    MAX_HEADER_VALUE,
    REFERER_PRESENT,
    XFF_HOPS,
    TrustedProxyError,
    client_ip,
    evidence_headers,
    forwarded_chain,
    parse_address,
    parse_trusted_proxies,
)

LOOPBACK = parse_trusted_proxies("127.0.0.0/8,::1/128")
LB = parse_trusted_proxies("10.0.0.0/8, 127.0.0.0/8")


def test_untrusted_peer_ignores_forwarded_for() -> None:
    assert client_ip("203.0.113.9", ["73.1.2.3"], LOOPBACK) == "203.0.113.9"


def test_trusted_peer_gives_the_forwarded_client() -> None:
    assert client_ip("127.0.0.1", ["73.1.2.3"], LOOPBACK) == "73.1.2.3"


def test_only_the_trusted_tail_of_the_chain_is_believed() -> None:
    # The client wrote a fake first entry; our proxies appended the real hops.
    chain = forwarded_chain(["6.6.6.6, 73.1.2.3", "10.1.1.1"])
    assert chain == ["6.6.6.6", "73.1.2.3", "10.1.1.1"]
    assert client_ip("127.0.0.1", chain, LB) == "73.1.2.3"
    # Without 10/8 trusted, the hop our peer reported is as far as we believe.
    assert client_ip("127.0.0.1", chain, LOOPBACK) == "10.1.1.1"


def test_all_trusted_chain_ends_at_the_leftmost() -> None:
    assert client_ip("127.0.0.1", ["10.0.0.5", "10.0.0.6"], LB) == "10.0.0.5"


def test_malformed_entry_stops_at_the_last_believable_hop() -> None:
    assert client_ip("127.0.0.1", ["73.1.2.3", "not-an-ip"], LOOPBACK) == "127.0.0.1"
    assert client_ip("127.0.0.1", ["unknown"], LOOPBACK) == "127.0.0.1"


def test_ports_brackets_and_mapped_addresses() -> None:
    assert str(parse_address("73.1.2.3:5050")) == "73.1.2.3"
    assert str(parse_address("[2001:db8::1]:443")) == "2001:db8::1"
    assert str(parse_address("::ffff:73.1.2.3")) == "73.1.2.3"
    assert parse_address("") is None
    assert parse_address("x" * 200) is None
    assert client_ip("::1", ["[2001:db8::1]:443"], LOOPBACK) == "2001:db8::1"
    assert client_ip("::ffff:127.0.0.1", ["73.1.2.3"], LOOPBACK) == "73.1.2.3"


def test_no_trusted_proxies_trusts_nobody() -> None:
    assert client_ip("127.0.0.1", ["73.1.2.3"], parse_trusted_proxies("")) == "127.0.0.1"


def test_missing_peer_gives_empty_address() -> None:
    assert client_ip(None, ["73.1.2.3"], LOOPBACK) == ""


def test_bad_trusted_proxies_names_the_item() -> None:
    with pytest.raises(TrustedProxyError, match="item 2"):
        parse_trusted_proxies("127.0.0.0/8,localhost")


@given(st.lists(st.text(max_size=30), max_size=40), st.text(max_size=40))
def test_client_ip_never_raises(chain: list[str], peer: str) -> None:
    out = client_ip(peer, chain, LB)
    assert out == "" or parse_address(out) is not None


def test_evidence_headers_keep_only_what_matters() -> None:
    headers = {
        "accept": "text/html",
        "accept-language": "en-US",
        "sec-fetch-user": "?1",
        "sec-purpose": "prefetch",
        "cookie": "session=secret",
        "authorization": "Bearer x",
        "referer": "https://portal.example/patients/123",
        "via": "1.1 proxy",
        "x-moz": "prefetch",
        "user-agent": "Mozilla/5.0",
    }
    out = evidence_headers(headers, xff_hops=2, has_referer=True)
    assert out == {
        "accept": "text/html",
        "accept-language": "en-US",
        "sec-fetch-user": "?1",
        "sec-purpose": "prefetch",
        "via": "1.1 proxy",
        "x-moz": "prefetch",
        XFF_HOPS: "2",
        REFERER_PRESENT: "1",
    }
    assert all(name == name.lower() for name in out)


def test_evidence_headers_accept_always_present_and_bounded() -> None:
    out = evidence_headers({"accept-language": "x" * 5000}, xff_hops=0, has_referer=False)
    assert out["accept"] == ""
    assert len(out["accept-language"]) == MAX_HEADER_VALUE
    assert XFF_HOPS not in out and REFERER_PRESENT not in out
