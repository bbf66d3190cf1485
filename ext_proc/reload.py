"""The live rule context: built once at start, rebuilt when a secret file changes on disk.

Seal keys and the server credential are files (Kubernetes secret mounts). A watcher compares each file's
identity (inode, mtime, size: a secret update swaps a symlink, which changes all three) every
``reload_interval_seconds``; a changed file is loaded and validated, and only a good one replaces the old value.
A bad one keeps the old value and says why, without the value.
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
from ext_proc.seal import Keyring

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


class RuleSource:
    """Hands out the current RuleContext; swapping it is one attribute assignment, atomic for readers."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self._config = config
        self._metrics = metrics
        keyring = config.keyring()
        if keyring is None:
            keyring = Keyring.generate(config.seal_ttl_seconds)
            log.info(
                "no seal key configured: generated one for this process (key id %s): a handoff opens only here, "
                "which is right when one process serves both legs (up, the sidecar and mesh forms); gateway "
                "replicas that open each other's handoffs need a shared seal_key_file",
                keyring.key_ids[0],
            )
        else:
            log.info("seal keys loaded: key ids %s (first seals)", ", ".join(keyring.key_ids))
        credential = config.load_server_credential()
        if credential is not None:
            log.info("server credential loaded: %s", credential.fingerprint())
        token = config.load_egress_token()
        if token is None:
            log.warning(
                "no egress token configured: the egress leg attaches the server credential and sealed "
                "credentials to whatever reaches it, not only to LiteLLM (docs/rules.md E0)"
            )
        litellm_keys = config.load_litellm_keys()
        if litellm_keys:
            log.info("LiteLLM keys known by value: %d", len(litellm_keys))
        self.current = RuleContext.from_config(config, keyring, credential, token, litellm_keys)
        self._stamps = {setting: _stamp(path) for setting, path in self._files()}

    def _files(self) -> tuple[tuple[str, Path | None], ...]:
        c = self._config
        return (
            ("seal_key_file", c.seal_key_file),
            ("server_credential_file", c.server_credential_file),
            ("egress_token_file", c.egress_token_file),
            ("litellm_key_file", c.litellm_key_file),
        )

    def __call__(self) -> RuleContext:
        return self.current

    @property
    def watched(self) -> bool:
        return any(path is not None for _, path in self._files())

    def check(self) -> None:
        """Reload whichever secret file changed since the last look."""
        for setting, path in self._files():
            stamp = _stamp(path)
            if path is None or stamp == self._stamps[setting]:
                continue
            self._stamps[setting] = stamp
            try:
                if setting == "seal_key_file":
                    keyring = self._config.keyring()
                    if keyring is None:
                        raise ConfigError(f"{setting} {path}: holds no key")
                    self.current = replace(self.current, keyring=keyring)
                    log.info("reloaded %s: key ids %s", setting, ", ".join(keyring.key_ids))
                elif setting == "egress_token_file":
                    token = self._config.load_egress_token()
                    if token is None:
                        raise ConfigError(f"{setting} {path}: holds no token")
                    self.current = replace(self.current, egress_token=token)
                    log.info("reloaded %s", setting)
                elif setting == "litellm_key_file":
                    keys = self._config.load_litellm_keys()
                    self.current = replace(self.current, litellm_keys=keys)
                    log.info("reloaded %s: %d keys", setting, len(keys))
                else:
                    credential = self._config.load_server_credential()
                    self.current = replace(self.current, server_credential=credential)
                    log.info("reloaded %s: %s", setting, credential.fingerprint() if credential else "none")
                self._metrics.reloads.labels(setting, "ok").inc()
            except ConfigError as exc:
                self._metrics.reloads.labels(setting, "rejected").inc()
                log.error("%s changed but cannot be used, keeping the previous value: %s", setting, exc)

    async def watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(self.check)
