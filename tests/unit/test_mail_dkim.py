from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mail import dkim
from mail.headers_check import check_marketing_headers
from mail.message import build_message, message_bytes
from mail.template_types import Rendered


def _pems(key: rsa.RSAPrivateKey, fmt: serialization.PrivateFormat) -> tuple[bytes, bytes]:
    private = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _pems(key, serialization.PrivateFormat.PKCS8)


@pytest.fixture(scope="module")
def other_public_key() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return _pems(key, serialization.PrivateFormat.PKCS8)[1]


def _message() -> bytes:
    content = Rendered(
        subject="Thanks for your visit",
        html="<p>Hello</p>",
        text="Hello\n",
        links=(),
    )
    msg = build_message(
        content,
        from_addr="Riverside Clinic <care@clinic.example>",
        to_addr="pat.doe@example.org",
        message_id="<3dfb628faa4ceadb0122b1ea6797dc8a@clinic.example>",
        date=datetime(2026, 1, 5, 10, 0, tzinfo=UTC),
        unsubscribe_url="https://journeys.clinic.example/u/tok",
        unsubscribe_mailto="unsubscribe+tok@clinic.example",
        list_id="post-visit.clinic.example",
        physical_address="12 Harbor Road, Springfield",
    )
    return message_bytes(msg)


def _signature_tags(signed: bytes) -> dict[str, str]:
    header = signed.split(b"\r\n\r\n", 1)[0].decode("ascii")
    match = re.match(r"DKIM-Signature:(.*?)\r\n(?! )", header, re.DOTALL)
    assert match is not None
    value = re.sub(r"\s+", "", match.group(1))
    return dict(item.split("=", 1) for item in value.split(";") if item)


def test_sign_prepends_a_signature_that_verifies(keys: tuple[bytes, bytes]) -> None:
    private, public = keys
    original = _message()
    signed = dkim.sign(original, "s2026", "clinic.example", private)
    assert signed.startswith(b"DKIM-Signature: ")
    assert signed.endswith(original)
    assert dkim.verify(signed, public)


def test_signature_tags(keys: tuple[bytes, bytes]) -> None:
    signed = dkim.sign(_message(), "s2026", "clinic.example", keys[0])
    tags = _signature_tags(signed)
    assert tags["a"] == "rsa-sha256"
    assert tags["c"] == "relaxed/relaxed"
    assert (tags["d"], tags["s"]) == ("clinic.example", "s2026")
    covered = tags["h"].split(":")
    for header in (
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "list-id",
    ):
        assert header in covered
    assert covered.count("from") == 2  # oversigned


def test_lookup_by_selector_and_domain(keys: tuple[bytes, bytes]) -> None:
    private, public = keys
    signed = dkim.sign(_message(), "s2026", "clinic.example", private)
    seen: list[tuple[str, str]] = []

    def lookup(selector: str, domain: str) -> bytes | None:
        seen.append((selector, domain))
        return public if (selector, domain) == ("s2026", "clinic.example") else None

    assert dkim.verify(signed, lookup)
    assert seen == [("s2026", "clinic.example")]
    assert not dkim.verify(signed, lambda selector, domain: None)


def test_relaxed_canonicalisation_tolerates_whitespace_changes(keys: tuple[bytes, bytes]) -> None:
    private, public = keys
    signed = dkim.sign(_message(), "s2026", "clinic.example", private)
    rewrapped = signed.replace(b"Subject: Thanks", b"Subject:   Thanks")
    assert rewrapped != signed
    assert dkim.verify(rewrapped, public)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"List-Unsubscribe: <https://journeys", b"List-Unsubscribe: <https://evil"),
        (b"List-Unsubscribe-Post: List-Unsubscribe=One-Click", b"List-Unsubscribe-Post: x"),
        (b"Subject: Thanks", b"Subject: Hacked"),
        (b"Hello", b"Jello"),
        (b"\r\nTo: ", b"\r\nFrom: intruder@evil.example\r\nTo: "),
    ],
)
def test_tampering_breaks_the_signature(keys: tuple[bytes, bytes], old: bytes, new: bytes) -> None:
    private, public = keys
    signed = dkim.sign(_message(), "s2026", "clinic.example", private)
    assert old in signed
    assert not dkim.verify(signed.replace(old, new, 1), public)


def test_wrong_key_does_not_verify(keys: tuple[bytes, bytes], other_public_key: bytes) -> None:
    signed = dkim.sign(_message(), "s2026", "clinic.example", keys[0])
    assert not dkim.verify(signed, other_public_key)


def test_unsigned_message_does_not_verify(keys: tuple[bytes, bytes]) -> None:
    assert not dkim.verify(_message(), keys[1])


def test_pkcs1_keys_are_accepted(keys: tuple[bytes, bytes]) -> None:
    key = serialization.load_pem_private_key(keys[0], password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    pkcs1, public = _pems(key, serialization.PrivateFormat.TraditionalOpenSSL)
    assert b"BEGIN RSA PRIVATE KEY" in pkcs1
    assert dkim.verify(dkim.sign(_message(), "s", "clinic.example", pkcs1), public)


def test_signed_message_passes_the_header_check(keys: tuple[bytes, bytes]) -> None:
    signed = dkim.sign(_message(), "s2026", "clinic.example", keys[0])
    assert check_marketing_headers(signed, require_dkim=True) == []


def test_bad_keys_and_header_lists_raise_dkim_error(keys: tuple[bytes, bytes]) -> None:
    ed_key = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(dkim.DkimError):
        dkim.sign(_message(), "s", "clinic.example", ed_key)
    with pytest.raises(dkim.DkimError):
        dkim.sign(_message(), "s", "clinic.example", b"not a key")
    with pytest.raises(dkim.DkimError):
        dkim.sign(_message(), "s", "clinic.example", keys[0], headers=("To", "Subject"))


def test_txt_record(keys: tuple[bytes, bytes]) -> None:
    record = dkim.txt_record(keys[1])
    assert record.startswith("v=DKIM1; k=rsa; p=MII")
    assert "\n" not in record


def test_the_key_is_loaded_once_not_per_message(
    keys: tuple[bytes, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading a PEM key validates the RSA key (~40 ms CPU): once per key, not per send."""
    loads: list[bytes] = []
    real = serialization.load_pem_private_key

    def counting(data: bytes, password: bytes | None) -> object:
        loads.append(data)
        return real(data, password)

    monkeypatch.setattr(dkim.serialization, "load_pem_private_key", counting)
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    private, public = _pems(key, serialization.PrivateFormat.PKCS8)
    signed = [dkim.sign(_message(), "s2026", "clinic.example", private) for _ in range(3)]
    assert len(loads) == 1
    assert all(dkim.verify(s, public) for s in signed)
