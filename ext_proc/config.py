"""One typed configuration object, loaded once from a TOML file plus ``EXT_PROC_*`` environment variables.

Precedence, lowest first: defaults, the file, the environment, command-line flags. Every problem is reported at
start with the setting's name and what was expected; secret values never appear in a message or a repr.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import importlib.util
import os
import re
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ext_proc.credentials import Credential, Prefixes, UnreadableCredential
from ext_proc.seal import KEY_BYTES, Keyring

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
EGRESS_TOKEN_MIN = 32
LITELLM_KEY_MIN = 8
# How a boolean setting may be spelt in the environment (a TOML file has its own true and false).
_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")


class ConfigError(ValueError):
    """A configuration that cannot be served; the message names the setting."""


@dataclass(frozen=True, slots=True)
class Config:
    # Empty: the default Unix socket (``default_socket``). The server's answers hold credentials.
    listen: str = ""
    handoff_header: str = "x-credential-handoff"
    litellm_headers: tuple[str, ...] = DEFAULT_EXTRA_LITELLM_HEADERS
    egress_allowlist: tuple[str, ...] = DEFAULT_EGRESS_ALLOWLIST
    anthropic_prefix: str = "sk-ant-"
    oauth_prefix: str = "sk-ant-oat"
    oauth_beta: str = "oauth-2025-04-20"
    seal_ttl_seconds: int = 60
    seal_max_opens: int = 3
    secret_patterns: tuple[str, ...] = DEFAULT_SECRET_PATTERNS
    seal_keys: tuple[str, ...] = field(default=(), repr=False)
    seal_key_file: Path | None = None
    server_credential: str | None = field(default=None, repr=False)
    server_credential_file: Path | None = None
    # What LiteLLM sends as its own Anthropic key: a secret only LiteLLM and the egress know (rule E0).
    egress_token: str | None = field(default=None, repr=False)
    egress_token_file: Path | None = None
    # LiteLLM keys the gateway knows by value (its master key): removed wherever they appear on the egress (E7).
    litellm_keys: tuple[str, ...] = field(default=(), repr=False)
    litellm_key_file: Path | None = None
    # Whether LiteLLM authenticates its callers (it does when it has a master key): a client's own Anthropic
    # credential without a LiteLLM key is then refused at the ingress (rule I8); `up --litellm-config` derives it.
    litellm_requires_key: bool = True
    log_level: str = "INFO"
    log_format: str = "text"
    audit_sample_rate: float = 1.0
    metrics_listen: str = "127.0.0.1:9464"
    # An OpenTelemetry collector's OTLP/gRPC address, http://HOST:PORT: one span per decision (off when empty).
    tracing_endpoint: str = ""
    tracing_service_name: str = "ext-proc-credentials"
    reload_interval_seconds: float = 2.0
    grace_seconds: float = 20.0
    drain_seconds: float = 1.0
    event_loop: str = "uvloop"

    @classmethod
    def load(
        cls,
        file: Path | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Config:
        """Defaults < file < environment < overrides (command-line flags), then validated."""
        values: dict[str, Any] = {}
        env = env if env is not None else {}
        file = file or (Path(env[ENV_PREFIX + "CONFIG"]) if env.get(ENV_PREFIX + "CONFIG") else None)
        if file is not None:
            values.update(_read_file(file))
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = raw
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls(**{name: _coerce(name, value) for name, value in values.items()}).validated()

    @property
    def all_litellm_headers(self) -> frozenset[str]:
        return frozenset((LITELLM_HEADER, *self.litellm_headers))

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        if self.metrics_listen in ("", "off"):
            return None
        host, _, port = self.metrics_listen.rpartition(":")
        return host.strip("[]"), int(port)

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
        if self.metrics_listen not in ("", "off"):
            host, sep, port = self.metrics_listen.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ConfigError(f"metrics_listen {self.metrics_listen!r}: expected HOST:PORT, or 'off'")
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
        self.keyring()
        self.load_server_credential()
        self.load_egress_token()
        return self

    def load_egress_token(self) -> bytes | None:
        """The secret LiteLLM sends as its Anthropic key, read now; long, and no credential of any kind."""
        text = _one_secret(self.egress_token, self.egress_token_file, "egress_token_file")
        if text is None:
            return None
        token = text.encode("latin-1", "replace")
        if len(token) < EGRESS_TOKEN_MIN or not re.fullmatch(rb"[A-Za-z0-9._~+/=-]+", token):
            raise ConfigError(
                f"egress token: must be at least {EGRESS_TOKEN_MIN} characters of [A-Za-z0-9._~+/=-] "
                "(`ext-proc keygen --egress-token` prints one)"
            )
        if self.anthropic_prefix.encode() in token or token.startswith(b"sk-"):
            raise ConfigError("egress token: must not look like an Anthropic or LiteLLM key")
        return token

    def secret_pattern(self) -> re.Pattern[bytes]:
        """One pattern for everything the egress never lets out in a kept header: Anthropic's prefix, LiteLLM keys."""
        for text in self.secret_patterns:
            try:
                re.compile(text.encode())
            except re.error as exc:
                raise ConfigError(f"secret_patterns {text!r}: not a regular expression ({exc})") from None
        alternatives = [re.escape(self.anthropic_prefix), *self.secret_patterns]
        return re.compile("|".join(f"(?:{a})" for a in alternatives).encode())

    def keyring(self) -> Keyring | None:
        """The configured seal keys, or None when none is configured (the server then generates one)."""
        texts = self.seal_keys
        if self.seal_key_file is not None:
            texts = tuple(_read_lines(self.seal_key_file, "seal_key_file"))
            if not texts:
                raise ConfigError(f"seal_key_file {self.seal_key_file}: holds no key")
        if not texts:
            return None
        return Keyring([_decode_key(i, text) for i, text in enumerate(texts)], self.seal_ttl_seconds)

    def load_litellm_keys(self) -> tuple[bytes, ...]:
        """The LiteLLM keys known by value (inline and file), read now."""
        texts = list(self.litellm_keys)
        if self.litellm_key_file is not None:
            texts += _read_lines(self.litellm_key_file, "litellm_key_file")
        keys = tuple(dict.fromkeys(t.strip().encode("latin-1", "replace") for t in texts if t.strip()))
        short = [k for k in keys if len(k) < LITELLM_KEY_MIN]
        if short:
            raise ConfigError(
                f"litellm_keys: a key of {len(short[0])} characters is too short to search headers for "
                f"(at least {LITELLM_KEY_MIN})"
            )
        return keys

    def load_server_credential(self) -> Credential | None:
        """The sidecar's own Anthropic credential (priority 5), read now; it must look like one."""
        text = _one_secret(self.server_credential, self.server_credential_file, "server_credential_file")
        if text is None:
            return None
        try:
            credential = self.prefixes.classify(text.encode("latin-1", "replace"))
        except UnreadableCredential:
            credential = None
        if credential is None:
            raise ConfigError(
                f"server credential: not an Anthropic credential (expected a value starting with "
                f"{self.anthropic_prefix!r})"
            )
        return credential


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
        raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(unknown)}")
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
        verbatim = name in ("seal_keys", "secret_patterns", "litellm_keys")
        return tuple(v.strip() if verbatim else v.strip().lower() for v in value)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if not isinstance(value, str) or value.strip().lower() not in _BOOLEANS:
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        return _BOOLEANS[value.strip().lower()]
    if kind == "int":
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a whole number, got {value!r}") from None
    if kind == "float":
        try:
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


def _one_secret(inline: str | None, file: Path | None, setting: str) -> str | None:
    """A secret given inline or as a one-line file (a Kubernetes secret mount), trimmed; None if neither."""
    if file is not None:
        lines = _read_lines(file, setting)
        if len(lines) != 1:
            raise ConfigError(f"{setting} {file}: must hold one line")
        return lines[0]
    return inline.strip() if inline is not None else None


def _read_lines(path: Path, setting: str) -> list[str]:
    try:
        check_secret_mode(path, setting)
        text = path.read_text(encoding="latin-1")
    except OSError as exc:
        hint = _MAKES.get(setting, "") if isinstance(exc, FileNotFoundError) else ""
        raise ConfigError(f"{setting} {path}: {exc.strerror}{hint}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


# What makes a missing secret file, for the error that names it.
_MAKES = {
    "egress_token_file": " (`ext-proc keygen --egress-token` prints one; `ext-proc up` makes it on first start)",
    "seal_key_file": " (`ext-proc keygen` prints a key; without any seal key one is generated for this process)",
}


def check_secret_mode(path: Path, setting: str) -> None:
    """Refuse a secret file others may read, as PostgreSQL does with its key file.

    Owned by this user: no group or other access (0600 or less). Owned by root: group read is allowed (0640 or
    less), which is how a Kubernetes Secret volume with ``defaultMode: 0440`` and the pod's ``fsGroup`` hands a
    root-owned file to a non-root container. Symlinks (a Secret volume's ``..data`` links) are followed.
    """
    st = os.stat(path)
    allowed = 0o040 if st.st_uid == 0 else 0
    if st.st_mode & 0o077 & ~allowed:
        mode = f"{st.st_mode & 0o777:o}"
        raise ConfigError(
            f"{setting} {path}: other users can read it (mode {mode}); it holds a secret: chmod 600 {path} (or 640 "
            "owned by root; a Kubernetes Secret volume: defaultMode: 0440 with the pod's fsGroup)"
        )


def _decode_key(index: int, text: str) -> bytes:
    try:
        key = base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"seal key #{index + 1}: not base64") from None
    if len(key) != KEY_BYTES:
        raise ConfigError(f"seal key #{index + 1}: must decode to {KEY_BYTES} bytes, got {len(key)}")
    return key


def default_socket() -> str:
    """Where ``serve`` listens unless told: a socket in a directory only this user may enter."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "ext-proc" if runtime else Path(tempfile.gettempdir()) / f"ext-proc-{os.getuid()}"
    return f"unix:{base / 'ext-proc.sock'}"


def new_egress_token() -> str:
    """A fresh egress token: LiteLLM's Anthropic key, known to the egress leg only."""
    return "egress-" + base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode().rstrip("=")


def new_seal_key() -> str:
    """A fresh key in the form the config expects (``ext-proc keygen``)."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode()
