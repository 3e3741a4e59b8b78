"""DKIM signing (rsa-sha256, relaxed/relaxed) with dkimpy, and verification for tests.

dkimpy stamps the signature's t= tag from the system clock; that is the only
clock read here and does not affect what is signed otherwise.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from functools import lru_cache

import dkim as dkimpy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

# RFC 8058 requires both List-Unsubscribe headers under the signature. From is
# listed twice ("oversigned") so a second From cannot be added without breaking it.
SIGNED_HEADERS: tuple[str, ...] = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Id",
    "Reply-To",
    "MIME-Version",
    "Content-Type",
    "From",
)


class DkimError(Exception):
    """Signing failed; the message names the cause, never message content."""


@lru_cache(maxsize=8)
def _pkcs1_pem(private_key_pem: bytes) -> bytes:
    """dkimpy reads only PKCS#1 ("BEGIN RSA PRIVATE KEY"); accept PKCS#8 too.

    Once per key, not per message: loading a PEM key checks the RSA key's consistency,
    which measured ~40 ms CPU, far more than the signature itself."""
    try:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise DkimError("DKIM private key is not an unencrypted PEM key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise DkimError("DKIM private key must be an RSA key")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def sign(
    msg_bytes: bytes,
    selector: str,
    domain: str,
    private_key_pem: bytes,
    headers: Sequence[str] = SIGNED_HEADERS,
) -> bytes:
    """`msg_bytes` with a DKIM-Signature header prepended.

    Headers in `headers` that the message lacks are signed as absent, which
    also stops them from being added later.
    """
    if not any(h.lower() == "from" for h in headers):
        raise DkimError("the From header must be signed")
    try:
        signature = dkimpy.sign(
            msg_bytes,
            selector.encode("ascii"),
            domain.encode("ascii"),
            _pkcs1_pem(private_key_pem),
            canonicalize=(b"relaxed", b"relaxed"),
            signature_algorithm=b"rsa-sha256",
            include_headers=[h.encode("ascii") for h in headers],
        )
    except dkimpy.DKIMException as exc:
        raise DkimError(f"DKIM signing failed ({type(exc).__name__})") from None
    return bytes(signature) + msg_bytes


def txt_record(public_key_pem: bytes) -> str:
    """The DNS TXT value to publish at <selector>._domainkey.<domain>."""
    key = serialization.load_pem_public_key(public_key_pem)
    if not isinstance(key, rsa.RSAPublicKey):
        raise DkimError("DKIM public key must be an RSA key")
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")


# (selector, domain) -> public key PEM, or None when no key is published.
KeyLookup = Callable[[str, str], bytes | None]


def verify(msg_bytes: bytes, public_keys: KeyLookup | bytes) -> bool:
    """Whether the topmost DKIM signature verifies, resolving keys without DNS.

    `public_keys` is either one PEM public key used for any selector/domain, or
    a lookup(selector, domain) -> PEM | None.
    """

    def lookup(selector: str, domain: str) -> bytes | None:
        if isinstance(public_keys, bytes):
            return public_keys
        return public_keys(selector, domain)

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        qname = name.decode("ascii").rstrip(".").lower()
        selector, sep, domain = qname.partition("._domainkey.")
        if not sep:
            return None
        pem = lookup(selector, domain)
        return txt_record(pem).encode("ascii") if pem else None

    return bool(dkimpy.verify(msg_bytes, dnsfunc=dnsfunc))
