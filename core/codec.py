"""AES-256-GCM payload codec for Temporal (SPEC section 7).

Every payload (inputs, results, signals, and failure messages/stack traces via
the encoded-attributes failure converter) is serialized whole and encrypted, so
Temporal's history holds no clear PHI. Keys carry ids so they can be rotated:
the active key encrypts, any key in the ring decrypts.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

ENCODING = b"binary/encrypted"
METADATA_ENCODING = "encoding"
METADATA_KEY_ID = "encryption-key-id"

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
# Versioned prefix of the associated data: a ciphertext only opens under the
# key id it was written with, so a swapped metadata key id cannot go unnoticed.
_AAD_PREFIX = b"journeys/temporal-payload/v1|key-id="
# Ids travel in metadata and in config strings ("id:base64,..."), so keep them
# to a safe alphabet without the separators.
_KEY_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


class KeyRingError(ValueError):
    """Invalid key configuration. Messages name key ids, never key material."""


class PayloadDecryptionError(Exception):
    """An encrypted payload could not be decrypted. Names the key id only."""

    def __init__(self, key_id: str, reason: str) -> None:
        self.key_id = key_id
        super().__init__(f"cannot decrypt payload with key id {key_id!r}: {reason}")


class CodecRequestError(ValueError):
    """A codec-server request body is not valid proto JSON Payloads."""


def _aad(key_id: str) -> bytes:
    return _AAD_PREFIX + key_id.encode("ascii")


@dataclasses.dataclass(frozen=True)
class KeyRing:
    """Encryption keys by id; `active_id` is the one new payloads use."""

    keys: Mapping[str, bytes]
    active_id: str

    def __post_init__(self) -> None:
        for key_id, key in self.keys.items():
            if not isinstance(key_id, str) or not _KEY_ID_RE.fullmatch(key_id):
                raise KeyRingError("key ids must be 1-64 chars of [A-Za-z0-9._-]")
            if not isinstance(key, bytes) or len(key) != KEY_SIZE:
                raise KeyRingError(f"key {key_id!r} must be exactly {KEY_SIZE} bytes")
        if self.active_id not in self.keys:
            raise KeyRingError(f"active key id {self.active_id!r} is not in the key ring")
        # Private copy: later changes to the caller's dict must not alter the ring.
        object.__setattr__(self, "keys", dict(self.keys))

    @classmethod
    def from_spec(cls, spec: str, active: str) -> KeyRing:
        """Parse "k1:BASE64,k2:BASE64" (standard base64 of 32-byte keys)."""
        keys: dict[str, bytes] = {}
        for index, entry in enumerate(spec.split(","), start=1):
            entry = entry.strip()
            if not entry:
                continue
            key_id, sep, b64 = entry.partition(":")
            key_id = key_id.strip()
            if not sep or not _KEY_ID_RE.fullmatch(key_id):
                raise KeyRingError(f"key spec entry {index} is not 'id:base64'")
            if key_id in keys:
                raise KeyRingError(f"key id {key_id!r} appears twice in the key spec")
            try:
                keys[key_id] = base64.b64decode(b64.strip(), validate=True)
            except (binascii.Error, ValueError):
                # `from None`: the binascii message could echo key material.
                raise KeyRingError(f"key {key_id!r} is not valid base64") from None
        if not keys:
            raise KeyRingError("key spec holds no keys")
        return cls(keys, active)

    @staticmethod
    def generate_key_b64() -> str:
        """A fresh random 256-bit key, standard base64, for use in a key spec."""
        return base64.b64encode(os.urandom(KEY_SIZE)).decode("ascii")

    def key(self, key_id: str) -> bytes | None:
        return self.keys.get(key_id)


class EncryptionCodec(PayloadCodec):
    """Encrypts whole serialized Payloads with AES-256-GCM.

    Encrypted payloads: metadata {"encoding": b"binary/encrypted",
    "encryption-key-id": id}, data = 12-byte nonce || ciphertext+tag.
    Anything else decodes unchanged, so histories from before encryption
    was switched on stay readable.
    """

    def __init__(self, keyring: KeyRing) -> None:
        self._keyring = keyring
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keyring.keys.items()}

    @property
    def keyring(self) -> KeyRing:
        return self._keyring

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        key_id = self._keyring.active_id
        nonce = os.urandom(NONCE_SIZE)
        plaintext = payload.SerializeToString(deterministic=True)
        ciphertext = self._ciphers[key_id].encrypt(nonce, plaintext, _aad(key_id))
        return Payload(
            metadata={METADATA_ENCODING: ENCODING, METADATA_KEY_ID: key_id.encode("ascii")},
            data=nonce + ciphertext,
        )

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get(METADATA_ENCODING) != ENCODING:
            return payload
        raw_id = payload.metadata.get(METADATA_KEY_ID)
        if raw_id is None:
            raise PayloadDecryptionError("", "metadata has no encryption-key-id")
        # Shown in errors, so only accept the id alphabet (also bounds its length).
        key_id = raw_id.decode("ascii", errors="replace")
        if not _KEY_ID_RE.fullmatch(key_id):
            raise PayloadDecryptionError(key_id[:64], "malformed key id")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise PayloadDecryptionError(key_id, "unknown key id")
        data = payload.data
        if len(data) < NONCE_SIZE + TAG_SIZE:
            raise PayloadDecryptionError(key_id, "ciphertext too short")
        try:
            plaintext = cipher.decrypt(data[:NONCE_SIZE], data[NONCE_SIZE:], _aad(key_id))
        except InvalidTag:
            raise PayloadDecryptionError(key_id, "authentication failed") from None
        try:
            return Payload.FromString(plaintext)
        except DecodeError:
            raise PayloadDecryptionError(key_id, "decrypted data is not a Payload") from None


def data_converter(keyring: KeyRing) -> DataConverter:
    """Default converter plus encryption; failure messages and stack traces
    move into an encoded attribute so they are encrypted as well."""
    return dataclasses.replace(
        DataConverter.default,
        payload_codec=EncryptionCodec(keyring),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


# --- Temporal UI codec-server protocol: {"payloads": [{"metadata": {k: b64}, "data": b64}]}


def _parse_payloads(body: Mapping[str, Any]) -> Payloads:
    if not isinstance(body, Mapping):
        raise CodecRequestError("body must be a JSON object")
    try:
        return json_format.ParseDict(dict(body), Payloads())
    except (json_format.ParseError, TypeError, ValueError):
        # `from None`: parser messages can quote the (clear, PHI-bearing) values.
        raise CodecRequestError("body is not a valid Payloads JSON object") from None


def _dump_payloads(payloads: Sequence[Payload]) -> dict[str, Any]:
    out = json_format.MessageToDict(Payloads(payloads=payloads))
    # Proto JSON omits empty fields; spell out the ones the UI reads.
    out.setdefault("payloads", [])
    for item in out["payloads"]:
        item.setdefault("metadata", {})
        item.setdefault("data", "")
    return out


async def encode_json_payloads(codec: PayloadCodec, body: Mapping[str, Any]) -> dict[str, Any]:
    """/encode: proto-JSON Payloads in, encoded proto-JSON Payloads out."""
    payloads = _parse_payloads(body)
    return _dump_payloads(await codec.encode(payloads.payloads))


async def decode_json_payloads(codec: PayloadCodec, body: Mapping[str, Any]) -> dict[str, Any]:
    """/decode: proto-JSON Payloads in, decoded proto-JSON Payloads out.

    Raises PayloadDecryptionError (key id only) when a payload will not open.
    """
    payloads = _parse_payloads(body)
    return _dump_payloads(await codec.decode(payloads.payloads))
