import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.apikeys import ROLES, generate_key, hash_key, parse_key, verify_key

PEPPER = b"p" * 32


def test_roles_match_spec() -> None:
    assert ROLES == ("admin", "designer", "operator", "marketer", "auditor", "integration")


@pytest.mark.parametrize("role", ROLES)
def test_generate_parse_verify_round_trip(role: str) -> None:
    plaintext, prefix, hashed = generate_key(role)
    assert plaintext.startswith(f"jk_{prefix}_")
    parsed = parse_key(plaintext)
    assert parsed is not None and parsed[0] == prefix
    assert parsed[1] not in hashed and plaintext not in hashed
    assert verify_key(plaintext, hashed)


def test_keys_are_unique_and_secret_is_256_bits() -> None:
    keys = [generate_key("admin") for _ in range(50)]
    assert len({k.plaintext for k in keys}) == 50
    assert len({k.prefix for k in keys}) == 50
    secret = parse_key(keys[0].plaintext)[1]  # type: ignore[index]
    assert len(secret) * 5 >= 256


def test_unknown_role_rejected() -> None:
    with pytest.raises(ValueError):
        generate_key("root")


def test_plain_hash_is_sha256_of_whole_key() -> None:
    key = generate_key("operator")
    assert key.hash == "sha256:" + hashlib.sha256(key.plaintext.encode()).hexdigest()


def test_peppered_hash() -> None:
    key = generate_key("auditor", pepper=PEPPER)
    assert key.hash.startswith("hmac-sha256:")
    assert key.hash != hash_key(key.plaintext)
    assert verify_key(key.plaintext, key.hash, pepper=PEPPER)
    assert not verify_key(key.plaintext, key.hash, pepper=b"q" * 32)
    assert not verify_key(key.plaintext, key.hash)  # pepper required
    # Once a pepper is configured, un-peppered hashes are refused.
    plain = generate_key("auditor")
    assert not verify_key(plain.plaintext, plain.hash, pepper=PEPPER)


def test_wrong_key_or_tampered_hash_fails() -> None:
    a, b = generate_key("marketer"), generate_key("marketer")
    assert not verify_key(b.plaintext, a.hash)
    # Same prefix, different secret.
    forged = a.plaintext[:-1] + ("a" if a.plaintext[-1] != "a" else "b")
    assert not verify_key(forged, a.hash)
    flipped = a.hash[:-1] + ("0" if a.hash[-1] != "0" else "1")
    assert not verify_key(a.plaintext, flipped)
    assert not verify_key(a.plaintext, "")
    assert not verify_key(a.plaintext, "sha256:")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "jk__",
        "jk_abcdefgh_",
        "xx_abcdefgh_" + "a" * 52,
        "jk_ABCDEFGH_" + "a" * 52,
        "jk_abcdefgh_" + "a" * 51,
        "jk_abcdefgh_" + "a" * 53,
        "jk_abcdefg_" + "a" * 53,
        "jk_abcdefgh_" + "a" * 51 + "_",
        "jk_abcdefgh_" + "a" * 51 + "\n",
        "jk_abcdefgh_" + "a" * 51 + "é",
        "jk_abcdefgh_" + "a" * 10**6,
    ],
)
def test_parse_rejects_malformed(bad: str) -> None:
    assert parse_key(bad) is None
    assert not verify_key(bad, hash_key(bad))


def test_parse_accepts_wellformed() -> None:
    assert parse_key("jk_abcdefgh_" + "z" * 52) == ("abcdefgh", "z" * 52)


def test_parse_non_string_returns_none() -> None:
    assert parse_key(None) is None  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_fuzz_parse_never_raises(text: str) -> None:
    assert parse_key(text) is None


@settings(max_examples=200, deadline=None)
@given(st.text(), st.text())
def test_fuzz_verify_never_raises(text: str, stored: str) -> None:
    assert verify_key(text, stored) is False
