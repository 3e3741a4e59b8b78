"""What a user-agent string says about the client, via ua-parser plus small fingerprint lists.

ua-parser knows browsers, mail clients, OS and crawler families; it cannot know
mail-security vendors or Apple's bare "Mozilla/5.0" proxy fetch, so those are
explicit lists here. Results are cached: scanners and proxies repeat the same
few strings, so the parse (~1 ms) is paid once per distinct string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from typing import Literal

from ua_parser import parse

Category = Literal[
    "empty",
    "bare",  # exactly "Mozilla/5.0": Apple MPP's proxy fetch
    "gmail_proxy",
    "yahoo_proxy",
    "scanner",
    "bot",
    "headless",
    "mail_client",
    "webview",
    "browser",
    "other",
]

# Families whose major version follows Chrome's release train.
CHROMIUM_FAMILIES = frozenset(
    {
        "Chrome",
        "Chrome Mobile",
        "Chrome Mobile iOS",
        "Chrome Mobile WebView",
        "Chromium",
        "Edge",
        "Edge Mobile",
    }
)
FIREFOX_FAMILIES = frozenset({"Firefox", "Firefox Mobile", "Firefox iOS"})
SAFARI_FAMILIES = frozenset({"Safari", "Mobile Safari"})
OTHER_BROWSER_FAMILIES = frozenset(
    {
        "Opera",
        "Opera Mobile",
        "Samsung Internet",
        "Brave",
        "Vivaldi",
        "Yandex Browser",
        "DuckDuckGo Mobile",
        "UC Browser",
        "Silk",
        "Whale",
        "MiuiBrowser",
        "Firefox Focus",
    }
)
BROWSER_FAMILIES = CHROMIUM_FAMILIES | FIREFOX_FAMILIES | SAFARI_FAMILIES | OTHER_BROWSER_FAMILIES
# Retired engines: nobody's daily browser, often a scanner sandbox default.
RETIRED_FAMILIES = frozenset({"IE", "IE Mobile"})

MAIL_CLIENT_FAMILIES = frozenset(
    {
        "Apple Mail",
        "Outlook",
        "Thunderbird",
        "Windows Live Mail",
        "Airmail",
        "Spark",
        "Windows Mail",
        "Mailspring",
        "Lotus Notes",
        "Evolution",
    }
)
# In-app browsers and web views: a person tapping a link inside an app.
WEBVIEW_FAMILIES = frozenset(
    {
        "Mobile Safari UI/WKWebView",
        "Google",
        "Facebook",
        "Instagram",
        "LinkedIn",
        "Chrome Mobile WebView",
        "Snapchat",
        "Pinterest",
        "Twitter",
    }
)
HEADLESS_FAMILIES = frozenset({"HeadlessChrome", "PhantomJS"})
TOOL_FAMILIES = frozenset(
    {
        "Python Requests",
        "Python-urllib",
        "curl",
        "Wget",
        "Go-http-client",
        "Java",
        "okhttp",
        "Apache-HttpClient",
        "libwww-perl",
        "aiohttp",
        "PycURL",
        "HTTPie",
        "node-fetch",
        "axios",
    }
)

# Mail-security vendors announce themselves in a token ua-parser has no family for.
SCANNER_TOKENS: tuple[tuple[str, str], ...] = (
    ("barracuda", "Barracuda"),
    ("mimecast", "Mimecast"),
    ("proofpoint", "Proofpoint"),
    ("ironport", "Cisco IronPort"),
    ("cisco", "Cisco"),
    ("messagelabs", "Broadcom MessageLabs"),
    ("symantec", "Broadcom Symantec"),
    ("trend micro", "Trend Micro"),
    ("trendmicro", "Trend Micro"),
    ("sophos", "Sophos"),
    ("forcepoint", "Forcepoint"),
    ("fortimail", "Fortinet"),
    ("fortiguard", "Fortinet"),
    ("safelinks", "Microsoft Safe Links"),
    ("vadesecure", "Vade"),
    ("hornetsecurity", "Hornetsecurity"),
    ("avanan", "Check Point Avanan"),
    ("bitdefender", "Bitdefender"),
    ("virustotal", "VirusTotal"),
    ("urlscan", "urlscan.io"),
)
_BOT_PATTERN = re.compile(
    r"crawler|spider|scrapy|headless|phantomjs|selenium|puppeteer|playwright|python|"
    r"curl/|wget/|libwww|java/|okhttp|go-http-client|node-fetch|axios/|httpclient|"
    r"existence discovery|linkpreview|link preview|[a-z]bot\b|\bbot\b",
    re.IGNORECASE,
)
_BARE_PATTERN = re.compile(r"^Mozilla/\d\.\d$")
# Phone makers whose model names end in "bot" (e.g. CUBOT) are not bots.
_DEVICE_FALSE_BOT = re.compile(r"cubot", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class UAProfile:
    category: Category
    family: str
    major: int | None
    os_family: str
    os_major: str
    device_family: str
    vendor: str = ""  # scanner vendor, when category == "scanner"

    @property
    def is_mobile(self) -> bool:
        return self.os_family in {"iOS", "Android", "iPadOS"}

    @property
    def is_chromium(self) -> bool:
        return self.family in CHROMIUM_FAMILIES


def _major(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


@lru_cache(maxsize=8192)
def profile_user_agent(user_agent: str) -> UAProfile:
    """Classify a user-agent string into one category with its family and version."""
    ua = user_agent.strip()
    if not ua:
        return UAProfile("empty", "", None, "", "", "")
    if _BARE_PATTERN.match(ua):
        return UAProfile("bare", "", None, "", "", "")
    result = parse(ua)
    family = result.user_agent.family if result.user_agent else "Other"
    major = _major(result.user_agent.major) if result.user_agent else None
    os_family = result.os.family if result.os else ""
    os_major = (result.os.major or "") if result.os else ""
    device = result.device.family if result.device else ""

    def make(category: Category, vendor: str = "") -> UAProfile:
        return UAProfile(category, family, major, os_family, os_major, device, vendor)

    lowered = ua.lower()
    if family == "GmailImageProxy" or "googleimageproxy" in lowered:
        return make("gmail_proxy")
    if family == "YahooMailProxy" or "yahoomailproxy" in lowered:
        return make("yahoo_proxy")
    for token, vendor in SCANNER_TOKENS:
        if token in lowered:
            return make("scanner", vendor)
    if family in HEADLESS_FAMILIES:
        return make("headless")
    if family in TOOL_FAMILIES or device == "Spider":
        return make("bot")
    if _BOT_PATTERN.search(ua) and not _DEVICE_FALSE_BOT.search(ua):
        return make("headless" if "headless" in lowered or "phantomjs" in lowered else "bot")
    if family in MAIL_CLIENT_FAMILIES:
        return make("mail_client")
    if family in BROWSER_FAMILIES or family in RETIRED_FAMILIES:
        return make("browser")
    if family in WEBVIEW_FAMILIES:
        return make("webview")
    if family != "Other" and os_family in {"iOS", "Android"}:
        # Unlisted in-app browsers on phones are still a person's tap.
        return make("webview")
    return make("other")


# Release anchors (major, date) for version arithmetic; both ship about every four weeks.
_CHROME_ANCHOR = (143, date(2025, 12, 2))
_FIREFOX_ANCHOR = (146, date(2025, 12, 9))
_DAYS_PER_RELEASE = 30.4
# Majors behind the expected current one before a client counts as outdated. Firefox
# gets more room for its extended-support releases still shipped to older systems.
CHROME_LAG = 24
FIREFOX_LAG = 40
# Safari follows the OS; old iPads stay on old versions for years, so the lag is wide.
_SAFARI_ANCHOR = (19, date(2025, 9, 15))  # Safari 26 is the 19th generation after 18
SAFARI_LAG = 7


def _expected_major(anchor: tuple[int, date], on: date) -> float:
    major, when = anchor
    return major + (on - when).days / _DAYS_PER_RELEASE


def _safari_generation(major: int) -> int:
    # Apple renumbered from 18 straight to 26 in 2025.
    return major - 7 if major >= 26 else major


def is_outdated(profile: UAProfile, at: datetime) -> bool:
    """A browser claiming a version far older than any self-updating install would run."""
    if profile.category != "browser":
        return False
    if profile.family in RETIRED_FAMILIES:
        return True
    major = profile.major
    if major is None:
        return False
    on = at.date()
    if profile.family in {"Edge", "Edge Mobile"} and major < 79:
        return True  # the pre-Chromium EdgeHTML engine
    if profile.family in CHROMIUM_FAMILIES:
        return major < _expected_major(_CHROME_ANCHOR, on) - CHROME_LAG
    if profile.family in FIREFOX_FAMILIES:
        return major < _expected_major(_FIREFOX_ANCHOR, on) - FIREFOX_LAG
    if profile.family in SAFARI_FAMILIES:
        generation, anchor_date = _SAFARI_ANCHOR
        expected = generation + (on - anchor_date).days / 365.25
        return _safari_generation(major) < expected - SAFARI_LAG
    return False
