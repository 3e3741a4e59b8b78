"""Open/click classifier: is a tracking hit a person or a machine (proxy, scanner, bot)?

Pure logic: no I/O at judge time (the shipped network list is read once, lazily),
no wall clock (time comes from the events).
"""

from classifier.classifier import Classifier
from classifier.evidence import (
    TRAP_LINK,
    EvidenceError,
    TrackingEvidence,
    Verdict,
    evidence_from_json,
)
from classifier.network_sources import (
    PUBLISHED_SOURCES,
    PublishedSource,
    build_networks_document,
    extract_networks,
)
from classifier.networks import (
    NetworkIndex,
    NetworkListError,
    NetworkRange,
    default_index,
    load_document_text,
    shipped_document_text,
)
from classifier.rules import AUTOMATED_REASONS, HUMAN_REASONS
from classifier.stream import classify_stream

__all__ = [
    "AUTOMATED_REASONS",
    "HUMAN_REASONS",
    "PUBLISHED_SOURCES",
    "TRAP_LINK",
    "Classifier",
    "EvidenceError",
    "NetworkIndex",
    "NetworkListError",
    "NetworkRange",
    "PublishedSource",
    "TrackingEvidence",
    "Verdict",
    "build_networks_document",
    "classify_stream",
    "default_index",
    "evidence_from_json",
    "extract_networks",
    "load_document_text",
    "shipped_document_text",
]
