"""The stateful classifier: per-message memory for sweeps, trap hits and revisions.

Time comes only from the events (`at`), so an old log re-judges the same way.
Memory is bounded: a message is forgotten once no event has touched it for
`horizon` of event time, at most `max_messages` are kept, and each keeps at most
`max_events_per_message` recent events.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from classifier.evidence import TrackingEvidence, Verdict, VerdictName
from classifier.networks import NetworkIndex, client_prefix, default_index
from classifier.rules import LINK_SWEEP, TRAP_LINK, Judgement, gather_signals, judge_alone

DEFAULT_HORIZON = timedelta(days=7)
# A sweep is one client opening several links of a message within a few seconds.
SWEEP_WINDOW = timedelta(seconds=5)
SWEEP_MIN_LINKS = 3
SWEEP_MIN_FRACTION = 0.6
TRAP_REVISION_CONFIDENCE = 0.95
SWEEP_CONFIDENCE = 0.9


@dataclass(slots=True)
class _Seen:
    """What is kept of an earlier event: enough to match its client and revise it."""

    id: str
    kind: str
    at: datetime
    ip: str
    prefix: str | None
    user_agent: str
    link: str | None
    trap: bool
    verdict: VerdictName
    reason: str

    def same_client(self, ip: str, prefix: str | None, user_agent: str) -> bool:
        # Same address, or the same /24 (IPv6 /48) with the same user agent:
        # scanner farms rotate addresses within a block.
        if self.ip == ip and ip:
            return True
        return prefix is not None and self.prefix == prefix and self.user_agent == user_agent


@dataclass(slots=True)
class _Message:
    last_at: datetime
    events: deque[_Seen] = field(default_factory=deque)


class Classifier:
    """Judges tracking events one at a time, in time order, keeping per-message state.

    Not thread-safe: give each worker its own instance, or serialise calls.
    """

    def __init__(
        self,
        networks: NetworkIndex | None = None,
        *,
        horizon: timedelta = DEFAULT_HORIZON,
        max_messages: int = 200_000,
        max_events_per_message: int = 256,
    ) -> None:
        self._index = networks if networks is not None else default_index()
        self._horizon = horizon
        self._max_messages = max_messages
        self._max_events = max_events_per_message
        # Least recently touched first, so eviction pops from the front.
        self._messages: OrderedDict[str, _Message] = OrderedDict()
        self._now: datetime | None = None

    @property
    def tracked_messages(self) -> int:
        return len(self._messages)

    def judge(self, event: TrackingEvidence) -> list[Verdict]:
        """The event's verdict first, then revisions of earlier events it reveals."""
        self._advance(event.at)
        state = self._messages.get(event.message_id)
        if state is None:
            state = _Message(last_at=event.at, events=deque(maxlen=self._max_events))
            self._messages[event.message_id] = state
        else:
            self._messages.move_to_end(event.message_id)
            state.last_at = max(state.last_at, event.at)

        prefix = client_prefix(event.ip)
        judgement = judge_alone(event, gather_signals(event, self._index))
        revisions: list[Verdict] = []
        if event.is_trap:
            revisions = self._revise(
                (s for s in state.events if s.same_client(event.ip, prefix, event.user_agent)),
                TRAP_LINK,
                TRAP_REVISION_CONFIDENCE,
            )
        elif event.kind == "click":
            burst = self._sweep(state, event, prefix)
            if burst is not None:
                if judgement.verdict != "automated":
                    judgement = Judgement("automated", LINK_SWEEP, SWEEP_CONFIDENCE)
                revisions = self._revise(burst, LINK_SWEEP, SWEEP_CONFIDENCE)

        state.events.append(
            _Seen(
                id=event.id,
                kind=event.kind,
                at=event.at,
                ip=event.ip,
                prefix=prefix,
                user_agent=event.user_agent,
                link=event.link,
                trap=event.is_trap,
                verdict=judgement.verdict,
                reason=judgement.reason,
            )
        )
        first = Verdict(event.id, judgement.verdict, judgement.reason, judgement.confidence)
        return [first, *revisions]

    def _advance(self, at: datetime) -> None:
        if self._now is None or at > self._now:
            self._now = at
        cutoff = self._now - self._horizon
        messages = self._messages
        while messages:
            oldest_id, oldest = next(iter(messages.items()))
            if oldest.last_at >= cutoff and len(messages) < self._max_messages:
                break
            del messages[oldest_id]

    def _sweep(
        self, state: _Message, event: TrackingEvidence, prefix: str | None
    ) -> list[_Seen] | None:
        since = event.at - SWEEP_WINDOW
        burst = [
            s
            for s in state.events
            if s.kind == "click"
            and not s.trap
            and s.at >= since
            and s.same_client(event.ip, prefix, event.user_agent)
            and s.user_agent == event.user_agent
        ]
        if not burst:
            return None
        links = {s.link for s in burst}
        links.add(event.link)
        distinct = len(links)
        total = event.links_in_message
        if distinct >= SWEEP_MIN_LINKS:
            return burst
        if total >= 2 and distinct >= 2 and distinct / total >= SWEEP_MIN_FRACTION:
            return burst
        return None

    @staticmethod
    def _revise(seen: Iterable[_Seen], reason: str, confidence: float) -> list[Verdict]:
        out: list[Verdict] = []
        for item in seen:
            if item.verdict == "automated":
                continue
            item.verdict = "automated"
            item.reason = reason
            out.append(Verdict(item.id, "automated", reason, confidence, revised=True))
        return out
