import base64
import dataclasses
import os

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes

from core.codec import (
    ENCODING,
    METADATA_KEY_ID,
    CodecRequestError,
    EncryptionCodec,
    KeyRing,
    KeyRingError,
    PayloadDecryptionError,
    data_converter,
    decode_json_payloads,
    encode_json_payloads,
)

K1 = bytes(range(32))
K2 = bytes(range(100, 132))
SECRET = "jane.doe@example.org"


def ring(active: str = "k1", **keys: bytes) -> KeyRing:
    return KeyRing(keys or {"k1": K1}, active)


def json_payload(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=text.encode())


# --- KeyRing ---------------------------------------------------------------


def test_from_spec_parses_keys_and_active() -> None:
    spec = f"k1:{base64.b64encode(K1).decode()}, k2:{base64.b64encode(K2).decode()}"
    kr = KeyRing.from_spec(spec, active="k2")
    assert kr.keys == {"k1": K1, "k2": K2}
    assert kr.active_id == "k2"


def test_generate_key_b64_is_random_32_bytes_and_usable() -> None:
    a, b = KeyRing.generate_key_b64(), KeyRing.generate_key_b64()
    assert a != b
    assert len(base64.b64decode(a, validate=True)) == 32
    assert KeyRing.from_spec(f"x:{a}", "x").keys["x"] == base64.b64decode(a)


@pytest.mark.parametrize(
    "spec, active",
    [
        ("", "k1"),
        ("k1", "k1"),
        ("k1:" + base64.b64encode(b"short").decode(), "k1"),
        ("k1:not base64!!", "k1"),
        ("k1:" + base64.b64encode(K1).decode(), "k2"),
        (f"k1:{base64.b64encode(K1).decode()},k1:{base64.b64encode(K2).decode()}", "k1"),
        ("bad id:" + base64.b64encode(K1).decode(), "bad id"),
    ],
)
def test_from_spec_rejects_bad_specs(spec: str, active: str) -> None:
    with pytest.raises(KeyRingError):
        KeyRing.from_spec(spec, active)


def test_key_errors_never_echo_key_material() -> None:
    b64 = base64.b64encode(b"\x01" * 31).decode()
    with pytest.raises(KeyRingError) as err:
        KeyRing.from_spec(f"k1:{b64}", "k1")
    assert b64 not in str(err.value)
    assert "k1" in str(err.value)


def test_keyring_copies_caller_dict() -> None:
    keys = {"k1": K1}
    kr = KeyRing(keys, "k1")
    keys["k1"] = K2
    assert kr.keys["k1"] == K1


# --- codec ------------------------------------------------------------------


async def test_round_trip_and_ciphertext_hides_plaintext() -> None:
    codec = EncryptionCodec(ring())
    original = [json_payload(f'"{SECRET}"'), Payload(metadata={"encoding": b"binary/null"})]
    encoded = await codec.encode(original)
    assert len(encoded) == 2
    for p in encoded:
        assert p.metadata["encoding"] == ENCODING
        assert p.metadata[METADATA_KEY_ID] == b"k1"
        assert SECRET.encode() not in p.SerializeToString()
        assert b"json/plain" not in p.data
    assert await codec.decode(encoded) == original


async def test_encode_uses_fresh_nonce_and_does_not_mutate_input() -> None:
    codec = EncryptionCodec(ring())
    p = json_payload('"x"')
    snapshot = p.SerializeToString()
    a, b = await codec.encode([p, p])
    assert a.data[:12] != b.data[:12]
    assert a.data != b.data
    assert p.SerializeToString() == snapshot


async def test_unencrypted_payloads_pass_through() -> None:
    codec = EncryptionCodec(ring())
    plain = [json_payload('{"a": 1}'), Payload(data=b"raw, no metadata")]
    assert await codec.decode(plain) == plain


async def test_rotation_old_payloads_still_decode() -> None:
    old = EncryptionCodec(ring("k1", k1=K1))
    under_k1 = await old.encode([json_payload('"old"')])
    rotated = EncryptionCodec(ring("k2", k1=K1, k2=K2))
    under_k2 = await rotated.encode([json_payload('"new"')])
    assert under_k2[0].metadata[METADATA_KEY_ID] == b"k2"
    assert await rotated.decode(under_k1) == [json_payload('"old"')]
    assert await rotated.decode(under_k2) == [json_payload('"new"')]
    # And the old-only ring cannot read the new key's payloads.
    with pytest.raises(PayloadDecryptionError, match="k2"):
        await old.decode(under_k2)


async def test_unknown_key_id_error_names_key_only() -> None:
    encoded = await EncryptionCodec(ring("k2", k2=K2)).encode([json_payload(f'"{SECRET}"')])
    with pytest.raises(PayloadDecryptionError) as err:
        await EncryptionCodec(ring()).decode(encoded)
    assert err.value.key_id == "k2"
    assert "unknown key id" in str(err.value)
    assert SECRET not in str(err.value)


async def test_every_bit_flip_in_data_is_detected() -> None:
    codec = EncryptionCodec(ring())
    (enc,) = await codec.encode([json_payload(f'"{SECRET}"')])
    for i in range(len(enc.data) * 8):
        data = bytearray(enc.data)
        data[i // 8] ^= 1 << (i % 8)
        tampered = Payload(metadata=dict(enc.metadata), data=bytes(data))
        with pytest.raises(PayloadDecryptionError) as err:
            await codec.decode([tampered])
        assert err.value.key_id == "k1"
        assert SECRET not in str(err.value)


async def test_key_id_is_bound_by_associated_data() -> None:
    # Same key material under two ids: relabelling the ciphertext must fail.
    codec = EncryptionCodec(ring("a", a=K1, b=K1))
    (enc,) = await codec.encode([json_payload('"x"')])
    relabelled = Payload(metadata={"encoding": ENCODING, METADATA_KEY_ID: b"b"}, data=enc.data)
    with pytest.raises(PayloadDecryptionError, match="authentication failed"):
        await codec.decode([relabelled])


@pytest.mark.parametrize(
    "metadata, data",
    [
        ({"encoding": ENCODING}, os.urandom(40)),
        ({"encoding": ENCODING, METADATA_KEY_ID: b"k1"}, b"short"),
        ({"encoding": ENCODING, METADATA_KEY_ID: b"\xff\xfe"}, os.urandom(40)),
        ({"encoding": ENCODING, METADATA_KEY_ID: b"k1"}, os.urandom(40)),
    ],
)
async def test_malformed_encrypted_payloads_raise_clear_error(
    metadata: dict[str, bytes], data: bytes
) -> None:
    with pytest.raises(PayloadDecryptionError):
        await EncryptionCodec(ring()).decode([Payload(metadata=metadata, data=data)])


# --- DataConverter -----------------------------------------------------------


async def test_data_converter_round_trips_values_encrypted() -> None:
    dc = data_converter(ring())
    value = {"email": SECRET, "n": 3}
    payloads = await dc.encode([value])
    assert all(p.metadata["encoding"] == ENCODING for p in payloads)
    assert SECRET.encode() not in b"".join(p.SerializeToString() for p in payloads)
    assert await dc.decode(payloads, [dict]) == [value]


def test_data_converter_config() -> None:
    dc = data_converter(ring())
    assert isinstance(dc.payload_codec, EncryptionCodec)
    assert dc.failure_converter_class is DefaultFailureConverterWithEncodedAttributes
    # The rest stays the SDK default.
    assert dc.payload_converter_class is DataConverter.default.payload_converter_class
    assert DataConverter.default.payload_codec is None  # default singleton untouched
    assert dataclasses.is_dataclass(dc)


async def test_failure_message_and_stack_trace_are_encrypted() -> None:
    dc = data_converter(ring())
    try:
        raise ValueError(f"cannot send to {SECRET}")
    except ValueError as exc:
        failure = Failure()
        await dc.encode_failure(exc, failure)
    wire = failure.SerializeToString()
    assert SECRET.encode() not in wire
    assert "cannot send" not in failure.message
    assert failure.stack_trace == ""
    assert failure.encoded_attributes.metadata["encoding"] == ENCODING
    decoded = await dc.decode_failure(failure)
    assert SECRET in str(decoded)


# --- codec server JSON protocol ----------------------------------------------


async def test_json_protocol_round_trip() -> None:
    codec = EncryptionCodec(ring())
    body = {
        "payloads": [
            {
                "metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
                "data": base64.b64encode(f'"{SECRET}"'.encode()).decode(),
            }
        ]
    }
    encoded = await encode_json_payloads(codec, body)
    (enc,) = encoded["payloads"]
    assert base64.b64decode(enc["metadata"]["encoding"]) == ENCODING
    assert base64.b64decode(enc["metadata"][METADATA_KEY_ID]) == b"k1"
    assert SECRET not in str(encoded)
    assert await decode_json_payloads(codec, encoded) == body


async def test_json_protocol_passthrough_and_empty() -> None:
    codec = EncryptionCodec(ring())
    assert await decode_json_payloads(codec, {"payloads": []}) == {"payloads": []}
    assert await encode_json_payloads(codec, {}) == {"payloads": []}
    plain = {"payloads": [{"metadata": {"encoding": "YmluYXJ5L251bGw="}, "data": ""}]}
    assert await decode_json_payloads(codec, plain) == plain


@pytest.mark.parametrize(
    "body",
    [
        {"payloads": [{"data": "%%% not base64 " + SECRET}]},
        {"payloads": [{"unknown": SECRET}]},
        {"payloads": SECRET},
        [SECRET],
    ],
)
async def test_json_protocol_rejects_bad_bodies_without_echo(body: object) -> None:
    with pytest.raises(CodecRequestError) as err:
        await decode_json_payloads(EncryptionCodec(ring()), body)  # type: ignore[arg-type]
    assert SECRET not in str(err.value)
    # No chained parser error that could carry the values either.
    assert err.value.__cause__ is None
    assert err.value.__context__ is None or err.value.__suppress_context__


async def test_json_decode_with_unknown_key_raises() -> None:
    body = await encode_json_payloads(
        EncryptionCodec(ring("k9", k9=K2)), {"payloads": [{"data": "eA=="}]}
    )
    with pytest.raises(PayloadDecryptionError, match="k9"):
        await decode_json_payloads(EncryptionCodec(ring()), body)
