"""Credential kinds: how a header value is classified, and how each kind is written upstream.

One small class per kind behind one interface (``Credential``): the rules pick a credential, the credential knows
which headers carry it. Nothing here ever renders a credential's value; only ``fingerprint`` leaves this module
in logs and audit records.
"""

from __future__ import annotations

import functools
import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

AUTHORIZATION = "authorization"
X_API_KEY = "x-api-key"
CREDENTIAL_HEADERS = (X_API_KEY, AUTHORIZATION)

# Values some clients and proxies send where a credential should be; none of them is ever emitted.
NULLISH = frozenset({b"", b"none", b"null", b"undefined"})
# HTTP's optional whitespace (RFC 9110 5.6.3); any other whitespace in a credential header makes it unreadable.
_WHITESPACE = b" \t"
_INNER_WHITESPACE = re.compile(rb"[ \t\r\n]")
_BEARER = re.compile(rb"(?i)bearer(?:[ \t]+|$)")
# What Anthropic issues after its prefix; a credential never holds anything else (no comma, space or second token).
_ALPHABET = re.compile(rb"[A-Za-z0-9_-]*")


class Kind(StrEnum):
    API_KEY = "api-key"
    OAUTH = "oauth"


class Credential(ABC):
    """An Anthropic credential, and the one form it must take on the wire."""

    kind: ClassVar[Kind]
    __slots__ = ("token",)

    def __init__(self, token: bytes) -> None:
        self.token = token

    @abstractmethod
    def headers(self) -> tuple[tuple[str, bytes], ...]:
        """The headers that carry this credential upstream, and nothing else."""

    @property
    def needs_oauth_beta(self) -> bool:
        return False

    def fingerprint(self) -> str:
        return fingerprint(self.kind, self.token)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.token == self.token

    def __hash__(self) -> int:
        return hash((self.kind, self.token))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.fingerprint()})"


class ApiKey(Credential):
    """An Anthropic API key: sent as ``x-api-key``, never as a Bearer token."""

    kind = Kind.API_KEY
    __slots__ = ()

    def headers(self) -> tuple[tuple[str, bytes], ...]:
        return ((X_API_KEY, self.token),)


class OAuthToken(Credential):
    """An Anthropic OAuth token (Claude subscriptions): sent as ``Authorization: Bearer`` with the OAuth beta."""

    kind = Kind.OAUTH
    __slots__ = ()

    def headers(self) -> tuple[tuple[str, bytes], ...]:
        return ((AUTHORIZATION, b"Bearer " + self.token),)

    @property
    def needs_oauth_beta(self) -> bool:
        return True


class Problem(StrEnum):
    """Why a credential header cannot be read as exactly one credential."""

    CONFLICT = "conflict"  # repeats of the header that differ
    MULTIPLE = "multiple"  # one value holding more than one token (comma-joined repeats, obs-fold, mixed schemes)
    MALFORMED = "malformed"  # an Anthropic prefix with characters outside the credential alphabet, or hidden inside


class UnreadableCredential(ValueError):
    """A credential header that is neither one credential nor clearly none. Carries names, never a value."""

    def __init__(self, header: str, problem: Problem) -> None:
        super().__init__(f"{header}: {problem}")
        self.header = header
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Prefixes:
    """What an upstream's credentials look like. Anthropic's are the default."""

    anthropic: bytes = b"sk-ant-"
    oauth: bytes = b"sk-ant-oat"

    def classify(self, token: bytes, header: str = X_API_KEY) -> Credential | None:
        """An Anthropic credential, or None for anything else (a foreign credential, or no credential at all).

        A token that holds the Anthropic prefix is a credential only if it starts with it and the rest is in the
        credential alphabet; anything else holding the prefix raises, so it is refused instead of half-read.
        """
        if token.lower() in NULLISH:
            return None
        if token.startswith(self.anthropic):
            if _ALPHABET.fullmatch(token, len(self.anthropic)) is None:
                raise UnreadableCredential(header, Problem.MALFORMED)
            return OAuthToken(token) if token.startswith(self.oauth) else ApiKey(token)
        if self.anthropic in token:
            raise UnreadableCredential(header, Problem.MALFORMED)
        return None

    def read(self, header: str, values: Sequence[bytes]) -> Credential | None:
        """The Anthropic credential one credential header carries, over all its repeats; None for a foreign one."""
        token = read_token(header, values)
        if token is None:
            if any(self.anthropic in value for value in values):
                raise UnreadableCredential(header, Problem.MALFORMED)
            return None
        return self.classify(token, header)


def read_token(header: str, values: Sequence[bytes]) -> bytes | None:
    """The one token a credential header carries, trimmed, over all its repeats and comma-joined copies.

    None when the header is absent, or when ``authorization`` uses a scheme other than Bearer (a foreign
    credential such as Basic or AWS SigV4, whose parameters may hold commas). Identical repeats are one token;
    different ones, or a value holding more than one token, raise ``UnreadableCredential``.
    """
    if not values:
        return None
    if header == AUTHORIZATION:
        return _bearer_token(values)
    tokens = {_one_token(header, part) for value in values for part in _parts(value)}
    if len(tokens) > 1:
        raise UnreadableCredential(header, Problem.CONFLICT if len(values) > 1 else Problem.MULTIPLE)
    return tokens.pop()  # never empty: every value has at least one part, b"" when blank


def _bearer_token(values: Sequence[bytes]) -> bytes | None:
    bearer: set[bytes] = set()
    other: set[bytes] = set()
    for value in values:
        value = _trim(value)
        if _BEARER.match(value):
            bearer.update(_one_token(AUTHORIZATION, _BEARER.sub(b"", part, count=1)) for part in _parts(value))
            if any(not _BEARER.match(part) and part for part in (_trim(p) for p in value.split(b","))):
                raise UnreadableCredential(AUTHORIZATION, Problem.MULTIPLE)
        else:
            if any(_BEARER.match(_trim(part)) for part in value.split(b",")):
                raise UnreadableCredential(AUTHORIZATION, Problem.MULTIPLE)
            other.add(value)
    if (bearer and other) or len(other) > 1:
        raise UnreadableCredential(AUTHORIZATION, Problem.CONFLICT)
    if len(bearer) > 1:
        raise UnreadableCredential(AUTHORIZATION, Problem.CONFLICT if len(values) > 1 else Problem.MULTIPLE)
    return bearer.pop() if bearer else None


def _trim(value: bytes) -> bytes:
    """HTTP's optional whitespace around a value or list element: only SP and HTAB (RFC 9110 5.6.3). CR, LF, VT
    and FF stay, and make a credential unreadable (bytes.strip() would take them)."""
    return value.strip(_WHITESPACE)


def _parts(value: bytes) -> list[bytes]:
    """A header value as a list (RFC 9110 5.6.1): split on commas, trimmed, empty elements dropped."""
    parts = [_trim(part) for part in value.split(b",")]
    return [part for part in parts if part] or [b""]


def _one_token(header: str, part: bytes) -> bytes:
    part = _trim(part)
    if _INNER_WHITESPACE.search(part):
        raise UnreadableCredential(header, Problem.MULTIPLE)
    return part


def token_of(header: str, value: bytes) -> bytes | None:
    """The token one value of a credential header carries (see ``read_token``)."""
    return read_token(header, (value,))


@functools.lru_cache(maxsize=1024)
def fingerprint(kind: str, token: bytes) -> str:
    """Kind, last four characters and a short hash: enough to correlate, never enough to use.

    Memoised: the same few credentials recur on every request, and the hash is the costly part.
    """
    digest = hashlib.sha256(token).hexdigest()[:8]
    tail = token[-4:].decode("ascii", "backslashreplace")
    return f"{kind}:...{tail}:{digest}"
