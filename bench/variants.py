"""The variants: what each one starts (Envoys, servers, LiteLLM) and what it is loaded with.

Each Envoy runs one worker; the stand-in upstream is a direct-response Envoy in its own process, left out of the
CPU accounting. Load carries Claude Code's recorded header sets.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any

from bench.measure import Variant
from ext_proc.envoy import ANSWER_FILTER, Endpoint, HostPort, Layout, bootstrap
from ext_proc.seal import Keyring
from tests.support import fixtures, litellm_proxy
from tests.support.collector import Collector
from tests.support.processes import BIN, Proc, free_port, start_envoy

LOOPBACK = "127.0.0.1"
ADMIN = HostPort(LOOPBACK, 0)
SEAL_KEY = bytes(range(7, 39))
SERVER_KEY = "sk-ant-api03-BENCHSERVERKEY"
STREAM_BYTES = 50 * 1024 * 1024
MESSAGE = json.dumps(
    {"id": "msg_bench", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
     "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn", "stop_sequence": None,
     "usage": {"input_tokens": 7, "output_tokens": 1}}
)  # fmt: skip
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
BUFFER = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"


class Name(StrEnum):
    """Each variant by its short name, as docs/performance.md's tables name it."""

    PLAIN = "a"  # Envoy, no filter
    LUA = "b"  # Envoy + the same header rules as a Lua filter
    EGRESS = "c"  # Envoy + the egress leg as shipped (ext-proc serve, a seal opened on every request)
    EGRESS_TRACED = "c+trace"  # the same with tracing_endpoint set (a local recording collector)
    EGRESS_REQUEST_ONLY = "c-answer"  # c without the answer filter (rule E9): what its stream per answer costs
    CHAIN = "d"  # client -> ingress -> LiteLLM -> egress -> stand-in, Claude Code with an OAuth token
    LITELLM = "e"  # client -> LiteLLM -> stand-in, the same client
    CHAIN_KEY_ONLY = "d-key"  # as d, a client that brings only a LiteLLM key (the server credential goes)
    LITELLM_KEY_ONLY = "e-key"  # as e, the same key-only client
    NULL = "f"  # Envoy + ext_proc to a null grpc.aio server (the transport's floor)
    NULL_SHIPPED = "g"  # the same null server on the transport as shipped (uvloop, one answer per stream)


DEFAULT = (Name.PLAIN, Name.LUA, Name.NULL, Name.NULL_SHIPPED, Name.EGRESS, Name.EGRESS_REQUEST_ONLY,
           Name.EGRESS_TRACED, Name.CHAIN, Name.LITELLM, Name.CHAIN_KEY_ONLY, Name.LITELLM_KEY_ONLY)  # fmt: skip
WITH_LITELLM = {Name.CHAIN, Name.LITELLM, Name.CHAIN_KEY_ONLY, Name.LITELLM_KEY_ONLY}
# The ratios reported, top over bottom.
RATIOS = (
    (Name.EGRESS, Name.NULL), (Name.EGRESS, Name.NULL_SHIPPED), (Name.NULL_SHIPPED, Name.NULL),
    (Name.EGRESS, Name.PLAIN), (Name.NULL, Name.PLAIN), (Name.LUA, Name.PLAIN), (Name.EGRESS_TRACED, Name.EGRESS),
    (Name.EGRESS, Name.EGRESS_REQUEST_ONLY),
    (Name.CHAIN, Name.LITELLM), (Name.CHAIN_KEY_ONLY, Name.LITELLM_KEY_ONLY),
)  # fmt: skip
# What the gateway adds next to LiteLLM, per header set (what users pay).
GATEWAY_PAIRS = ((Name.CHAIN, Name.LITELLM, "OAuth (Claude Code)"),
                 (Name.CHAIN_KEY_ONLY, Name.LITELLM_KEY_ONLY, "LiteLLM key only"))  # fmt: skip

# wrk sends one header set over and over, so variant c opens one handoff for the whole run: the bound on opens
# (and the lifetime) is lifted for the bench; counting an open costs the same either way.
REPLAYED_HANDOFF = {"EXT_PROC_SEAL_MAX_OPENS": str(10**12), "EXT_PROC_SEAL_TTL_SECONDS": "86400"}


def body(model: str = litellm_proxy.MODEL) -> str:
    return json.dumps({"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "say ok"}]})


def stand_in(port: int, stream_file: Path) -> dict[str, Any]:
    """A direct-response Envoy: an Anthropic message for every request, 50 MB of SSE on /stream."""
    routes = [
        {"match": {"prefix": "/stream"}, "direct_response": {"status": 200, "body": {"filename": str(stream_file)}},
         "response_headers_to_add": [{"header": {"key": "content-type", "value": "text/event-stream"}}]},
        {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": MESSAGE}},
         "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"}}]},
    ]  # fmt: skip
    router = {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}
    # Like Anthropic, answer once the whole request has arrived. A direct response sent on the request headers
    # alone leaves the body in flight, and the proxy in front then cannot reuse the connection: every request
    # would pay a new upstream connection.
    read_body = {"name": "envoy.filters.http.buffer", "typed_config": {"@type": BUFFER, "max_request_bytes": 1 << 20}}
    hcm = {
        "@type": HCM,
        "stat_prefix": "stand_in",
        "route_config": {
            "max_direct_response_body_size_bytes": STREAM_BYTES + 1024,
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [read_body, router],
    }
    listener = {
        "name": "stand_in",
        "address": {"socket_address": {"address": LOOPBACK, "port_value": port}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": LOOPBACK, "port_value": 0}}},
        "static_resources": {"listeners": [listener]},
    }


def egress_document(layout: Layout, filter_kind: str) -> dict[str, Any]:
    """The shipped bootstrap's egress listener alone, with its ext_proc filters kept, removed or swapped for Lua.

    ``ext_proc`` keeps both (the request filter and the answer filter, rule E9); every other kind keeps at most the
    request filter, so the floors (f, g) and Lua compare with one filter's work.
    """
    document = bootstrap(layout)
    resources = document["static_resources"]
    egress = next(item for item in resources["listeners"] if item["name"] == "egress")
    resources["listeners"] = [egress]
    resources["clusters"] = [c for c in resources["clusters"] if c["name"] != "litellm"]
    hcm = egress["filter_chains"][0]["filters"][0]["typed_config"]
    if filter_kind != "ext_proc":
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != ANSWER_FILTER]
        for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
            route.get("typed_per_filter_config", {}).pop(ANSWER_FILTER, None)
    if filter_kind == "none":
        hcm["http_filters"] = hcm["http_filters"][1:]
    elif filter_kind == "lua":
        hcm["http_filters"][0] = {
            "name": "envoy.filters.http.lua",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"inline_string": (Path(__file__).parent / "egress.lua").read_text()},
                # As ext_proc does by default: the route chosen before the rules ran stays.
                "clear_route_cache": False,
            },
        }
    if filter_kind not in ("ext_proc", "ext_proc-request"):
        resources["clusters"] = [c for c in resources["clusters"] if c["name"] != "ext_proc"]
    return document


def egress_headers(keyring: Keyring) -> list[tuple[str, str]]:
    """What LiteLLM sends the egress leg for a Claude Code OAuth request: its headers, the seal, the egress token."""
    recorded = fixtures.load(fixtures.CLAUDE_CODE_OAUTH)
    handoff = keyring.seal([("authorization", b"sk-ant-oat01-BENCH")], time.time())
    kept = recorded.without("authorization", "host", "content-length", "connection")
    return [*kept, ("x-credential-handoff", handoff), ("x-api-key", litellm_proxy.EGRESS_TOKEN)]


def client_headers(key_only: bool = False) -> list[tuple[str, str]]:
    """Claude Code's recorded OAuth header set (with LiteLLM's key in x-litellm-api-key), or its API-key set with
    the LiteLLM key as the API key: a client that brings no Anthropic credential of its own."""
    if key_only:
        recorded = fixtures.load(fixtures.CLAUDE_CODE_API_KEY)
        kept = recorded.without("host", "content-length", "connection", "x-litellm-api-key")
        return [(k, litellm_proxy.MASTER_KEY if k.lower() == "x-api-key" else v) for k, v in kept]
    recorded = fixtures.load(fixtures.CLAUDE_CODE_OAUTH)
    return [
        (k, litellm_proxy.MASTER_KEY if k.lower() == "x-litellm-api-key" else v)
        for k, v in recorded.without("host", "content-length", "connection")
    ]


def _server(socket_path: Path, work: Path, *extra: str) -> Proc:
    keys, token, server_key = work / "seal-keys", work / "egress-token", work / "server-key"
    for path, text in ((keys, base64.urlsafe_b64encode(SEAL_KEY).decode()), (token, litellm_proxy.EGRESS_TOKEN),
                       (server_key, SERVER_KEY)):  # fmt: skip
        path.write_text(text + "\n")
        path.chmod(0o600)  # the server refuses secret files others can read
    server = Proc([str(BIN / "ext-proc"), "serve", "--listen", f"unix:{socket_path}", "--seal-key-file", str(keys),
                   "--egress-token-file", str(token), "--server-credential-file", str(server_key),
                   "--metrics-listen", f"127.0.0.1:{free_port()}", *extra], REPLAYED_HANDOFF)  # fmt: skip
    server.ready_line = server.wait_line("serving ext_proc on")
    return server


@contextmanager
def started(work: Path, keyring: Keyring, wanted: set[Name]) -> Iterator[dict[Name, Variant]]:
    """Start what the wanted variants need (and only that); stop it all on exit."""
    stream_file = work / "stream.sse"
    line = b"event: content_block_delta\ndata: " + b"x" * 1000 + b"\n\n"
    stream_file.write_bytes((line * (STREAM_BYTES // len(line) + 1))[:STREAM_BYTES])
    with ExitStack() as stack:
        upstream_port = free_port()
        stack.callback(start_envoy(None, work, stand_in(upstream_port, stream_file), "stand_in", "error").stop)
        anthropic = Endpoint("http", LOOPBACK, upstream_port)
        sockets = {Name.NULL: work / "null.sock", Name.NULL_SHIPPED: work / "null-shipped.sock",
                   Name.EGRESS: work / "ext-proc.sock", Name.EGRESS_TRACED: work / "ext-proc-traced.sock"}  # fmt: skip
        servers: dict[Name, Proc] = {}
        for name, extra in ((Name.NULL, []), (Name.NULL_SHIPPED, ["--shipped"])):
            if name in wanted:
                servers[name] = Proc([sys.executable, "-m", "bench.null_server", f"unix:{sockets[name]}", *extra])
                servers[name].wait_line("serving ext_proc on")
                stack.callback(servers[name].stop)
        servers[Name.EGRESS] = _server(sockets[Name.EGRESS], work)
        stack.callback(servers[Name.EGRESS].stop)
        if Name.EGRESS_TRACED in wanted:
            collector = stack.enter_context(Collector())
            servers[Name.EGRESS_TRACED] = _server(sockets[Name.EGRESS_TRACED], work, "--tracing-endpoint",
                                                  collector.endpoint)  # fmt: skip
            stack.callback(servers[Name.EGRESS_TRACED].stop)
        found: dict[Name, Variant] = {}
        kinds = {Name.PLAIN: "none", Name.LUA: "lua", Name.NULL: "ext_proc-request",
                 Name.NULL_SHIPPED: "ext_proc-request", Name.EGRESS: "ext_proc",
                 Name.EGRESS_REQUEST_ONLY: "ext_proc-request", Name.EGRESS_TRACED: "ext_proc"}  # fmt: skip
        for name, kind in kinds.items():
            if name not in wanted and name != Name.EGRESS:  # c always runs: the streams and body bytes use it
                continue
            port = free_port()
            socket_path = sockets.get(name, sockets[Name.EGRESS])
            layout = Layout(egress=HostPort(LOOPBACK, port), anthropic=anthropic, server_address=f"unix:{socket_path}",
                            admin=ADMIN)  # fmt: skip
            envoy = start_envoy(None, work, egress_document(layout, kind), f"variant-{name}", "error")
            stack.callback(envoy.stop)
            server = servers.get(Name.EGRESS if name == Name.EGRESS_REQUEST_ONLY else name)
            processes = {"envoy": envoy.proc} | ({"server": server} if server is not None else {})
            found[name] = Variant(name, f"http://{LOOPBACK}:{port}/v1/messages", egress_headers(keyring), processes,
                                  body())  # fmt: skip
        if wanted & WITH_LITELLM:
            found |= stack.enter_context(_chain(work, anthropic, sockets[Name.EGRESS], servers[Name.EGRESS]))
        yield found


@contextmanager
def _chain(work: Path, anthropic: Endpoint, socket_path: Path, server: Proc) -> Iterator[dict[Name, Variant]]:
    """One LiteLLM process for d and e: its model routes through the egress leg, the same model under a second name
    goes straight to the stand-in, so both compare the same warmed-up process."""
    ingress, egress, litellm_port = free_port(), free_port(), free_port()
    layout = Layout(ingress=HostPort(LOOPBACK, ingress), egress=HostPort(LOOPBACK, egress),
                    litellm=Endpoint("http", LOOPBACK, litellm_port), anthropic=anthropic,
                    server_address=f"unix:{socket_path}", admin=ADMIN)  # fmt: skip
    with ExitStack() as stack:
        gateway = start_envoy(None, work, bootstrap(layout), "chain", "error")
        stack.callback(gateway.stop)
        setup = litellm_proxy.Setup(litellm_proxy.RELEASES[-1], f"http://{LOOPBACK}:{egress}",
                                    litellm_proxy.EGRESS_TOKEN,
                                    direct_base=f"http://{anthropic.host}:{anthropic.port}")  # fmt: skip
        proxy = litellm_proxy.start(setup, work / "litellm", litellm_port)
        stack.callback(proxy.stop)
        chain = {"envoy": gateway.proc, "server": server, "litellm": proxy.proc}
        through, direct = f"http://{LOOPBACK}:{ingress}/v1/messages", f"{proxy.url}/v1/messages"
        only_litellm = {"litellm": proxy.proc}
        yield {
            Name.CHAIN: Variant(Name.CHAIN, through, client_headers(), chain, body()),
            Name.LITELLM: Variant(
                Name.LITELLM, direct, client_headers(), only_litellm, body(litellm_proxy.DIRECT_MODEL)
            ),
            Name.CHAIN_KEY_ONLY: Variant(Name.CHAIN_KEY_ONLY, through, client_headers(key_only=True), chain, body()),
            Name.LITELLM_KEY_ONLY: Variant(Name.LITELLM_KEY_ONLY, direct, client_headers(key_only=True), only_litellm,
                                           body(litellm_proxy.DIRECT_MODEL)),
        }  # fmt: skip
