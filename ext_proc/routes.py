"""Which LiteLLM routes carry a client's own Anthropic credential across to the egress leg.

The handoff header reaches the egress only where LiteLLM forwards the client's headers to Anthropic. On routes
that LiteLLM answers with its own call (files, batches, skills, count_tokens on newer releases) the handoff is
dropped, and the call leaves with the operator's key: a client that brought its own credential would be served
on someone else's account without knowing. So a request that carries a client credential is let through only on
the routes listed here, measured on every LiteLLM release in the end-to-end matrix; one route is sent to its
pass-through twin, and every other route is refused (fail closed: a route a new release adds is refused until it
has been measured and listed).

Paths are compared as LiteLLM (Starlette) will route them: percent-escapes decoded, dot segments resolved,
repeated and trailing slashes dropped, query string ignored; case is kept, as Starlette's routing is
case-sensitive.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

PASS_THROUGH = "/anthropic"  # noqa: S105 (a path, not a password)
# Forward the client's headers (unified routes with forward_client_headers_to_llm_api), or never call upstream.
_CARRY_EXACT = frozenset({"/v1/messages", "/v1/chat/completions", "/chat/completions", "/v1/models", "/models"})
_CARRY_UNDER = ("/v1/models/", "/models/")
# LiteLLM 1.108.7 serves these under /anthropic itself (its /{provider}/v1/files and /{provider}/v1/batches).
_OWN_UNDER_PASS_THROUGH = ("/anthropic/v1/files", "/anthropic/v1/batches")
# Answered by LiteLLM's own call on newer releases; the pass-through route forwards the client's headers.
_REROUTE = {"/v1/messages/count_tokens": "/anthropic/v1/messages/count_tokens"}


@dataclass(frozen=True, slots=True)
class RouteVerdict:
    """``path`` set: send the request there instead; ``refusal`` set: refuse it with this message."""

    path: bytes | None = None
    refusal: str | None = None


CARRIES = RouteVerdict()


def normalise(path: bytes) -> str:
    """The path LiteLLM's router will match, for a raw ``:path`` value."""
    raw = path.split(b"?", 1)[0].split(b"#", 1)[0]
    decoded = unquote_to_bytes(raw).decode("latin-1")
    resolved = posixpath.normpath("/" + decoded.lstrip("/")) if decoded else "/"
    return "/" + resolved.lstrip("/")


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def for_client_credential(path: bytes) -> RouteVerdict:
    """What to do with a request that carries the client's own Anthropic credential to LiteLLM."""
    route = normalise(path)
    if route in _CARRY_EXACT or route.startswith(_CARRY_UNDER):
        return CARRIES
    rerouted = _REROUTE.get(route)
    if rerouted is not None:
        query = path.partition(b"?")[2]
        return RouteVerdict(path=rerouted.encode() + (b"?" + query if query else b""))
    if _under(route, PASS_THROUGH) and not any(_under(route, own) for own in _OWN_UNDER_PASS_THROUGH):
        return CARRIES
    if _under(route, PASS_THROUGH) or route.startswith(("/v1/files", "/v1/batches", "/files", "/batches")):
        instead = "this route is not available with your own credential through LiteLLM"
    else:
        instead = f"use LiteLLM's Anthropic pass-through, {PASS_THROUGH}{route}"
    return RouteVerdict(
        refusal=(
            f"LiteLLM answers {route} with its own call to Anthropic, which would not carry your own Anthropic "
            f"credential (it would use the operator's key instead); {instead}, or send only your LiteLLM key."
        )
    )
