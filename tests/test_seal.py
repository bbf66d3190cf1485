"""The sealed handoff: round trip, tamper, wrong key, expiry, rotation."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from ext_proc.seal import Keyring, SealError, SealFailure
from tests.support.decisions import KEY_A, KEY_B, NOW

ENTRIES = [("x-api-key", b"sk-ant-api03-K"), ("authorization", b"sk-ant-oat01-\xffO")]


def _blob(token: str) -> bytearray:
    body = token[3:]
    return bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def _token(blob: bytes) -> bytes:
    return b"v1." + base64.urlsafe_b64encode(blob).rstrip(b"=")


def test_round_trip_keeps_order_origin_and_raw_bytes() -> None:
    ring = Keyring([KEY_A], 600)
    token = ring.seal(ENTRIES, NOW)
    assert token.startswith("v1.") and token.isascii() and " " not in token
    opened = ring.open(token.encode(), NOW + 10)
    assert list(opened.entries) == ENTRIES and opened.issued_at == int(NOW)


def test_nothing_of_the_credential_is_visible() -> None:
    token = Keyring([KEY_A], 600).seal(ENTRIES, NOW)
    blob = bytes(_blob(token))
    assert b"sk-ant" not in blob and b"x-api-key" not in blob


def test_each_seal_is_unique() -> None:
    ring = Keyring([KEY_A], 600)
    assert ring.seal(ENTRIES, NOW) != ring.seal(ENTRIES, NOW)


def test_every_flipped_byte_is_rejected() -> None:
    ring = Keyring([KEY_A], 600)
    blob = _blob(ring.seal(ENTRIES, NOW))
    for i in range(len(blob)):
        for bit in (0x01, 0x80):
            bad = bytearray(blob)
            bad[i] ^= bit
            with pytest.raises(SealError) as info:
                ring.open(_token(bytes(bad)), NOW)
            assert info.value.reason in (SealFailure.TAMPERED, SealFailure.UNKNOWN_KEY)


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_arbitrary_input_never_opens_and_never_raises_anything_else(junk: bytes) -> None:
    ring = Keyring([KEY_A], 600)
    for candidate in (junk, b"v1." + junk, _token(junk)):
        with pytest.raises(SealError):
            ring.open(candidate, NOW)


def test_wrong_key_is_unknown() -> None:
    token = Keyring([KEY_A], 600).seal(ENTRIES, NOW)
    with pytest.raises(SealError) as info:
        Keyring([KEY_B], 600).open(token.encode(), NOW)
    assert info.value.reason == SealFailure.UNKNOWN_KEY


def test_same_key_id_other_key_is_tampered() -> None:
    """A forged key id (copied from a real seal) still fails authentication."""
    real = _blob(Keyring([KEY_A], 600).seal(ENTRIES, NOW))
    forged = _blob(Keyring([KEY_B], 600).seal(ENTRIES, NOW))
    forged[:4] = real[:4]
    with pytest.raises(SealError) as info:
        Keyring([KEY_A], 600).open(_token(bytes(forged)), NOW)
    assert info.value.reason == SealFailure.TAMPERED


@pytest.mark.parametrize(("age", "ok"), [(0, True), (600, True), (601, False), (-30, True), (-31, False)])
def test_expiry_with_small_clock_skew(age: int, ok: bool) -> None:
    ring = Keyring([KEY_A], 600)
    token = ring.seal(ENTRIES, NOW).encode()
    if ok:
        ring.open(token, NOW + age)
    else:
        with pytest.raises(SealError) as info:
            ring.open(token, NOW + age)
        assert info.value.reason == SealFailure.EXPIRED


def test_rotation_first_seals_all_open() -> None:
    old = Keyring([KEY_A], 600)
    rotated = Keyring([KEY_B, KEY_A], 600)
    retired = Keyring([KEY_B], 600)
    from_old = old.seal(ENTRIES, NOW).encode()
    from_new = rotated.seal(ENTRIES, NOW).encode()
    assert rotated.open(from_old, NOW).entries == rotated.open(from_new, NOW).entries
    assert retired.open(from_new, NOW).entries == tuple(ENTRIES)
    with pytest.raises(SealError):
        retired.open(from_old, NOW)
    with pytest.raises(SealError):
        old.open(from_new, NOW)
    # What the logs show at start: every key's id once, the sealing one first.
    assert rotated.key_ids == (retired.key_ids[0], old.key_ids[0]) and len(set(rotated.key_ids)) == 2
    assert old.key_ids == (hashlib.sha256(KEY_A).digest()[:4].hex(),)


@pytest.mark.parametrize(("keys", "ttl"), [([], 600), ([b"short"], 600), ([KEY_A], 0)])
def test_bad_keyring_refused(keys: list[bytes], ttl: int) -> None:
    with pytest.raises(ValueError):
        Keyring(keys, ttl)


# Known answer: the wire format, pinned (key id, nonce, AAD text, JSON plaintext, base64url without padding).
KAT_ENTRIES = [("authorization", b"sk-ant-oat01-KNOWNANSWER")]
KAT_NONCE = bytes(range(12))
KAT = (
    "v1.Yw3NKQABAgMEBQYHCAkKCzwgv3qxx_gqtXGnu4HZSF2z-qVX0kEEJxoGkPF1BnLbe3HalcCvMLRW1xTA6elcFYE4FL1r--iUcMBkWFawoquiHps"
    "nrpi5bPj0xrGjneC0XRkAwgo"
)


def test_known_answer_vector_seals_and_opens() -> None:
    ring = Keyring([KEY_A], 600)
    assert ring.seal(KAT_ENTRIES, NOW, nonce=KAT_NONCE) == KAT
    assert list(ring.open(KAT.encode(), NOW).entries) == KAT_ENTRIES


def test_known_answer_vector_read_independently_of_the_keyring() -> None:
    """The layout, read with nothing but AES-GCM: key id | nonce | ciphertext, AAD = label + key id."""
    blob = bytes(_blob(KAT))
    assert blob[:4] == hashlib.sha256(KEY_A).digest()[:4] and blob[4:16] == KAT_NONCE
    plaintext = AESGCM(KEY_A).decrypt(blob[4:16], blob[16:], b"ext-proc-credential-handoff-v1" + blob[:4])
    assert json.loads(plaintext) == {"iat": int(NOW), "c": [["authorization", "sk-ant-oat01-KNOWNANSWER"]]}


def test_every_truncation_of_a_genuine_seal_is_refused_as_a_seal_error() -> None:
    """Its key id intact (anyone who saw one handoff knows it), a short blob must never reach AES-GCM."""
    ring = Keyring([KEY_A], 600)
    token = ring.seal(ENTRIES, NOW)
    for length in range(len(token)):
        with pytest.raises(SealError):
            ring.open(token[:length].encode(), NOW)
    blob = bytes(_blob(token))
    for length in range(len(blob)):
        with pytest.raises(SealError) as info:
            ring.open(_token(blob[:length]), NOW)
        assert info.value.reason in (SealFailure.MALFORMED, SealFailure.TAMPERED, SealFailure.UNKNOWN_KEY)


@pytest.mark.parametrize(
    "plaintext",
    [b"[]", b"{}", b'{"c":[]}', b'{"iat":"1800000000","c":[]}', b'{"iat":1800000000}',
     b'{"iat":1800000000,"c":[["a"]]}', b'{"iat":1800000000,"c":"ab"}',
     b'{"iat":1800000000,"c":[["a","\\u20ac"]]}', b"not json", b'{"iat":1.5,"c":[]}'],
)  # fmt: skip
def test_authenticated_plaintext_of_the_wrong_shape_is_malformed(plaintext: bytes) -> None:
    kid = hashlib.sha256(KEY_A).digest()[:4]
    nonce = bytes(12)
    sealed = AESGCM(KEY_A).encrypt(nonce, plaintext, b"ext-proc-credential-handoff-v1" + kid)
    with pytest.raises(SealError) as info:
        Keyring([KEY_A], 600).open(_token(kid + nonce + sealed), NOW)
    assert info.value.reason == SealFailure.MALFORMED


def test_seals_ending_in_every_base64_character_round_trip() -> None:
    """Deterministic nonces and every blob length modulo 3, so an encoding bug that hits one final character in 64
    (stripping padding too eagerly, say) is caught on every run, not by chance."""
    ring = Keyring([KEY_A], 600)
    endings = set()
    for extra in range(3):
        entries = [("x-api-key", b"sk-ant-api03-K" + b"k" * extra)]
        for i in range(400):
            token = ring.seal(entries, NOW, nonce=i.to_bytes(12, "big"))
            endings.add(token[-1])
            assert list(ring.open(token.encode(), NOW).entries) == entries
    assert len(endings) == 64
