"""The gateway's secrets, read by one loader into one value: seal keys, the server credential, the egress token and
the LiteLLM keys known by value; and the making of new ones (``keygen``, ``up``'s egress token file).

Each is given inline (``seal_keys``, ``server_credential``, ...) or as a file (``seal_key_file``, ...: a Kubernetes
Secret mount, refused when others may read it). `load_secrets` reads them all once, at start; `reread_secret` reads
one changed file through the same reader (reload.py). A value never appears in a message or a repr.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ext_proc.config import Config, ConfigError
from ext_proc.credentials import Credential, UnreadableCredential
from ext_proc.seal import KEY_BYTES, Keyring

EGRESS_TOKEN_MIN = 32
LITELLM_KEY_MIN = 8


@dataclass(frozen=True, slots=True)
class Secrets:
    """What the rules need besides settings; each None (or empty) when not configured."""

    # None: no seal key configured (the server then generates one for its own process).
    keyring: Keyring | None = None
    server_credential: Credential | None = None
    egress_token: bytes | None = None
    litellm_keys: tuple[bytes, ...] = ()

    def __repr__(self) -> str:
        credential = self.server_credential.fingerprint() if self.server_credential else None
        return (
            f"Secrets(keyring={self.keyring.key_ids if self.keyring else None}, server_credential={credential}, "
            f"egress_token={'set' if self.egress_token else None}, litellm_keys={len(self.litellm_keys)})"
        )


def load_secrets(config: Config) -> Secrets:
    """Every secret ``config`` names, read now; a bad one is a ConfigError naming its setting, never its value."""
    return Secrets(**{field: read(config) for field, (_, read) in _READERS.items()})


def reread_secret(config: Config, setting: str, current: Secrets) -> Secrets:
    """``current`` with the secret of one file setting read again, by the reader `load_secrets` uses.

    The setting names a file (callers skip those unset): a reader given a file returns its secret or raises.
    """
    field, read = next((f, r) for f, (s, r) in _READERS.items() if s == setting)
    return replace(current, **{field: read(config)})


def secret_paths(config: Config) -> tuple[tuple[str, Path | None], ...]:
    """Each secret file setting and its path (None when not set)."""
    return tuple((setting, getattr(config, setting)) for setting, _ in _READERS.values())


def _keyring(config: Config) -> Keyring | None:
    """The seal keys, newest (the one that seals) first."""
    texts = config.seal_keys
    if config.seal_key_file is not None:
        texts = tuple(_read_lines(config.seal_key_file, "seal_key_file"))
        if not texts:
            raise ConfigError(f"seal_key_file {config.seal_key_file}: holds no key")
    if not texts:
        return None
    return Keyring([_decode_key(i, text) for i, text in enumerate(texts)], config.seal_ttl_seconds)


def _server_credential(config: Config) -> Credential | None:
    """The gateway's own Anthropic credential (priority 5); it must look like one."""
    text = _one_secret(config.server_credential, config.server_credential_file, "server_credential_file")
    if text is None:
        return None
    try:
        credential = config.prefixes.classify(text.encode("latin-1", "replace"))
    except UnreadableCredential:
        credential = None
    if credential is None:
        raise ConfigError(
            f"server credential: not an Anthropic credential (expected a value starting with "
            f"{config.anthropic_prefix!r})"
        )
    return credential


def _egress_token(config: Config) -> bytes | None:
    """The secret LiteLLM sends as its Anthropic key: long, and no credential of any kind."""
    text = _one_secret(config.egress_token, config.egress_token_file, "egress_token_file")
    if text is None:
        return None
    token = text.encode("latin-1", "replace")
    if len(token) < EGRESS_TOKEN_MIN or not re.fullmatch(rb"[A-Za-z0-9._~+/=-]+", token):
        raise ConfigError(
            f"egress token: must be at least {EGRESS_TOKEN_MIN} characters of [A-Za-z0-9._~+/=-] "
            "(`ext-proc keygen --egress-token` prints one)"
        )
    if config.anthropic_prefix.encode() in token or token.startswith(b"sk-"):
        raise ConfigError("egress token: must not look like an Anthropic or LiteLLM key")
    return token


def _litellm_keys(config: Config) -> tuple[bytes, ...]:
    """The LiteLLM keys known by value, inline and from the file, each long enough to search headers for."""
    texts = list(config.litellm_keys)
    if config.litellm_key_file is not None:
        texts += _read_lines(config.litellm_key_file, "litellm_key_file")
    keys = tuple(dict.fromkeys(t.strip().encode("latin-1", "replace") for t in texts if t.strip()))
    short = [k for k in keys if len(k) < LITELLM_KEY_MIN]
    if short:
        raise ConfigError(
            f"litellm_keys: a key of {len(short[0])} characters is too short to search headers for "
            f"(at least {LITELLM_KEY_MIN})"
        )
    return keys


# Each field of Secrets: the file setting it may be read from, and its reader.
_READERS: dict[str, tuple[str, Callable[[Config], Any]]] = {
    "keyring": ("seal_key_file", _keyring),
    "server_credential": ("server_credential_file", _server_credential),
    "egress_token": ("egress_token_file", _egress_token),
    "litellm_keys": ("litellm_key_file", _litellm_keys),
}


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


def default_egress_token_path() -> Path:
    """Where `up` keeps its egress token unless told: the user's config directory."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ext-proc" / "egress-token"


def egress_token_file(path: Path | None = None) -> Path:
    """`up`'s egress token (the default place unless ``path``), kept across runs so LiteLLM's configuration stays
    valid; made (0600, in a 0700 directory if it has to make one) on first use."""
    path = path or default_egress_token_path()
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(new_egress_token() + "\n")
        logging.getLogger("ext_proc.up").info("generated the egress token in %s", path)
    return path


def new_egress_token() -> str:
    """A fresh egress token: LiteLLM's Anthropic key, known to the egress leg only."""
    return "egress-" + base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode().rstrip("=")


def new_seal_key() -> str:
    """A fresh key in the form the config expects (``ext-proc keygen``)."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode()
