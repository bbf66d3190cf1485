"""LiteLLM as `ext-proc up`'s supervised child (`--litellm-config FILE`): the whole chain from one command.

`Plan` is what runs: the config read and judged before anything starts, the settings of the gateway that follow
from it, the child started and waited for, and the two lines a client needs.

The user's config is read, never edited: a derived copy in `up`'s private directory points every Anthropic
deployment at the egress with the egress token as its key and forwards client headers for the Anthropic model
groups only, so an ordinary config with `anthropic/...` models and a master key works as it is. LiteLLM comes from
the optional extra (`pip install 'ext-proc-credentials[litellm]'`), or any `litellm` on PATH.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from ext_proc import supervise
from ext_proc.config import Config, ConfigError
from ext_proc.envoy import Layout
from ext_proc.litellm_config import (
    DEV_MASTER_KEY,
    SAMPLE_MASTER_KEYS,
    asks_for_key,
    attempts,
    check_text,
    key_header,
    shape_problem,
)
from ext_proc.secrets import LITELLM_KEY_MIN, Secrets
from ext_proc.supervise import UpError, answers, die_with_parent, http_ok, prefixed, wait_until

log = logging.getLogger("ext_proc.up")
START_SECONDS = 180.0
CHECK_SECONDS = 5.0

MASTER_KEY_MIN = 16
MASTER_KEY_ENV = "LITELLM_MASTER_KEY"
_TOKEN_FROM_ENV = "os.environ/ANTHROPIC_API_KEY"  # noqa: S105 (where LiteLLM reads it, not a value)
_MASTER_FROM_ENV = f"os.environ/{MASTER_KEY_ENV}"


class LiteLLMError(RuntimeError):
    """A reason LiteLLM cannot be run for the operator, worded for them."""


def find_litellm() -> Path:
    """The `litellm` command: next to this Python (the extra installs it there), else on PATH."""
    beside = Path(sys.executable).parent / "litellm"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("litellm")
    if found is None:
        raise LiteLLMError(
            "LiteLLM not found: install this package's litellm extra (pip install '.[litellm]' in a clone of the "
            "repository, 'ext-proc-credentials[litellm]' from a package index) or put litellm on PATH, or run "
            "LiteLLM yourself and give --litellm URL instead of --litellm-config"
        )
    return Path(found)


def derive(given: dict[str, Any], egress: str) -> dict[str, Any]:
    """The config LiteLLM runs with: every Anthropic deployment through the egress, with the token, forwarding on.

    Forwarding is set per model group (`litellm_settings.model_group_settings`): globally it would send the sealed
    handoff and every client `x-*` header to every other provider too.
    """
    config = yaml.safe_load(yaml.safe_dump(given))  # a deep copy, plain types only
    general = config.get("general_settings") or {}
    if general.get("master_key") is not None:
        # The key itself goes in LiteLLM's environment (``environment``): the copy on disk holds no secret of ours.
        general["master_key"] = _MASTER_FROM_ENV
    groups: list[str] = []
    for model in config.get("model_list") or []:
        params = model.setdefault("litellm_params", {})
        if str(params.get("model")).startswith("anthropic/"):
            params["api_base"] = f"http://{egress}"
            params["api_key"] = _TOKEN_FROM_ENV
            groups.append(str(model.get("model_name")))
    if not groups:
        raise LiteLLMError("the LiteLLM config has no Anthropic deployment (model: anthropic/...) to protect")
    settings = config["litellm_settings"] = config.get("litellm_settings") or {}
    group_settings = settings["model_group_settings"] = settings.get("model_group_settings") or {}
    forwarded = list(group_settings.get("forward_client_headers_to_llm_api") or [])
    group_settings["forward_client_headers_to_llm_api"] = forwarded + [g for g in groups if g not in forwarded]
    return dict(config)


def environment(given: dict[str, Any], token: str, egress: str, ingress_is_loopback: bool) -> dict[str, str]:
    """LiteLLM's environment: ours, plus Anthropic's base and key for the pass-through routes, and a master key.

    Beyond loopback LiteLLM must authenticate its callers: without a master key anyone reaching the ingress would
    be served on the operator's key, so a config without one, or with a key anyone has read (the development
    default, LiteLLM's documented samples) or one too short to resist guessing, is refused there.
    """
    env = dict(os.environ)
    env["ANTHROPIC_API_BASE"] = f"http://{egress}"
    env["ANTHROPIC_API_KEY"] = token
    configured = (given.get("general_settings") or {}).get("master_key")
    master = master_key(given, env)
    if configured is None:
        if not ingress_is_loopback:
            raise LiteLLMError("the LiteLLM config has no general_settings.master_key: not beyond loopback")
        return env
    if master is None:
        variable = str(configured).removeprefix("os.environ/")
        if not ingress_is_loopback:
            raise LiteLLMError(
                f"{variable} is not set and the ingress listens beyond loopback: set a master key of your own "
                f"(the development default {DEV_MASTER_KEY!r} is only for --ingress-listen 127.0.0.1:PORT)"
            )
        master = DEV_MASTER_KEY
    if not ingress_is_loopback and (master in SAMPLE_MASTER_KEYS or len(master) < MASTER_KEY_MIN):
        what = "the development default" if master == DEV_MASTER_KEY else "a sample key from documentation"
        if master not in SAMPLE_MASTER_KEYS:
            what = f"shorter than {MASTER_KEY_MIN} characters"
        raise LiteLLMError(
            f"LiteLLM's master key is {what}: not beyond loopback (anyone who guesses it is served on the "
            "operator's key); `ext-proc keygen --egress-token` prints a random value to base one on"
        )
    env[MASTER_KEY_ENV] = master
    return env


def master_key(given: dict[str, Any], env: Mapping[str, str]) -> str | None:
    """LiteLLM's master key as LiteLLM will read it: the config's value, or the variable it names."""
    value = (given.get("general_settings") or {}).get("master_key")
    if value is None:
        return None
    text = str(value)
    if text.startswith("os.environ/"):
        return env.get(text.removeprefix("os.environ/")) or None
    return text


def load(path: Path) -> dict[str, Any]:
    try:
        with path.open() as fh:  # a stream, so that a syntax error names the file
            doc = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise LiteLLMError(f"cannot read the LiteLLM config {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise LiteLLMError(f"the LiteLLM config {path} is not a YAML mapping")
    if problem := shape_problem(doc):
        raise LiteLLMError(f"the LiteLLM config {path}: {problem}")
    return doc


class Plan:
    """What `up --litellm-config` runs: the user's config (read now, so a bad one fails before anything starts)."""

    def __init__(self, given: dict[str, Any], derived: str, env: dict[str, str], binary: Path, path: Path) -> None:
        self.given = given
        self.derived = derived
        self.env = env
        self.binary = binary
        self.path = path
        self.output: asyncio.Task[None] | None = None
        self.attempts = attempts(given)
        master = env.get(MASTER_KEY_ENV)
        # Known by value when long enough to search for without false matches (shorter ones are loopback-only).
        self.master_key = master if master and len(master) >= LITELLM_KEY_MIN else None
        self.requires_key = asks_for_key(given, env)
        self.key_header = key_header(given)

    def applied(self, config: Config, secrets: Secrets) -> tuple[Config, Secrets]:
        """The server's settings and secrets that follow from this LiteLLM: its master key known by value (rule
        E7; a setting too, so that a reload of litellm_key_file keeps it), whether it asks callers for a key and
        the header it reads one from besides the usual ones (rule I8), and as many opens of a handoff as it makes
        calls for one request (rule S1)."""
        config = replace(config, litellm_requires_key=self.requires_key)
        if self.master_key:
            config = replace(config, litellm_keys=(*config.litellm_keys, self.master_key))
            key = self.master_key.encode("latin-1", "replace")
            secrets = replace(secrets, litellm_keys=tuple(dict.fromkeys((*secrets.litellm_keys, key))))
        if self.key_header and self.key_header not in config.all_litellm_headers:
            config = replace(config, litellm_headers=(*config.litellm_headers, self.key_header))
        if self.attempts.calls > config.seal_max_opens:
            log.info("%s: seal_max_opens %d", self.attempts, self.attempts.calls)
            config = replace(config, seal_max_opens=self.attempts.calls)
        try:
            return config.validated(), secrets
        except ConfigError as exc:
            raise UpError(f"the LiteLLM config {self.path}: {exc}") from None

    @classmethod
    def of(cls, path: Path, layout: Layout, config: Config, secrets: Secrets) -> Plan:
        if layout.litellm.scheme != "http":
            raise UpError("--litellm-config runs LiteLLM on --litellm, which must be an http:// address here")
        binary = find_litellm()
        token = secrets.egress_token
        if token is None:
            raise UpError("--litellm-config needs an egress token (egress_token_file)")
        given = load(path)
        derived = yaml.safe_dump(derive(given, str(layout.egress.reached_at)), sort_keys=False)
        findings = check_text(derived, token, config.anthropic_prefix, {"ANTHROPIC_API_KEY": token.decode()})
        for finding in findings:
            log.warning("LiteLLM config %s: %s", path, finding)
        if any(f.error for f in findings):
            raise UpError(f"the LiteLLM config {path} breaks a guarantee (see above)")
        loopback = layout.ingress.host in ("127.0.0.1", "::1", "localhost")
        env = environment(given, token.decode(), str(layout.egress.reached_at), loopback)
        return cls(given, derived, env, binary, path)

    # pragma: no mutate start (runs LiteLLM in `up`'s process: tests/e2e/test_router.py and test_chain.py)
    async def start(self, work: Path, layout: Layout, stopping: asyncio.Event) -> asyncio.subprocess.Process:
        """LiteLLM from the derived config, dying with this process, waited for until its liveliness answers."""
        derived = work / "litellm.yaml"
        fd = os.open(derived, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.derived)
        child = await asyncio.create_subprocess_exec(
            str(self.binary), "--config", str(derived),
            "--host", layout.litellm.host, "--port", str(layout.litellm.port),
            env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )  # fmt: skip
        self.output = asyncio.create_task(prefixed(child, "litellm | "))
        log.info("LiteLLM started from %s (pid %d)", self.path, child.pid)
        url = f"http://{layout.litellm.address}/health/liveliness"
        try:
            await wait_until(lambda: http_ok(url), child, "LiteLLM", START_SECONDS, stopping, 0.25)
        except BaseException:
            await supervise.stop(child)
            raise
        return child

    # pragma: no mutate end

    def print_client_setup(self, layout: Layout) -> None:
        """The two lines a Claude Code user needs (a master key as the shell holds it, never its value)."""
        if (self.given.get("general_settings") or {}).get("master_key") != _MASTER_FROM_ENV:
            key = "<your LiteLLM key>"
        elif os.environ.get(MASTER_KEY_ENV):
            key = f"${MASTER_KEY_ENV}"
        else:
            key = DEV_MASTER_KEY
        # flush: a pipe reader waits for these lines while up runs (tests/e2e/test_chain.py; capsys cannot tell)
        print(f"export ANTHROPIC_BASE_URL=http://{layout.ingress.reached_at}", flush=True)  # pragma: no mutate
        print(f'export ANTHROPIC_CUSTOM_HEADERS="x-litellm-api-key: {key}"', flush=True)  # pragma: no mutate


async def watch(layout: Layout, up: bool) -> None:
    """Log each change in whether LiteLLM accepts connections: the ingress leg's 503s then name it too."""
    answered, where = up, layout.litellm.address
    while True:
        await asyncio.sleep(CHECK_SECONDS)
        now = await asyncio.to_thread(answers, where)
        if now != up:
            up = now
            if up:
                log.info("LiteLLM at %s answers%s", where, " again" if answered else "")
                answered = True
            else:
                log.warning("LiteLLM at %s does not answer: the ingress leg answers 503 until it does", where)
