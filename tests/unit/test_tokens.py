import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.tokens import PURPOSES, TOKEN_LENGTH, TokenSigner, VerifiedToken, new_link_id

KEY1 = b"\x11" * 32
KEY2 = b"\x22" * 32
LINK = bytes(range(12))
NOW = 1_767_600_000
LATER = NOW + 86_400


def signer(active: int = 1) -> TokenSigner:
    return TokenSigner({1: KEY1, 2: KEY2}, active)


def test_round_trip_for_every_purpose() -> None:
    s = signer()
    for purpose in PURPOSES:
        token = s.make(LINK, LATER, purpose)
        assert s.verify(token, purpose, NOW) == VerifiedToken(LINK, expired=False, expires_at=LATER)


def test_token_shape_is_urlsafe_unpadded_and_carries_only_ids() -> None:
    token = signer().make(LINK, LATER, "click")
    assert len(token) == TOKEN_LENGTH
    assert "=" not in token and "+" not in token and "/" not in token
    raw = base64.urlsafe_b64decode(token)
    assert raw[0] == 1 and raw[1:13] == LINK and int.from_bytes(raw[13:17], "big") == LATER
    assert len(raw) == 33


def test_purpose_is_bound() -> None:
    s = signer()
    token = s.make(LINK, LATER, "open")
    assert s.verify(token, "unsub", NOW) is None
    assert s.verify(token, "click", NOW) is None


def test_expired_tokens_verify_with_flag() -> None:
    s = signer()
    token = s.make(LINK, NOW, "unsub")
    assert s.verify(token, "unsub", NOW - 1) == VerifiedToken(LINK, False, NOW)
    assert s.verify(token, "unsub", NOW) == VerifiedToken(LINK, True, NOW)
    assert s.verify(token, "unsub", NOW + 10**6) == VerifiedToken(LINK, True, NOW)


def test_every_bit_flip_is_rejected() -> None:
    s = signer()
    raw = base64.urlsafe_b64decode(s.make(LINK, LATER, "click"))
    for i in range(len(raw) * 8):
        flipped = bytearray(raw)
        flipped[i // 8] ^= 1 << (i % 8)
        token = base64.urlsafe_b64encode(bytes(flipped)).decode()
        assert s.verify(token, "click", NOW) is None, f"bit {i}"


def test_every_char_change_is_rejected() -> None:
    s = signer()
    token = s.make(LINK, LATER, "open")
    for i, ch in enumerate(token):
        alt = "A" if ch != "A" else "B"
        assert s.verify(token[:i] + alt + token[i + 1 :], "open", NOW) is None


def test_rotation_and_unknown_keys() -> None:
    old_token = signer(active=1).make(LINK, LATER, "click")
    new_signer = signer(active=2)
    new_token = new_signer.make(LINK, LATER, "click")
    assert base64.urlsafe_b64decode(new_token)[0] == 2
    assert new_signer.verify(old_token, "click", NOW) is not None
    only_new = TokenSigner({2: KEY2}, 2)
    assert only_new.verify(old_token, "click", NOW) is None
    assert only_new.verify(new_token, "click", NOW) is not None


def test_forgery_with_other_key_under_same_id_fails() -> None:
    forger = TokenSigner({1: b"\x99" * 32}, 1)
    assert signer().verify(forger.make(LINK, LATER, "open"), "open", NOW) is None


def test_padded_or_reencoded_tokens_rejected() -> None:
    s = signer()
    token = s.make(LINK, LATER, "open")
    assert s.verify(token + "=", "open", NOW) is None
    std = base64.b64encode(base64.urlsafe_b64decode(token)).decode()
    if std != token:  # only differs when '-'/'_' occur
        assert s.verify(std, "open", NOW) is None


@pytest.mark.parametrize(
    "bad",
    ["", "x", "é" * 44, "\x00" * 44, "A" * 44, "A" * 43 + "=", "A" * 10**6, " " * 44],
)
def test_bad_inputs_return_none(bad: str) -> None:
    assert signer().verify(bad, "open", NOW) is None


def test_non_string_input_returns_none() -> None:
    assert signer().verify(None, "open", NOW) is None  # type: ignore[arg-type]
    assert signer().verify(b"A" * 44, "open", NOW) is None  # type: ignore[arg-type]


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_fuzz_arbitrary_text_never_raises(token: str) -> None:
    assert signer().verify(token, "click", NOW) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=33, max_size=33))
def test_fuzz_well_shaped_random_tokens_are_rejected(raw: bytes) -> None:
    token = base64.urlsafe_b64encode(raw).decode()
    assert len(token) == TOKEN_LENGTH
    assert signer().verify(token, "click", NOW) is None


@settings(max_examples=200, deadline=None)
@given(
    st.binary(min_size=12, max_size=12),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.sampled_from(PURPOSES),
)
def test_fuzz_round_trip(link_id: bytes, expires_at: int, purpose: str) -> None:
    s = signer()
    got = s.verify(s.make(link_id, expires_at, purpose), purpose, NOW)
    assert got == VerifiedToken(link_id, NOW >= expires_at, expires_at)


@pytest.mark.parametrize(
    "link_id, expires_at, purpose",
    [
        (b"short", LATER, "open"),
        (LINK, -1, "open"),
        (LINK, 2**32, "open"),
        (LINK, True, "open"),
        (LINK, 1.5, "open"),
        (LINK, LATER, "bogus"),
    ],
)
def test_make_rejects_bad_arguments(link_id: bytes, expires_at: int, purpose: str) -> None:
    with pytest.raises(ValueError):
        signer().make(link_id, expires_at, purpose)


def test_verify_with_unknown_purpose_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        signer().verify(signer().make(LINK, LATER, "open"), "bogus", NOW)


@pytest.mark.parametrize(
    "keys, active",
    [({1: b"short"}, 1), ({256: KEY1}, 256), ({-1: KEY1}, -1), ({1: KEY1}, 2)],
)
def test_signer_rejects_bad_keys(keys: dict[int, bytes], active: int) -> None:
    with pytest.raises(ValueError):
        TokenSigner(keys, active)


def test_new_link_id() -> None:
    a, b = new_link_id(), new_link_id()
    assert len(a) == 12 and len(b) == 12 and a != b
