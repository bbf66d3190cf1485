"""Shared builders for rule tests: one keyring, one clock, a context from a Config and the secrets."""

from __future__ import annotations

from typing import Any

from ext_proc.config import Config
from ext_proc.credentials import Credential
from ext_proc.headers import HeaderView
from ext_proc.reload import rule_context
from ext_proc.rules import Decision, RuleContext, decide
from ext_proc.seal import Keyring
from ext_proc.secrets import Secrets

NOW = 1_800_000_000.0
KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))
KEYRING = Keyring([KEY_A], 600)


def context(server: Credential | None = None, keyring: Keyring = KEYRING, **config: Any) -> RuleContext:
    return rule_context(Config(**config), Secrets(keyring=keyring, server_credential=server))


def run(
    leg: str, policy: str, headers: HeaderView, ctx: RuleContext | None = None, now: float = NOW
) -> tuple[Decision, HeaderView]:
    """Envoy always sends ``:method`` and ``:path``; an ingress case that names neither is ``POST /v1/messages``."""
    seen = headers
    if leg == "ingress" and ":path" not in headers:
        seen = HeaderView([(":path", b"/v1/messages"), *seen])
    if leg == "ingress" and ":method" not in headers:
        seen = HeaderView([(":method", b"POST"), *seen])
    decision = decide(leg, policy, seen, ctx or context(), now)
    return decision, decision.apply(headers)


def handoff(*entries: tuple[str, str | bytes], keyring: Keyring = KEYRING, now: float = NOW) -> str:
    return keyring.seal([(n, v.encode() if isinstance(v, str) else v) for n, v in entries], now)
