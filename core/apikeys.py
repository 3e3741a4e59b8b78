"""API keys: generation, parsing, hashing at rest (SPEC section 7).

Plaintext form: "jk_<prefix>_<secret>". The prefix (40 random bits) is stored
in clear to find the key's row; only a hash of the whole key is stored.

Why a fast hash is enough: slow hashes (bcrypt, argon2) make guessing a
low-entropy password expensive. The secret here is 256 random bits, so a
leaked hash cannot be brute-forced at any hash speed, and a fast hash keeps
per-request authentication cheap. With a server pepper (HMAC-SHA256) a stolen
database alone does not even let anyone test a guess.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from typing import Final, NamedTuple

ROLES: Final = ("admin", "designer", "operator", "marketer", "auditor", "integration")

KEY_PREFIX: Final = "jk"
PREFIX_BYTES: Final = 5  # -> 8 base32 chars
SECRET_BYTES: Final = 32  # 256 bits -> 52 base32 chars
_KEY_RE = re.compile(r"jk_([a-z2-7]{8})_([a-z2-7]{52})")
_KEY_LENGTH: Final = 2 + 1 + 8 + 1 + 52

_SHA256_SCHEME = "sha256"
_HMAC_SCHEME = "hmac-sha256"


class GeneratedKey(NamedTuple):
    plaintext: str  # shown to the user once, never stored
    prefix: str
    hash: str


def _b32(n_bytes: int) -> str:
    # Lower-case base32: URL/shell/header safe and never contains "_", our separator.
    return base64.b32encode(secrets.token_bytes(n_bytes)).decode("ascii").rstrip("=").lower()


def hash_key(plaintext: str, pepper: bytes | None = None) -> str:
    """Self-describing hash of the whole plaintext key: "<scheme>:<hex>"."""
    data = plaintext.encode("utf-8")
    if pepper:
        digest = hmac.new(pepper, data, hashlib.sha256).hexdigest()
        return f"{_HMAC_SCHEME}:{digest}"
    return f"{_SHA256_SCHEME}:{hashlib.sha256(data).hexdigest()}"


def generate_key(role: str, pepper: bytes | None = None) -> GeneratedKey:
    """A new key for `role`: (plaintext "jk_<prefix>_<secret>", prefix, hash).

    The role is stored by the caller next to the prefix and hash; it is checked
    here so no key is minted for a role that does not exist.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    prefix = _b32(PREFIX_BYTES)
    plaintext = f"{KEY_PREFIX}_{prefix}_{_b32(SECRET_BYTES)}"
    return GeneratedKey(plaintext, prefix, hash_key(plaintext, pepper))


def parse_key(plaintext: str) -> tuple[str, str] | None:
    """(prefix, secret) if `plaintext` has the key shape, else None. Never raises."""
    if not isinstance(plaintext, str) or len(plaintext) != _KEY_LENGTH:
        return None
    match = _KEY_RE.fullmatch(plaintext)
    if match is None:
        return None
    return match.group(1), match.group(2)


def verify_key(plaintext: str, stored_hash: str, pepper: bytes | None = None) -> bool:
    """Whether `plaintext` matches `stored_hash`, compared in constant time.

    The stored scheme must match the configuration: an HMAC hash cannot verify
    without the pepper, and a plain hash is refused once a pepper is set (so
    turning the pepper on really requires every key to carry it).
    """
    if parse_key(plaintext) is None or not isinstance(stored_hash, str):
        return False
    scheme, _, _ = stored_hash.partition(":")
    expected_scheme = _HMAC_SCHEME if pepper else _SHA256_SCHEME
    if scheme != expected_scheme:
        return False
    candidate = hash_key(plaintext, pepper)
    return hmac.compare_digest(candidate.encode("ascii"), stored_hash.encode("utf-8"))
