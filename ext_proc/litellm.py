"""LiteLLM as `ext-proc up`'s supervised child (`--litellm-config FILE`): the whole chain from one command.

The user's config is read, never edited: a derived copy in `up`'s private directory points every Anthropic
deployment at the egress with the egress token as its key and forwards client headers for the Anthropic model
groups only, so an ordinary config with `anthropic/...` models and a master key works as it is. LiteLLM comes from
the optional extra (`pip install 'ext-proc-credentials[litellm]'`), or any `litellm` on PATH.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

# Used only when LITELLM_MASTER_KEY is unset, and refused when the ingress listens beyond loopback.
DEV_MASTER_KEY = "sk-local-dev-only"
# Master keys anyone has read (LiteLLM's documentation samples, ours): never served beyond loopback.
SAMPLE_MASTER_KEYS = frozenset({DEV_MASTER_KEY, "sk-1234", "sk-12345", "sk-your-litellm-key", "sk-master-1234"})
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


def derive(source: dict[str, Any], egress: str) -> dict[str, Any]:
    """The config LiteLLM runs with: every Anthropic deployment through the egress, with the token, forwarding on.

    Forwarding is set per model group (`litellm_settings.model_group_settings`): globally it would send the sealed
    handoff and every client `x-*` header to every other provider too.
    """
    config = yaml.safe_load(yaml.safe_dump(source))  # a deep copy, plain types only
    general = config.get("general_settings") or {}
    if general.get("master_key") is not None:
        # The key itself goes in LiteLLM's environment (``environment``): the copy on disk holds no secret of ours.
        general["master_key"] = _MASTER_FROM_ENV
    groups: list[str] = []
    for model in config.get("model_list") or []:
        params = model.setdefault("litellm_params", {})
        if str(params.get("model", "")).startswith("anthropic/"):
            params["api_base"] = f"http://{egress}"
            params["api_key"] = _TOKEN_FROM_ENV
            groups.append(str(model.get("model_name")))
    if not groups:
        raise LiteLLMError("the LiteLLM config has no Anthropic deployment (model: anthropic/...) to protect")
    settings = config.setdefault("litellm_settings", None) or {}
    config["litellm_settings"] = settings
    group_settings = settings.setdefault("model_group_settings", None) or {}
    settings["model_group_settings"] = group_settings
    forwarded = list(group_settings.get("forward_client_headers_to_llm_api") or [])
    group_settings["forward_client_headers_to_llm_api"] = forwarded + [g for g in groups if g not in forwarded]
    return dict(config)


def environment(source: dict[str, Any], token: str, egress: str, ingress_is_loopback: bool) -> dict[str, str]:
    """LiteLLM's environment: ours, plus Anthropic's base and key for the pass-through routes, and a master key.

    Beyond loopback LiteLLM must authenticate its callers: without a master key anyone reaching the ingress would
    be served on the operator's key, so a config without one, or with a key anyone has read (the development
    default, LiteLLM's documented samples) or one too short to resist guessing, is refused there.
    """
    env = dict(os.environ)
    env["ANTHROPIC_API_BASE"] = f"http://{egress}"
    env["ANTHROPIC_API_KEY"] = token
    configured = (source.get("general_settings") or {}).get("master_key")
    master = master_key(source, env)
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


def master_key(source: dict[str, Any], env: Mapping[str, str]) -> str | None:
    """LiteLLM's master key as LiteLLM will read it: the config's value, or the variable it names."""
    value = (source.get("general_settings") or {}).get("master_key")
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
    return doc
