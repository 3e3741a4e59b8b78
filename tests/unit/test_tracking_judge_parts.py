"""The judge's pure parts: a stored event as classifier evidence, and fault isolation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from classifier import Classifier, TrackingEvidence, Verdict
from core.models import TrackingEvent
from services.tracking_judge import JUDGE_ERROR, _SendFacts, evidence_of, judge_one

SENT = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def _row(**kw: object) -> TrackingEvent:
    base: dict[str, object] = dict(
        id="te_1",
        send_id="s_1",
        kind="click",
        link="book",
        at=SENT + timedelta(minutes=3),
        ip="73.15.237.200",
        user_agent=None,
        method="head",
        headers={"sec-fetch-user": "?1"},
    )
    base.update(kw)
    return TrackingEvent(**base)  # type: ignore[arg-type]


def test_stored_event_becomes_evidence_with_what_is_known_of_its_message() -> None:
    ev = evidence_of(_row(), _SendFacts(SENT, True, 3))
    assert ev == TrackingEvidence(
        id="te_1",
        kind="click",
        message_id="s_1",
        link="book",
        links_in_message=3,
        sent_at=SENT,
        at=SENT + timedelta(minutes=3),
        ip="73.15.237.200",
        method="HEAD",
        user_agent="",
        headers={"sec-fetch-user": "?1", "accept": ""},
    )
    assert ev.seconds_after_send == 180


def test_a_classifier_fault_gives_unknown_instead_of_blocking_the_queue() -> None:
    class Broken(Classifier):
        def judge(self, event: TrackingEvidence) -> list[Verdict]:
            raise RuntimeError("bug")

    assert judge_one(Broken(), _row(), _SendFacts(SENT, True, 1)) == [
        Verdict("te_1", "unknown", JUDGE_ERROR, 0.0)
    ]


def test_judge_one_returns_the_classifiers_verdicts() -> None:
    [v] = judge_one(Classifier(), _row(), _SendFacts(SENT, True, 1))
    assert (v.id, v.verdict, v.reason) == ("te_1", "automated", "head_request")


def test_queued_messages_are_shared_out_oldest_first_and_capped() -> None:
    from services.tracking_judge import _share

    ids = [f"s_{i}" for i in range(10)]
    assert _share(ids, 3, 50) == [
        ["s_0", "s_3", "s_6", "s_9"],
        ["s_1", "s_4", "s_7"],
        ["s_2", "s_5", "s_8"],
    ]
    assert _share(ids, 2, 2) == [["s_0", "s_2"], ["s_1", "s_3"]]
    assert _share(ids[:1], 1, 50) == [["s_0"]]
    assert _share([], 0, 50) == []


def test_fewer_concurrent_transactions_when_the_queue_is_short() -> None:
    from services.tracking_judge import _slices

    # Nothing in flight: a lone message is judged at once, in one transaction.
    assert _slices(1, 4, 0, 4) == 1
    assert _slices(3, 4, 0, 4) == 1
    # One transaction per `min_share` queued messages, up to the free slots.
    assert _slices(8, 4, 0, 4) == 2
    assert _slices(40, 4, 0, 4) == 4
    assert _slices(40, 2, 2, 4) == 2
    # While one is in flight, a few queued messages wait for the next free slot...
    assert _slices(3, 3, 1, 4) == 0
    # ...and enough of them start another transaction.
    assert _slices(4, 3, 1, 4) == 1
    assert _slices(0, 4, 0, 4) == 0
    assert _slices(5, 0, 4, 4) == 0
