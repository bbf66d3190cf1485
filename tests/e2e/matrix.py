"""The end-to-end matrix: routes, client credential setups, LiteLLM setups, and how a result is described.

A cell describes what reached the Anthropic stand-in for one request, in words a table reader needs: which
credential arrived in which header, and what leaked. The same describer serves the "before" (no gateway) and
"after" (gateway) tables in docs/before-after.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tests.support import fixtures
from tests.support.litellm_proxy import EGRESS_TOKEN, MASTER_KEY, MODEL
from tests.support.recorder import Received

CLIENT_KEY = "sk-ant-api03-FAKEKEY"
CLIENT_OAUTH = "sk-ant-oat01-FAKEOAUTH"
SERVER_KEY = "sk-ant-api03-LITELLMSERVERKEY"
SIDECAR_KEY = "sk-ant-api03-SIDECARKEY"
HANDOFF = "x-credential-handoff"
OAUTH_FLAG = "oauth-2025-04-20"
PROBES = (("Cookie", "session=abc"), ("X-Custom-Probe", "probe1"))
LABELS = {
    CLIENT_KEY: "client key",
    CLIENT_OAUTH: "client OAuth",
    SERVER_KEY: "LiteLLM's server key",
    SIDECAR_KEY: "sidecar's server key",
    MASTER_KEY: "LiteLLM key",
    EGRESS_TOKEN: "egress token",
    "None": "None",
}


@dataclass(frozen=True)
class Route:
    name: str
    path: str
    body: bytes
    stream: bool
    method: str = "POST"
    # Rule I7 for a client that brings its own Anthropic credential: "carry" (one upstream call with it, or, for
    # routes LiteLLM answers itself, none) or "refuse" (a 400 from the gateway, nothing sent).
    own: str = "carry"
    # LiteLLM may answer without calling upstream (its own model list; 1.81.14 counts tokens locally).
    local: bool = False


def _body(stream: bool) -> bytes:
    """The smallest request body, valid as Anthropic messages and as OpenAI chat completions alike."""
    doc = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "say ok"}]}
    return json.dumps({**doc, "stream": True} if stream else doc).encode()


_COUNT = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "say ok"}]}).encode()
_GEMINI = json.dumps({"contents": [{"role": "user", "parts": [{"text": "say ok"}]}]}).encode()
ROUTES = (
    Route("pass-through", "/anthropic/v1/messages", _body(False), False),
    Route("pass-through, stream", "/anthropic/v1/messages", _body(True), True),
    Route("/v1/messages", "/v1/messages", _body(False), False),
    Route("/v1/messages, stream", "/v1/messages", _body(True), True),
    Route("/v1/chat/completions", "/v1/chat/completions", _body(False), False),
    Route("/v1/chat/completions, stream", "/v1/chat/completions", _body(True), True),
    Route("count_tokens", "/anthropic/v1/messages/count_tokens", _COUNT, False),
    # The SDKs' default for token counts: sent to its pass-through twin for clients with their own credential.
    Route("/v1/messages/count_tokens", "/v1/messages/count_tokens?beta=true", _COUNT, False, local=True),
    Route("/v1/models", "/v1/models", b"", False, "GET", local=True),
    Route("pass-through /v1/skills", "/anthropic/v1/skills", b"", False, "GET"),
    # LiteLLM's own calls: the client's credential would not go, the operator's would.
    Route("/v1/skills", "/v1/skills", b"", False, "GET", own="refuse", local=True),
    Route("pass-through /v1/files", "/anthropic/v1/files", b"", False, "GET", own="refuse", local=True),
    # Gemini's format: LiteLLM calls the model group (Anthropic here) itself, without the client's headers.
    Route("Gemini generateContent", f"/models/{MODEL}:generateContent", _GEMINI, False, own="refuse"),
    Route("Gemini streamGenerateContent", f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse", _GEMINI, True,
          own="refuse"),
)  # fmt: skip


@dataclass(frozen=True)
class Client:
    name: str
    headers: tuple[tuple[str, str], ...]
    # What the client itself holds for Anthropic, if anything: the credential that must win after the gateway.
    own: tuple[str, str] | None


def _claude_code(fixture: str) -> tuple[tuple[str, str], ...]:
    recorded = fixtures.load(fixture)
    return tuple((k, MASTER_KEY if k.lower() == "x-litellm-api-key" else v) for k, v in recorded.headers)


_PLAIN = (("Content-Type", "application/json"), ("anthropic-version", "2023-06-01"))
CLIENTS = (
    Client("key + x-litellm-api-key (Claude Code)", _claude_code(fixtures.CLAUDE_CODE_API_KEY),
           ("x-api-key", CLIENT_KEY)),
    Client("OAuth + x-litellm-api-key (Claude Code)", _claude_code(fixtures.CLAUDE_CODE_OAUTH),
           ("authorization", f"Bearer {CLIENT_OAUTH}")),
    Client("LiteLLM key as x-litellm-api-key", (*_PLAIN, ("x-litellm-api-key", MASTER_KEY)), None),
    Client("LiteLLM key as Authorization: Bearer", (*_PLAIN, ("Authorization", f"Bearer {MASTER_KEY}")), None),
    Client("LiteLLM key as x-api-key", (*_PLAIN, ("x-api-key", MASTER_KEY)), None),
    Client("LiteLLM key in x-api-key + OAuth", (*_PLAIN, ("x-api-key", MASTER_KEY),
           ("Authorization", f"Bearer {CLIENT_OAUTH}")), ("authorization", f"Bearer {CLIENT_OAUTH}")),
)  # fmt: skip


def _label(value: str) -> str:
    scheme, _, token = value.partition(" ")
    if scheme.lower() == "bearer":
        return f"Bearer {LABELS.get(token.strip(), 'other')}"
    return LABELS.get(value.strip(), "other")


def describe(status: int, received: list[Received]) -> str:
    """One table cell: the credential(s) that arrived, what leaked, and the client's status when not 2xx."""
    if not received:
        return f"nothing sent; client got {status}"
    parts = []
    for got in received[:1]:
        creds = [f"{name}: {_label(v)}" for name in ("x-api-key", "authorization") for v in got.get(name)]
        text = " + ".join(creds) if creds else "no credential"
        leaks = sorted(
            n for n in got.names if n in ("x-litellm-api-key", "cookie", "x-custom-probe", HANDOFF)
        ) + sorted({"LiteLLM key value"} if any(MASTER_KEY in v for _, v in got.headers) else set())
        if leaks:
            text += "; **leaked** " + ", ".join(dict.fromkeys(leaks))
        parts.append(text)
    if len(received) > 1:
        parts.append(f"({len(received)} upstream calls)")
    if not 200 <= status < 300:
        parts.append(f"client got {status}")
    return "; ".join(parts)


def table(title: str, cells: dict[tuple[str, str], str]) -> str:
    """Markdown: one row per client setup, one column per route."""
    lines = [f"#### {title}", "", "| client sends | " + " | ".join(r.name for r in ROUTES) + " |",
             "|---" * (len(ROUTES) + 1) + "|"]  # fmt: skip
    for client in CLIENTS:
        lines.append(f"| {client.name} | " + " | ".join(cells[(client.name, r.name)] for r in ROUTES) + " |")
    return "\n".join(lines) + "\n"
