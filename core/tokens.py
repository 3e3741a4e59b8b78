"""Signed tracking tokens for open/click/unsubscribe URLs (SPEC sections 5, 7).

A token names a stored link record by a random id and nothing else: no
address, no contact id, no PHI. Layout before base64url (no padding):

    key id (1) | link id (12) | expires_at (4, big-endian unix s) | MAC (16)

MAC = HMAC-SHA256(key, kid|link_id|expires_at|purpose) truncated to 16 bytes.
The purpose is signed but not carried, so an open token cannot be replayed as
an unsubscribe. The header is fixed length, so the MAC input is unambiguous.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
import secrets
import struct
from collections.abc import Mapping
from typing import Final

PURPOSES: Final = ("open", "click", "unsub")

LINK_ID_SIZE: Final = 12
MAC_SIZE: Final = 16
MIN_KEY_SIZE: Final = 32
MAX_EXPIRY: Final = 2**32 - 1

_HEADER = struct.Struct(">B12sI")
TOKEN_BYTES: Final = _HEADER.size + MAC_SIZE  # 33
TOKEN_LENGTH: Final = 44  # 33 bytes = 264 bits = exactly 44 base64 chars, no padding
_B64URL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclasses.dataclass(frozen=True)
class VerifiedToken:
    link_id: bytes
    expired: bool
    expires_at: int


def new_link_id() -> bytes:
    """A fresh random link id; the caller stores it with the link record."""
    return secrets.token_bytes(LINK_ID_SIZE)


class TokenSigner:
    """Makes and checks tokens. `active` signs; every key in `keys` verifies,
    so keys rotate by adding a new active key and dropping the old one once
    its tokens have expired."""

    def __init__(self, keys: Mapping[int, bytes], active: int) -> None:
        for kid, key in keys.items():
            if not isinstance(kid, int) or not 0 <= kid <= 255:
                raise ValueError("token key ids must be integers 0-255")
            if not isinstance(key, bytes) or len(key) < MIN_KEY_SIZE:
                raise ValueError(f"token key {kid} must be at least {MIN_KEY_SIZE} bytes")
        if active not in keys:
            raise ValueError(f"active token key id {active} is not among the keys")
        self._keys = dict(keys)
        self._active = active

    @staticmethod
    def _check_purpose(purpose: str) -> bytes:
        if purpose not in PURPOSES:
            raise ValueError(f"token purpose must be one of {PURPOSES}")
        return purpose.encode("ascii")

    def _mac(self, key: bytes, header: bytes, purpose: bytes) -> bytes:
        # hmac.digest is the one-shot (OpenSSL) form: same MAC, a fraction of the cost.
        return hmac.digest(key, header + purpose, "sha256")[:MAC_SIZE]

    def make(self, link_id: bytes, expires_at: int, purpose: str) -> str:
        """Token for `link_id` valid until `expires_at` (unix seconds)."""
        purpose_b = self._check_purpose(purpose)
        if not isinstance(link_id, bytes) or len(link_id) != LINK_ID_SIZE:
            raise ValueError(f"link_id must be {LINK_ID_SIZE} bytes")
        if type(expires_at) is not int or not 0 <= expires_at <= MAX_EXPIRY:
            raise ValueError("expires_at must be unix seconds within 32 bits")
        header = _HEADER.pack(self._active, link_id, expires_at)
        raw = header + self._mac(self._keys[self._active], header, purpose_b)
        return base64.urlsafe_b64encode(raw).decode("ascii")

    def verify(self, token: str, purpose: str, now: int) -> VerifiedToken | None:
        """The link id if `token` is authentic for `purpose`, else None.

        Never raises on a bad token (wrong type, size, alphabet, key, MAC):
        tokens arrive from the internet. An authentic token past its expiry
        still verifies, with expired=True, so the caller chooses how to
        degrade (e.g. still honour an unsubscribe). Raises ValueError only
        for an unknown `purpose`, which is a programming error.
        """
        purpose_b = self._check_purpose(purpose)
        # Cheap shape checks first, so huge or non-ascii input costs nothing.
        if not isinstance(token, str) or len(token) != TOKEN_LENGTH:
            return None
        if not _B64URL_CHARS.issuperset(token):
            return None
        try:
            raw = base64.urlsafe_b64decode(token)
        except (binascii.Error, ValueError):
            return None
        if len(raw) != TOKEN_BYTES:
            return None
        header, mac = raw[: _HEADER.size], raw[_HEADER.size :]
        kid, link_id, expires_at = _HEADER.unpack(header)
        key = self._keys.get(kid)
        if key is None:
            return None
        if not hmac.compare_digest(mac, self._mac(key, header, purpose_b)):
            return None
        return VerifiedToken(link_id=link_id, expired=now >= expires_at, expires_at=expires_at)
