"""The sealed handoff: Anthropic credentials carried across LiteLLM in one opaque, expiring header.

Stateless by design, so any replica holding the key can open what another sealed. Wire form::

    v1.<base64url(key_id[4] | nonce[12] | AES-256-GCM(plaintext))>

The key id is the first four bytes of SHA-256 over the key, so rotation needs no extra configuration: the first
key seals, every key opens. The plaintext carries the issue time, so expiry is authenticated with the credentials.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
_PREFIX = "v1."
_AAD = b"ext-proc-credential-handoff-v1"
_KID_BYTES = 4
_NONCE_BYTES = 12
# A sealer on another replica may run slightly ahead of this clock.
_CLOCK_SKEW_SECONDS = 30


class SealFailure(StrEnum):
    MALFORMED = "malformed"
    UNKNOWN_KEY = "unknown-key"
    TAMPERED = "tampered"
    EXPIRED = "expired"
    REPLAYED = "replayed"
    # The counter of opens holds as many live handoffs as it may: new ones are refused rather than a live one
    # forgotten (which would admit its replays again).
    TRACKER_FULL = "tracker-full"


class SealError(Exception):
    """A handoff header that cannot be trusted. ``reason`` is safe to log and to use as a metric label."""

    def __init__(self, reason: SealFailure) -> None:
        super().__init__(f"handoff header rejected: {reason}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Sealed:
    """What the ingress leg took off a request: (header of origin, token) pairs, in the order found."""

    entries: tuple[tuple[str, bytes], ...]
    issued_at: int
    # The seal's random nonce: what tells one handoff from another (for the bound on opens).
    nonce: bytes = b""


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()[:_KID_BYTES]


class Keyring:
    """Seal keys for rotation: the first seals, all open."""

    __slots__ = ("_by_id", "_primary", "_primary_id", "ttl_seconds")

    def __init__(self, keys: Sequence[bytes], ttl_seconds: int) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        for key in keys:
            if len(key) != KEY_BYTES:
                raise ValueError(f"a seal key must be {KEY_BYTES} bytes, got {len(key)}")
        if ttl_seconds <= 0:
            raise ValueError("the seal lifetime must be positive")
        self._by_id = {key_id(key): AESGCM(key) for key in reversed(keys)}
        self._primary_id = key_id(keys[0])
        self._primary = AESGCM(keys[0])
        self.ttl_seconds = ttl_seconds

    @classmethod
    def generate(cls, ttl_seconds: int) -> Keyring:
        return cls([os.urandom(KEY_BYTES)], ttl_seconds)

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Hex key ids, primary first: safe to log."""
        rest = [kid.hex() for kid in self._by_id if kid != self._primary_id]
        return (self._primary_id.hex(), *rest)

    def seal(self, entries: Sequence[tuple[str, bytes]], now: float, nonce: bytes | None = None) -> str:
        """A new handoff. ``nonce`` is for known-answer tests only: a nonce must never be used twice."""
        plaintext = json.dumps(
            {"iat": int(now), "c": [[name, token.decode("latin-1")] for name, token in entries]},
            separators=(",", ":"),
        ).encode()
        nonce = os.urandom(_NONCE_BYTES) if nonce is None else nonce
        sealed = self._primary.encrypt(nonce, plaintext, _AAD + self._primary_id)
        blob = self._primary_id + nonce + sealed
        return _PREFIX + base64.urlsafe_b64encode(blob).rstrip(b"=").decode("ascii")

    def open(self, value: bytes, now: float) -> Sealed:
        """The sealed credentials, or SealError; never returns anything it did not authenticate."""
        blob = _decode(value)
        kid, nonce, ciphertext = (
            blob[:_KID_BYTES],
            blob[_KID_BYTES : _KID_BYTES + _NONCE_BYTES],
            blob[_KID_BYTES + _NONCE_BYTES :],
        )
        aead = self._by_id.get(kid)
        if aead is None:
            raise SealError(SealFailure.UNKNOWN_KEY)
        try:
            plaintext = aead.decrypt(nonce, ciphertext, _AAD + kid)
        except InvalidTag:
            raise SealError(SealFailure.TAMPERED) from None
        sealed = _parse(plaintext, nonce)
        if not (now - self.ttl_seconds <= sealed.issued_at <= now + _CLOCK_SKEW_SECONDS):
            raise SealError(SealFailure.EXPIRED)
        return sealed


# One replica decides at most ~2,800 requests a second (the server's event loop at full CPU, docs/performance.md);
# the counter is sized for more than that, for a handoff's whole life (its TTL plus the clock skew allowed).
MAX_OPENS_PER_SECOND = 3_000


def tracker_capacity(ttl_seconds: int) -> int:
    """Live handoffs one process must be able to count: lifetime x the rate it can serve (~153 bytes each)."""
    return (ttl_seconds + _CLOCK_SKEW_SECONDS) * MAX_OPENS_PER_SECOND


class OpenCounter:
    """How many times each handoff has been opened by this process, kept until the handoff expires.

    A handoff is a bearer token for its lifetime: whoever holds a copy (LiteLLM's logs, spend logs, callbacks)
    could send it again. A real request opens its handoff once per upstream call LiteLLM makes for it (the call
    and its retries), so opens beyond ``max_opens`` are refused. Counted per process: N egress replicas allow up to
    N times as many. Bounded without forgetting: a live handoff is never dropped to make room; when ``capacity``
    live handoffs are counted, a new one is refused (``TRACKER_FULL``, fail closed) until some expire. The capacity
    is sized (``tracker_capacity``) so that one process cannot fill it at the rate it can serve.
    """

    __slots__ = ("_capacity", "_counts", "_swept_at", "max_opens")

    def __init__(self, max_opens: int, capacity: int = tracker_capacity(60)) -> None:
        if max_opens <= 0:
            raise ValueError("a handoff must be allowed at least one open")
        self.max_opens = max_opens
        self._capacity = capacity
        # nonce -> (opens so far, when it can be forgotten); insertion order is close to expiry order.
        self._counts: dict[bytes, tuple[int, float]] = {}
        self._swept_at = float("-inf")

    def admit(self, nonce: bytes, forget_at: float, now: float) -> bool:
        """Count one open; False once this handoff has been opened ``max_opens`` times.

        Raises ``SealError(TRACKER_FULL)`` for a handoff not yet counted when every place holds a live one.
        """
        counts = self._counts
        while counts:
            oldest = next(iter(counts))
            if counts[oldest][1] >= now:
                break
            del counts[oldest]
        opened, _ = counts.get(nonce, (0, forget_at))
        if opened == 0 and len(counts) >= self._capacity:
            # Insertion order is only close to expiry order (issue times may differ by the clock skew): sweep the
            # rest, at most once a second, so a flood of refused opens costs no more than the refusal.
            if now >= self._swept_at + 1:
                self._swept_at = now
                self._counts = counts = {n: entry for n, entry in counts.items() if entry[1] >= now}
            if len(counts) >= self._capacity:
                raise SealError(SealFailure.TRACKER_FULL)
        if opened >= self.max_opens:
            return False
        counts[nonce] = (opened + 1, forget_at)
        return True

    def __len__(self) -> int:
        return len(self._counts)


def _decode(value: bytes) -> bytes:
    text = value.strip()
    if not text.startswith(_PREFIX.encode()):
        raise SealError(SealFailure.MALFORMED)
    body = text[len(_PREFIX) :]
    try:
        blob = base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise SealError(SealFailure.MALFORMED) from None
    # Re-encoding must give the same text: rejects non-canonical or non-alphabet input the decoder let through.
    if base64.urlsafe_b64encode(blob).rstrip(b"=") != body:
        raise SealError(SealFailure.MALFORMED)
    if len(blob) < _KID_BYTES + _NONCE_BYTES + 16:
        raise SealError(SealFailure.MALFORMED)
    return blob


def _parse(plaintext: bytes, nonce: bytes) -> Sealed:
    # Authenticated, so only our own sealer wrote this; still, a bad shape fails closed rather than raising.
    try:
        doc = json.loads(plaintext)
        issued_at = doc["iat"]
        entries = tuple((str(name), str(token).encode("latin-1")) for name, token in doc["c"])
    except (ValueError, KeyError, TypeError, UnicodeEncodeError):
        raise SealError(SealFailure.MALFORMED) from None
    if not isinstance(issued_at, int):
        raise SealError(SealFailure.MALFORMED)
    return Sealed(entries, issued_at, nonce)
