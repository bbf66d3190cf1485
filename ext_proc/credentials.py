"""Credential kinds: how a header value is classified, and how each kind is written upstream.

One small class per kind behind one interface (``Credential``): the rules pick a credential, the credential knows
which headers carry it. Nothing here ever renders a credential's value; only ``fingerprint`` leaves this module
in logs and audit records.
"""

from __future__ import annotations

import functools
import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

AUTHORIZATION = "authorization"
X_API_KEY = "x-api-key"
CREDENTIAL_HEADERS = (X_API_KEY, AUTHORIZATION)

# Values some clients and proxies send where a credential should be; none of them is ever emitted.
NULLISH = frozenset({b"", b"none", b"null", b"undefined"})
_WHITESPACE = b" \t\r\n"


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


@dataclass(frozen=True, slots=True)
class Prefixes:
    """What an upstream's credentials look like. Anthropic's are the default."""

    anthropic: bytes = b"sk-ant-"
    oauth: bytes = b"sk-ant-oat"

    def classify(self, token: bytes) -> Credential | None:
        """An Anthropic credential, or None for anything else (a foreign credential, or no credential at all)."""
        if token.lower() in NULLISH:
            return None
        if token.startswith(self.oauth):
            return OAuthToken(token)
        if token.startswith(self.anthropic):
            return ApiKey(token)
        return None


def token_of(header: str, value: bytes) -> bytes | None:
    """The token a credential header carries, trimmed; None when ``authorization`` uses a scheme other than Bearer."""
    value = value.strip(_WHITESPACE)
    if header != AUTHORIZATION:
        return value
    scheme, _, rest = value.partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return rest.strip(_WHITESPACE)


@functools.lru_cache(maxsize=1024)
def fingerprint(kind: str, token: bytes) -> str:
    """Kind, last four characters and a short hash: enough to correlate, never enough to use.

    Memoised: the same few credentials recur on every request, and the hash is the costly part.
    """
    digest = hashlib.sha256(token).hexdigest()[:8]
    tail = token[-4:].decode("ascii", "backslashreplace")
    return f"{kind}:...{tail}:{digest}"
