"""Judging one event on its own evidence: user agent, network, headers, timing.

Evidence that needs other events of the same message (link sweeps, trap-link
hits re-judging earlier events) lives in classifier.py. Rules run in order and the
first that applies decides; the order puts the most specific evidence first so
the reason names what actually gave the machine away.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from classifier.evidence import TrackingEvidence, VerdictName
from classifier.networks import NetworkIndex, NetworkRange
from classifier.useragent import UAProfile, is_outdated, profile_user_agent

# Automated reasons.
APPLE_MPP = "apple_mpp"
GOOGLE_PROXY_PREFETCH = "google_proxy_prefetch"
YAHOO_PROXY = "yahoo_proxy"
LINK_SCANNER = "link_scanner"
TOO_FAST = "too_fast"
LINK_SWEEP = "link_sweep"
TRAP_LINK = "trap_link"
HEAD_REQUEST = "head_request"
PREFETCH_HEADER = "prefetch_header"
HEADLESS = "headless"
OUTDATED_BROWSER = "outdated_browser"
BOT_USER_AGENT = "bot_user_agent"
HEADER_MISMATCH = "header_mismatch"  # claims to be a browser, doesn't ask like one
# Human reasons.
BROWSER = "browser"
GMAIL_IMAGE_PROXY = "gmail_image_proxy"  # Gmail fetches the pixel when the person opens
MAIL_CLIENT = "mail_client"
# Unknown reasons.
UNRECOGNISED_CLIENT = "unrecognised_client"

AUTOMATED_REASONS = frozenset(
    {
        APPLE_MPP,
        GOOGLE_PROXY_PREFETCH,
        YAHOO_PROXY,
        LINK_SCANNER,
        TOO_FAST,
        LINK_SWEEP,
        TRAP_LINK,
        HEAD_REQUEST,
        PREFETCH_HEADER,
        HEADLESS,
        OUTDATED_BROWSER,
        BOT_USER_AGENT,
        HEADER_MISMATCH,
    }
)
HUMAN_REASONS = frozenset({BROWSER, GMAIL_IMAGE_PROXY, MAIL_CLIENT})

# A click this soon after sending is a scanner reacting to delivery. People tapping a
# phone notification take ~8 s at the very least, so the bar sits below that.
CLICK_TOO_FAST_SECONDS = 5.0
# Nobody opens a message within two seconds of it being sent.
OPEN_TOO_FAST_SECONDS = 2.0
# Scanners reach a link within the first minute; used to weight weaker evidence.
SCANNER_WINDOW_SECONDS = 60.0

_PREFETCH_VALUES = ("prefetch", "prerender", "preview")
_PREFETCH_HEADERS = ("purpose", "sec-purpose", "x-purpose", "x-moz")


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: VerdictName
    reason: str
    confidence: float


@dataclass(frozen=True, slots=True)
class Signals:
    ua: UAProfile
    network: NetworkRange | None
    seconds: float  # since the message was sent
    prefetch: bool
    accepts_html: bool
    user_activated: bool  # Sec-Fetch-User: ?1, a navigation started by a person's gesture
    outdated: bool


def is_prefetch(headers: Mapping[str, str]) -> bool:
    """Purpose / Sec-Purpose / X-Moz style markers of a speculative fetch."""
    for name in _PREFETCH_HEADERS:
        value = headers.get(name)
        if isinstance(value, str) and any(token in value.lower() for token in _PREFETCH_VALUES):
            return True
    return False


def gather_signals(ev: TrackingEvidence, index: NetworkIndex) -> Signals:
    headers = ev.headers
    ua = profile_user_agent(ev.user_agent)
    return Signals(
        ua=ua,
        network=index.lookup(ev.ip),
        seconds=ev.seconds_after_send,
        prefetch=is_prefetch(headers),
        accepts_html="text/html" in headers.get("accept", "").lower(),
        user_activated=headers.get("sec-fetch-user", "").strip() == "?1",
        outdated=is_outdated(ua, ev.at),
    )


def _auto(reason: str, confidence: float) -> Judgement:
    return Judgement("automated", reason, min(confidence, 0.99))


def _human(reason: str, confidence: float) -> Judgement:
    return Judgement("human", reason, max(0.5, min(confidence, 0.99)))


def judge_alone(ev: TrackingEvidence, s: Signals) -> Judgement:
    """The verdict one event earns without looking at the rest of its message."""
    ua = s.ua
    scope = s.network.scope if s.network else None
    is_open = ev.kind == "open"

    if ev.is_trap:
        return _auto(TRAP_LINK, 0.99)
    if ev.method in {"HEAD", "OPTIONS"}:
        return _auto(HEAD_REQUEST, 0.97)
    if ua.category == "gmail_proxy" or scope == "image_proxy":
        # Gmail fetches images when the person opens the message, however soon that is;
        # anything else from Google's proxies (clicks, prefetches, other fetchers) is not.
        if is_open and ua.category == "gmail_proxy" and not s.prefetch:
            return _human(GMAIL_IMAGE_PROXY, 0.9 if scope == "image_proxy" else 0.75)
        return _auto(GOOGLE_PROXY_PREFETCH, 0.9)
    if s.prefetch:
        return _auto(PREFETCH_HEADER, 0.95)
    if ua.category == "yahoo_proxy":
        return _auto(YAHOO_PROXY, 0.9)
    if ua.category == "bare":
        if is_open:
            return _auto(APPLE_MPP, 0.97 if scope == "mpp_proxy" else 0.92)
        return _auto(BOT_USER_AGENT, 0.85)
    if ua.category == "empty":
        return _auto(BOT_USER_AGENT, 0.85)
    if ua.category == "scanner":
        return _auto(LINK_SCANNER, 0.97)
    if ua.category == "headless":
        return _auto(HEADLESS, 0.95)
    if ua.category == "bot":
        return _auto(BOT_USER_AGENT, 0.95)
    if s.network is not None and scope == "link_scanner":
        early = 0.1 if s.seconds < SCANNER_WINDOW_SECONDS else 0.0
        return _auto(LINK_SCANNER, max(0.6, s.network.certainty) + early)
    if scope == "mpp_proxy" and is_open and ua.category in {"mail_client", "webview"}:
        # Apple Mail without MPP fetches directly; through the relay it is the MPP proxy.
        return _auto(APPLE_MPP, 0.85)
    if s.outdated:
        return _auto(OUTDATED_BROWSER, 0.85)
    if s.seconds < (OPEN_TOO_FAST_SECONDS if is_open else CLICK_TOO_FAST_SECONDS):
        return _auto(TOO_FAST, 0.85)

    cloud_penalty = 0.15 if scope == "cloud" else 0.0
    if not is_open:
        if ua.category in {"browser", "webview"}:
            if not s.accepts_html:
                # Every browser navigation asks for text/html; tools and sandboxes often don't.
                weight = 0.8 if scope == "cloud" or s.seconds < SCANNER_WINDOW_SECONDS else 0.7
                return _auto(HEADER_MISMATCH, weight)
            confidence = 0.9 - cloud_penalty
            if s.seconds < 30:
                confidence -= 0.05
            if s.user_activated:
                confidence += 0.05
            return _human(BROWSER, confidence)
        if ua.category == "mail_client":
            # Mail apps preview links themselves; a person may or may not be behind it.
            return Judgement("unknown", MAIL_CLIENT, 0.5)
        return Judgement("unknown", UNRECOGNISED_CLIENT, 0.5)

    if ua.category in {"mail_client", "webview"}:
        return _human(MAIL_CLIENT, 0.85 - cloud_penalty)
    if ua.category == "browser":
        return _human(BROWSER, 0.8 - cloud_penalty)  # webmail showing the image
    return Judgement("unknown", UNRECOGNISED_CLIENT, 0.5)
