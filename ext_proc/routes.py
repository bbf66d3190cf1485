"""Which LiteLLM routes carry a client's own Anthropic credential across to the egress leg.

The handoff header reaches the egress only where LiteLLM forwards the client's headers to Anthropic. On routes
that LiteLLM answers with its own call (files, batches, skills, Gemini-format ``generateContent``, count_tokens on
newer releases) the handoff is dropped and the call leaves with the operator's key: a client that brought its own
credential would be served on someone else's account without knowing.

So the decision is made on LiteLLM's own route table, not on prefixes someone thought of. ``data/`` holds, for each
supported release, the routes its app serves in the order its router tries them, with the regular expressions
Starlette compiled for them (``scripts/litellm_routes.py`` writes them from LiteLLM itself; a test regenerates
them from each installed release and fails on any difference). A request carrying a client credential is matched
as LiteLLM would match it, in every supported release, and goes on only if every release hands it to a route
that carries the credential or answers without calling upstream. One route is sent to its pass-through twin.
Anything else, including a path no release serves, is refused (fail closed: a route a new release adds is refused
until its table is shipped and the route classified).

The path matched is the one LiteLLM's router sees: the request target before ``?``, percent-decoded as uvicorn
decodes it (UTF-8, bad bytes replaced); nothing else (no dot segments resolved, no slashes merged), since
Starlette does neither.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from enum import Enum, auto
from importlib.resources import files
from urllib.parse import unquote

PASS_THROUGH = "/anthropic"  # noqa: S105 (a path, not a password)
RELEASES = ("1.81.14", "1.108.7")


class Route(Enum):
    """What LiteLLM does with a request's headers on a route (never shown: the members have no text)."""

    CARRIES = auto()  # forwards the client's x-* headers (the handoff) on its call to Anthropic
    LOCAL = auto()  # answers from its own state, with no upstream call: the handoff goes nowhere
    REROUTE = auto()  # answered by LiteLLM's own call; the pass-through twin carries the handoff instead
    OWN_CALL = auto()  # anything else: LiteLLM's own call with the operator's key, or not measured


# Route templates as LiteLLM declares them, classified by measurement (tests/e2e, docs/litellm.md); every other
# template of a release's table is OWN_CALL.
CLASSIFIED: dict[str, Route] = {
    "/v1/messages": Route.CARRIES,
    "/v1/chat/completions": Route.CARRIES,
    "/chat/completions": Route.CARRIES,
    f"{PASS_THROUGH}/{{endpoint:path}}": Route.CARRIES,
    "/v1/models": Route.LOCAL,
    "/models": Route.LOCAL,
    "/v1/models/{model_id}": Route.LOCAL,
    "/models/{model_id}": Route.LOCAL,
    "/v1/messages/count_tokens": Route.REROUTE,
}
REROUTES = {"/v1/messages/count_tokens": f"{PASS_THROUGH}/v1/messages/count_tokens"}
_VERDICT_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class RouteVerdict:
    """``path`` set: send the request there instead; ``refusal`` set: refuse it with this message."""

    path: bytes | None = None
    refusal: str | None = None


CARRIES = RouteVerdict()


@dataclass(frozen=True, slots=True)
class Entry:
    methods: frozenset[str] | None
    template: str
    regex: re.Pattern[str]


class Table:
    """One release's routes in the order its router tries them."""

    __slots__ = ("entries", "release")

    def __init__(self, release: str, entries: tuple[Entry, ...]) -> None:
        self.release = release
        self.entries = entries

    @classmethod
    def load(cls, release: str) -> Table:
        raw = json.loads(files("ext_proc").joinpath(f"data/litellm-routes-{release}.json").read_text())
        return cls(
            release,
            tuple(
                Entry(frozenset(r["methods"]) if r["methods"] else None, r["path"], re.compile(r["regex"]))
                for r in raw["routes"]
            ),
        )

    def templates(self) -> frozenset[str]:
        return frozenset(e.template for e in self.entries)

    def handler(self, method: str, path: str) -> str | None:
        """The template of the route Starlette runs for this request, or None (a 404 or 405 LiteLLM answers).

        As Starlette's router: the first route whose path and method match; a route matching the path only is
        a partial match, answered 405 when nothing later matches fully.
        """
        for entry in self.entries:
            if entry.regex.match(path) and (entry.methods is None or method in entry.methods):
                return entry.template
        return None


@functools.cache
def shipped_tables() -> tuple[Table, ...]:
    return tuple(Table.load(release) for release in RELEASES)


def route_path(target: bytes) -> str:
    """The path LiteLLM's router matches, for a raw ``:path`` (uvicorn: split off the query, percent-decode)."""
    raw = target.split(b"?", 1)[0].decode("latin-1")
    return unquote(raw, encoding="utf-8", errors="replace")


class Routes:
    """The verdict for a request with a client credential, over every supported release's table."""

    def __init__(self, tables: tuple[Table, ...]) -> None:
        self.tables = tables
        self._verdicts: dict[tuple[bytes, bytes], RouteVerdict] = {}

    @classmethod
    def shipped(cls) -> Routes:
        """The tables of every supported release (loaded once per process), with a verdict memo of its own."""
        return cls(shipped_tables())

    def for_client_credential(self, method: bytes, target: bytes) -> RouteVerdict:
        """What to do with a request that carries the client's own Anthropic credential to LiteLLM."""
        key = (method, target)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._decide(method.decode("latin-1"), target)
            # Bounded: a client sending random paths cannot grow it without limit.
            if len(self._verdicts) >= _VERDICT_CACHE_SIZE:
                self._verdicts.clear()
            self._verdicts[key] = verdict
        return verdict

    def _decide(self, method: str, target: bytes) -> RouteVerdict:
        path = route_path(target)
        # A release that serves no such route answers 404 or 405 itself; the others decide.
        handlers = {h for h in (t.handler(method, path) for t in self.tables) if h is not None}
        kinds = {CLASSIFIED.get(h, Route.OWN_CALL) for h in handlers}
        if kinds and kinds <= {Route.CARRIES, Route.LOCAL}:
            return CARRIES
        if kinds == {Route.REROUTE} and len(handlers) == 1:
            query = target.partition(b"?")[2]
            return RouteVerdict(path=REROUTES[handlers.pop()].encode() + (b"?" + query if query else b""))
        return RouteVerdict(refusal=_refusal(method, path, not handlers))


def _refusal(method: str, path: str, unserved: bool) -> str:
    shown = path if len(path) <= 200 and path.isprintable() else repr(path[:200])
    if unserved:
        return (
            f"LiteLLM serves no route {method} {shown}; requests with your own Anthropic credential go only to "
            "routes that carry it to Anthropic."
        )
    if path.startswith(PASS_THROUGH + "/") or not path.startswith("/v1/"):
        instead = "this route is not available with your own credential through LiteLLM"
    else:
        instead = f"use LiteLLM's Anthropic pass-through, {PASS_THROUGH}{path}"
    return (
        f"LiteLLM answers {method} {shown} with its own call, which would not carry your own Anthropic credential "
        f"(it would use the operator's key instead); {instead}, or send only your LiteLLM key."
    )
