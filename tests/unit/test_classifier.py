"""The classifier's reasons, its hard cases, and revisions of earlier events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from classifier import Classifier, NetworkIndex, TrackingEvidence, Verdict
from classifier.networks import NetworkRange, default_index
from classifier.useragent import is_outdated, profile_user_agent

SENT = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/143.0.0.0 Safari/537.36"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_6 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/26.1 Mobile/15E148 Safari/604.1"
)
CHROME_ANDROID = (
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/143.0.0.0 Mobile Safari/537.36"
)
GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
OUTLOOK = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.19029; Pro)"
NAV = {
    "accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "accept-language": "en-US,en;q=0.9",
    "sec-fetch-mode": "navigate",
    "sec-fetch-user": "?1",
}
HOME_IP = "73.15.22.41"  # an ordinary ISP address, in no list
AZURE_IP = "20.85.14.7"
AWS_IP = "3.91.20.5"

_counter = 0


def ev(
    *,
    kind: str = "click",
    after: float = 600.0,
    ip: str = HOME_IP,
    ua: str = CHROME,
    link: str | None = "book",
    links: int = 3,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    message: str = "m1",
    event_id: str | None = None,
    sent: datetime = SENT,
) -> TrackingEvidence:
    global _counter
    _counter += 1
    hdrs = dict(NAV if kind == "click" else {"accept": "image/*"})
    if headers is not None:
        hdrs = {"accept": "", **headers}
    return TrackingEvidence(
        id=event_id or f"e{_counter}",
        kind=kind,  # type: ignore[arg-type]
        message_id=message,
        link=link if kind == "click" else None,
        links_in_message=links,
        sent_at=sent,
        at=sent + timedelta(seconds=after),
        ip=ip,
        method=method,
        user_agent=ua,
        headers=hdrs,
    )


def one(event: TrackingEvidence, classifier: Classifier | None = None) -> Verdict:
    verdicts = (classifier or Classifier()).judge(event)
    assert verdicts[0].id == event.id and not verdicts[0].revised
    return verdicts[0]


def expect(event: TrackingEvidence, verdict: str, reason: str) -> Verdict:
    got = one(event)
    assert (got.verdict, got.reason) == (verdict, reason)
    assert 0.0 <= got.confidence <= 1.0
    return got


# --- each automated reason -------------------------------------------------------------


def test_apple_mpp_bare_user_agent_open_from_relay() -> None:
    got = expect(
        ev(kind="open", after=3, ip="172.225.8.9", ua="Mozilla/5.0"), "automated", "apple_mpp"
    )
    off_relay = one(ev(kind="open", after=3, ip=HOME_IP, ua="Mozilla/5.0"))
    assert off_relay.reason == "apple_mpp"
    assert got.confidence > off_relay.confidence  # the relay network adds certainty


def test_apple_mail_webview_through_the_relay_is_mpp_but_direct_is_a_person() -> None:
    apple_mail = (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"
    )
    expect(ev(kind="open", ip="146.75.3.4", ua=apple_mail), "automated", "apple_mpp")
    expect(ev(kind="open", ip=HOME_IP, ua=apple_mail), "human", "mail_client")


def test_google_proxy_prefetch_for_clicks_and_prefetching_opens() -> None:
    expect(ev(ip="66.249.84.10", ua=CHROME, after=40), "automated", "google_proxy_prefetch")
    expect(
        ev(kind="open", ip="66.249.84.10", ua=GMAIL_PROXY, headers={"purpose": "prefetch"}),
        "automated",
        "google_proxy_prefetch",
    )


def test_yahoo_proxy() -> None:
    ua = "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html"
    expect(ev(kind="open", ua=ua), "automated", "yahoo_proxy")


@pytest.mark.parametrize(
    "ip",
    ["40.94.1.2", "40.107.3.9", "205.139.110.61", "148.163.150.2", "209.222.82.10", "67.231.149.7"],
)
def test_link_scanner_networks_even_with_a_real_browser_user_agent(ip: str) -> None:
    expect(ev(ip=ip, after=21), "automated", "link_scanner")


def test_spec_example_line() -> None:
    got = expect(
        ev(ip="40.94.1.2", after=21, headers={"accept": "text/html"}), "automated", "link_scanner"
    )
    assert got.confidence >= 0.9


@pytest.mark.parametrize(
    "ua", ["Barracuda Sentinel (EE)", CHROME + " Mimecast", "Proofpoint URL Defense"]
)
def test_link_scanner_user_agents(ua: str) -> None:
    expect(ev(ua=ua), "automated", "link_scanner")


def test_too_fast_click_and_open() -> None:
    expect(ev(after=2.5), "automated", "too_fast")
    expect(ev(kind="open", ua=OUTLOOK, after=1.0), "automated", "too_fast")
    expect(ev(kind="open", ua=OUTLOOK, after=30.0), "human", "mail_client")


def test_head_request() -> None:
    expect(ev(method="HEAD"), "automated", "head_request")


@pytest.mark.parametrize(
    "headers",
    [{"purpose": "prefetch"}, {"sec-purpose": "prefetch;prerender"}, {"x-moz": "prefetch"}],
)
def test_prefetch_headers(headers: dict[str, str]) -> None:
    expect(ev(headers={**NAV, **headers}), "automated", "prefetch_header")


@pytest.mark.parametrize(
    "ua",
    [
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "HeadlessChrome/131.0.6778.85 Safari/537.36",
        "Mozilla/5.0 (Unknown; Linux x86_64) AppleWebKit/538.1 (KHTML, like Gecko) PhantomJS/2.1.1 "
        "Safari/538.1",
    ],
)
def test_headless(ua: str) -> None:
    expect(ev(ua=ua), "automated", "headless")


@pytest.mark.parametrize(
    "ua",
    [
        "Mozilla/5.0 (Windows NT 6.1; WOW64; Trident/7.0; rv:11.0) like Gecko",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/70.0.3538.102 Safari/537.36",
        "Mozilla/5.0 (Windows NT 6.1; Win64; x64; rv:52.0) Gecko/20100101 Firefox/52.0",
    ],
)
def test_outdated_browser(ua: str) -> None:
    expect(ev(ua=ua), "automated", "outdated_browser")


def test_outdated_is_relative_to_event_time_not_the_wall_clock() -> None:
    chrome_120 = profile_user_agent(CHROME.replace("143.0.0.0", "120.0.0.0"))
    assert not is_outdated(chrome_120, datetime(2024, 1, 10, tzinfo=UTC))
    assert is_outdated(chrome_120, datetime(2027, 1, 10, tzinfo=UTC))


@pytest.mark.parametrize(
    "ua", ["python-requests/2.32.3", "curl/8.5.0", "Go-http-client/1.1", "", "Mozilla/5.0"]
)
def test_bot_user_agents_on_clicks(ua: str) -> None:
    expect(ev(ua=ua), "automated", "bot_user_agent")


def test_header_mismatch_browser_that_does_not_ask_for_html() -> None:
    expect(ev(ip=AWS_IP, after=20, headers={"accept": "*/*"}), "automated", "header_mismatch")


def test_trap_link_hit() -> None:
    expect(ev(link="__trap__"), "automated", "trap_link")


def test_link_sweep_reason_and_revision() -> None:
    c = Classifier()
    first = c.judge(ev(ip=AWS_IP, link="book", after=100, links=4, event_id="s1"))
    assert first[0].verdict == "human"  # one click alone gives nothing away
    second = c.judge(ev(ip=AWS_IP, link="faq", after=100.6, links=4, event_id="s2"))
    assert second[0].verdict == "human"  # 2 of 4 links is not yet a sweep
    third = c.judge(ev(ip=AWS_IP, link="call", after=101.1, links=4, event_id="s3"))
    assert (third[0].verdict, third[0].reason) == ("automated", "link_sweep")
    assert {(v.id, v.verdict, v.reason, v.revised) for v in third[1:]} == {
        ("s1", "automated", "link_sweep", True),
        ("s2", "automated", "link_sweep", True),
    }


def test_sweep_by_fraction_of_links() -> None:
    c = Classifier()
    c.judge(ev(ip=AWS_IP, link="book", after=100, links=2, event_id="f1"))
    second = c.judge(ev(ip=AWS_IP, link="faq", after=101, links=2, event_id="f2"))
    assert second[0].reason == "link_sweep"
    assert [v.id for v in second[1:]] == ["f1"]


def test_no_sweep_when_clicks_are_minutes_apart_or_from_different_clients() -> None:
    c = Classifier()
    assert one(ev(link="book", after=100, links=3), c).verdict == "human"
    assert one(ev(link="faq", after=400, links=3), c).verdict == "human"
    assert (
        one(ev(link="call", after=401, links=3, ip="24.6.1.1", ua=SAFARI_IPHONE), c).verdict
        == "human"
    )


# --- human reasons and hard cases --------------------------------------------------------


def test_gmail_image_proxy_open_seconds_after_send_stays_human() -> None:
    got = expect(
        ev(kind="open", after=2, ip="66.249.84.10", ua=GMAIL_PROXY), "human", "gmail_image_proxy"
    )
    assert got.confidence >= 0.85


@pytest.mark.parametrize("ua", [SAFARI_IPHONE, CHROME_ANDROID])
@pytest.mark.parametrize("after", [8.0, 12.0, 20.0])
def test_phone_notification_fast_click_stays_human(ua: str, after: float) -> None:
    ip = "2607:fb90:8e21:1::5" if ua == CHROME_ANDROID else "174.204.9.8"
    expect(
        ev(ua=ua, after=after, ip=ip, links=1, headers={"accept": "text/html"}), "human", "browser"
    )


def test_azure_desktop_human_stays_human_with_lower_confidence() -> None:
    cloud = expect(ev(ip=AZURE_IP, after=45), "human", "browser")
    home = one(ev(ip=HOME_IP, after=45))
    assert cloud.confidence < home.confidence


def test_private_relay_safari_click_is_a_person() -> None:
    expect(ev(ip="172.225.40.3", ua=SAFARI_IPHONE, after=900), "human", "browser")


def test_mail_client_open() -> None:
    expect(ev(kind="open", ua=OUTLOOK), "human", "mail_client")


def test_unrecognised_client_is_unknown() -> None:
    expect(ev(ua="SomeApp/1.0 (custom)"), "unknown", "unrecognised_client")


# --- revisions ---------------------------------------------------------------------------


def test_trap_hit_revises_earlier_events_of_the_same_client_only() -> None:
    c = Classifier()
    scanner_ip = "88.198.10.20"
    c.judge(ev(kind="open", ip=scanner_ip, after=30, event_id="o1"))
    c.judge(ev(ip=scanner_ip, after=31, event_id="c1"))
    c.judge(ev(ip=HOME_IP, ua=SAFARI_IPHONE, after=35, event_id="person"))
    c.judge(ev(ip="88.198.10.99", after=36, event_id="neighbour-other-ua", ua=SAFARI_IPHONE))
    c.judge(ev(ip=scanner_ip, after=37, event_id="other-message", message="m2"))
    out = c.judge(ev(ip="88.198.10.77", after=40, link="__trap__", event_id="trap"))
    assert (out[0].id, out[0].reason) == ("trap", "trap_link")
    revised = {v.id: v for v in out[1:]}
    assert set(revised) == {"o1", "c1"}  # same /24 and same user agent
    assert all(v.revised and v.verdict == "automated" and v.reason == "trap_link" for v in out[1:])


def test_trap_hit_from_the_same_ip_with_another_user_agent_still_revises() -> None:
    c = Classifier()
    c.judge(ev(ip="88.198.10.20", after=30, event_id="c1"))
    out = c.judge(ev(ip="88.198.10.20", ua=SAFARI_IPHONE, after=31, link="__trap__"))
    assert [v.id for v in out[1:]] == ["c1"]


def test_events_already_automated_are_not_revised_again() -> None:
    c = Classifier()
    c.judge(ev(ip="88.198.10.20", after=2, event_id="fast"))  # too_fast already
    out = c.judge(ev(ip="88.198.10.20", after=40, link="__trap__"))
    assert out[1:] == []


def test_a_later_human_event_does_not_undo_earlier_automated_ones() -> None:
    c = Classifier()
    c.judge(ev(ip="88.198.10.20", after=40, link="__trap__"))
    assert one(ev(ip="88.198.10.20", after=3600, ua=SAFARI_IPHONE), c).verdict == "human"


# --- state, determinism, performance -----------------------------------------------------


def test_state_is_evicted_after_the_horizon_of_event_time() -> None:
    c = Classifier(horizon=timedelta(days=7))
    c.judge(ev(message="old", after=10))
    assert c.tracked_messages == 1
    c.judge(ev(message="new", after=8 * 86400))
    assert c.tracked_messages == 1  # "old" forgotten, "new" kept
    # A trap on the forgotten message can no longer revise its first event.
    out = c.judge(ev(message="old", after=8 * 86400 + 5, link="__trap__"))
    assert out[1:] == []


def test_state_is_capped_by_message_count() -> None:
    c = Classifier(max_messages=3)
    for n in range(10):
        c.judge(ev(message=f"m{n}", after=600 + n))
    assert c.tracked_messages == 3


def test_same_input_gives_same_output() -> None:
    events = [
        ev(ip=AWS_IP, link=link, after=100 + n * 0.5, links=4, event_id=f"d{n}")
        for n, link in enumerate(["book", "faq", "call"])
    ]
    runs = [[v for e in events for v in Classifier().judge(e)] for _ in range(2)]
    assert runs[0] == runs[1]


def test_user_agent_parsing_is_cached() -> None:
    profile_user_agent.cache_clear()
    c = Classifier()
    for n in range(50):
        c.judge(ev(message=f"p{n}", after=600))
    info = profile_user_agent.cache_info()
    assert info.misses == 1 and info.hits >= 49


def test_custom_network_index_is_used() -> None:
    import ipaddress

    index = NetworkIndex(
        [
            NetworkRange(
                ipaddress.ip_network("198.51.100.0/24"),
                "Test scanner",
                "link_scanner",
                0.9,
                "https://example.org/list",
            )
        ]
    )
    got = one(ev(ip="198.51.100.7"), Classifier(index))
    assert (got.verdict, got.reason) == ("automated", "link_scanner")
    assert default_index().lookup("198.51.100.7") is None
