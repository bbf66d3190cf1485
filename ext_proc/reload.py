"""The live rule context: built once at start from the settings and the secrets, rebuilt when a secret file changes.

Seal keys, the server credential, the egress token and the LiteLLM key file are files (Kubernetes secret mounts).
A watcher compares each file's identity (inode, mtime, size: a secret update swaps a symlink, which changes all
three) every ``reload_interval_seconds``; a changed file is read again by the reader used at start (secrets.py),
and only a good value replaces the old one. A bad one keeps the old value and says why, without the value.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import replace
from pathlib import Path

from ext_proc.config import Config, ConfigError
from ext_proc.metrics import Metrics
from ext_proc.rules import RuleContext
from ext_proc.seal import Keyring, OpenCounter, tracker_capacity
from ext_proc.secrets import Secrets, load_secrets, reread_secret, secret_paths

log = logging.getLogger("ext_proc.reload")
Stamp = tuple[int, int, int] | None


def _stamp(path: Path | None) -> Stamp:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def rule_context(config: Config, secrets: Secrets) -> RuleContext:
    """The rules' view of the settings and the secrets, compiled once."""
    if secrets.keyring is None:
        raise ValueError("a rule context needs a seal key (LiveRules generates one when none is configured)")
    return RuleContext(
        keyring=secrets.keyring,
        server_credential=secrets.server_credential,
        handoff_header=config.handoff_header,
        litellm_headers=config.all_litellm_headers,
        allow_exact=frozenset(n for n in config.egress_allowlist if not n.endswith("*")),
        allow_prefixes=tuple(n[:-1] for n in config.egress_allowlist if n.endswith("*")),
        prefixes=config.prefixes,
        oauth_beta=config.oauth_beta.encode(),
        secret_pattern=config.secret_pattern(),
        egress_token=secrets.egress_token,
        opens=OpenCounter(config.seal_max_opens, tracker_capacity(config.seal_ttl_seconds)),
        litellm_keys=secrets.litellm_keys,
        litellm_requires_key=config.litellm_requires_key,
    )


class LiveRules:
    """Hands out the current RuleContext; swapping it is one attribute assignment, atomic for readers."""

    def __init__(self, config: Config, metrics: Metrics, secrets: Secrets | None = None) -> None:
        """``secrets``: as the command read them at start (read here when not given)."""
        self._config = config
        self._metrics = metrics
        self._secrets = secrets if secrets is not None else load_secrets(config)
        if self._secrets.keyring is None:
            generated = Keyring.generate(config.seal_ttl_seconds)
            self._secrets = replace(self._secrets, keyring=generated)
            log.info(
                "no seal key configured: generated one for this process (key id %s): a handoff opens only here, "
                "which is right when one process serves both legs (up, the sidecar and mesh forms); gateway "
                "replicas that open each other's handoffs need a shared seal_key_file",
                generated.key_ids[0],
            )
        else:
            log.info("seal keys loaded: key ids %s (first seals)", ", ".join(self._secrets.keyring.key_ids))
        if self._secrets.server_credential is not None:
            log.info("server credential loaded: %s", self._secrets.server_credential.fingerprint())
        if self._secrets.egress_token is None:
            log.warning(
                "no egress token configured: the egress leg attaches the server credential and sealed "
                "credentials to whatever reaches it, not only to LiteLLM (docs/rules.md E0)"
            )
        if self._secrets.litellm_keys:
            log.info("LiteLLM keys known by value: %d", len(self._secrets.litellm_keys))
        self.current = rule_context(config, self._secrets)
        self._stamps = {setting: _stamp(path) for setting, path in secret_paths(config)}

    def __call__(self) -> RuleContext:
        return self.current

    @property
    def watched(self) -> bool:
        return any(path is not None for _, path in secret_paths(self._config))

    def reload_changed(self) -> None:
        """Reload whichever secret file changed since the last look."""
        for setting, path in secret_paths(self._config):
            stamp = _stamp(path)
            if path is None or stamp == self._stamps[setting]:
                continue
            self._stamps[setting] = stamp
            try:
                self._secrets = reread_secret(self._config, setting, self._secrets)
            except ConfigError as exc:
                self._metrics.reloads.labels(setting, "rejected").inc()
                log.error("%s changed but cannot be used, keeping the previous value: %s", setting, exc)
                continue
            # The replay counter outlives a reload: a handoff opened before it counts after it.
            self.current = replace(
                rule_context(self._config, self._secrets), opens=self.current.opens, routes=self.current.routes
            )
            log.info("reloaded %s: %r", setting, self._secrets)
            self._metrics.reloads.labels(setting, "ok").inc()

    async def watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(self.reload_changed)
