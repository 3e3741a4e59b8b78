"""What a tracking request showed: the client's address and the headers that matter.

Pure functions (no I/O) so the rules are unit-tested on their own. The client address
comes from X-Forwarded-For only when the peer is a trusted proxy (SPEC section 4,
TRUSTED_PROXIES); anyone can write that header, so believing it from any other peer
would let a scanner pass itself off as a home connection.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from functools import lru_cache

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Headers the classifier weighs (SPEC section 5). Never cookies, authorization or the
# referer's value: those can carry identities or the page a patient came from.
KEPT_HEADERS: tuple[str, ...] = (
    "accept",
    "accept-language",
    "sec-fetch-site",
    "sec-fetch-mode",
    "sec-fetch-dest",
    "sec-fetch-user",
    "sec-purpose",
    "purpose",
    "x-purpose",
    "x-moz",
    "via",
    "sec-ch-ua",
    "sec-ch-ua-mobile",
    "sec-ch-ua-platform",
)
# Derived facts, stored under names no client can send (they are not header names).
XFF_HOPS = "x-forwarded-for-hops"
REFERER_PRESENT = "referer-present"

MAX_HEADER_VALUE = 512
MAX_USER_AGENT = 1024
MAX_XFF_ENTRIES = 32


class TrustedProxyError(ValueError):
    """TRUSTED_PROXIES holds something that is not a CIDR; the message names the item."""


@lru_cache(maxsize=8)
def parse_trusted_proxies(value: str) -> tuple[IPNetwork, ...]:
    """`"127.0.0.0/8, ::1/128"` -> networks. Empty means no proxy is trusted."""
    nets: list[IPNetwork] = []
    for index, part in enumerate(p.strip() for p in value.split(",")):
        if not part:
            continue
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise TrustedProxyError(
                f"TRUSTED_PROXIES item {index + 1} is not a CIDR (e.g. 10.0.0.0/8)"
            ) from None
    return tuple(nets)


def parse_address(value: str) -> IPAddress | None:
    """An address as proxies write it: bare, `a.b.c.d:port`, `[v6]:port`; v4-mapped unwrapped."""
    text = value.strip().strip('"')
    if not text or len(text) > 64:
        return None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        text = text[1:end]
    elif text.count(":") == 1 and "." in text:
        text = text.split(":", 1)[0]
    text = text.split("%", 1)[0]  # zone ids say nothing about the client
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _trusted(addr: IPAddress, proxies: Iterable[IPNetwork]) -> bool:
    return any(addr.version == net.version and addr in net for net in proxies)


def forwarded_chain(values: Iterable[str]) -> list[str]:
    """Every X-Forwarded-For header (there may be several), split, in order."""
    chain: list[str] = []
    for value in values:
        chain.extend(item.strip() for item in value.split(",") if item.strip())
    return chain


def client_ip(peer: str | None, xff: list[str], proxies: tuple[IPNetwork, ...]) -> str:
    """The address of the client that made the request.

    Walk from the peer towards the client: each hop is believed only while the hop
    that reported it is a trusted proxy. The first untrusted address is the client;
    a malformed entry stops the walk at the last address we could believe.
    """
    current = parse_address(peer or "")
    if current is None:
        return ""
    for item in reversed(xff[-MAX_XFF_ENTRIES:]):
        if not _trusted(current, proxies):
            break
        nxt = parse_address(item)
        if nxt is None:
            break
        current = nxt
    return str(current)


def evidence_headers(
    headers: Mapping[str, str], xff_hops: int, has_referer: bool
) -> dict[str, str]:
    """Lower-case names, bounded values, `accept` always present (empty when not sent)."""
    out: dict[str, str] = {}
    for name in KEPT_HEADERS:
        value = headers.get(name)
        if value is not None:
            out[name] = value[:MAX_HEADER_VALUE]
    out.setdefault("accept", "")
    if xff_hops:
        out[XFF_HOPS] = str(xff_hops)
    if has_referer:
        out[REFERER_PRESENT] = "1"
    return out


def _clean(value: str) -> str:
    # PostgreSQL text and jsonb refuse NUL; a header carrying one is junk anyway.
    return value.replace("\x00", "") if "\x00" in value else value


# Raw header name -> what `EvidenceReader.read` does with it (one dict lookup a header;
# the three names read apart are these very str objects, compared by identity).
_USER_AGENT, _XFF, _REFERER = "user-agent", "x-forwarded-for", "referer"
_READ: dict[bytes, str] = {
    **{name.encode(): name for name in KEPT_HEADERS},
    **{name.encode(): name for name in (_USER_AGENT, _XFF, _REFERER)},
}
_MAX_CACHED_IPS = 10_000


class EvidenceReader:
    """`client_ip` + `evidence_headers` over ASGI's raw header list, for the request path.

    Same result as the two functions on a Starlette `Headers` (the first value of a
    repeated header counts; every X-Forwarded-For header counts, in order), but only
    the headers that matter are decoded, and the client address of a (peer, chain)
    seen before is not parsed again: proxies and busy clients send many hits.
    """

    def __init__(self, proxies: tuple[IPNetwork, ...]) -> None:
        self.proxies = proxies
        self._ips: dict[tuple[str | None, tuple[str, ...]], str] = {}

    def client_ip(self, peer: str | None, xff: tuple[str, ...]) -> str:
        key = (peer, xff)
        ip = self._ips.get(key)
        if ip is None:
            ip = client_ip(peer, list(xff), self.proxies)
            if len(self._ips) >= _MAX_CACHED_IPS:
                self._ips.clear()
            self._ips[key] = ip
        return ip

    def read(
        self, raw_headers: Iterable[tuple[bytes, bytes]], peer: str | None
    ) -> tuple[str, str, dict[str, str]]:
        """(client ip, user agent, evidence headers)."""
        kept: dict[str, str] = {}
        user_agent: bytes | None = None
        xff_values: list[str] = []
        referer = False
        read = _READ
        for raw_name, raw_value in raw_headers:
            key = read.get(raw_name.lower())
            if key is None:
                continue
            if key is _USER_AGENT:
                if user_agent is None:
                    user_agent = raw_value[:MAX_USER_AGENT]
            elif key is _XFF:
                xff_values.append(raw_value.decode("latin-1"))
            elif key is _REFERER:
                referer = True
            elif key not in kept:
                value = raw_value[:MAX_HEADER_VALUE].decode("latin-1")
                kept[key] = value.replace("\x00", "") if "\x00" in value else value  # _clean
        if "accept" not in kept:
            kept["accept"] = ""
        xff = tuple(forwarded_chain(xff_values)) if xff_values else ()
        if xff:
            kept[XFF_HOPS] = str(len(xff))
        if referer:
            kept[REFERER_PRESENT] = "1"
        ua = _clean(user_agent.decode("latin-1")) if user_agent else ""
        return self.client_ip(peer, xff), ua, kept
