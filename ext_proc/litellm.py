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
from pathlib import Path
from typing import Any

import yaml

# Used only when LITELLM_MASTER_KEY is unset, and refused when the ingress listens beyond loopback.
DEV_MASTER_KEY = "sk-local-dev-only"
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
            "LiteLLM not found: pip install 'ext-proc-credentials[litellm]' (or put litellm on PATH), "
            "or run LiteLLM yourself and give --litellm URL instead of --litellm-config"
        )
    return Path(found)


def derive(source: dict[str, Any], egress: str) -> dict[str, Any]:
    """The config LiteLLM runs with: every Anthropic deployment through the egress, with the token, forwarding on.

    Forwarding is set per model group (`litellm_settings.model_group_settings`): globally it would send the sealed
    handoff and every client `x-*` header to every other provider too.
    """
    config = yaml.safe_load(yaml.safe_dump(source))  # a deep copy, plain types only
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
    be served on the operator's key, so a config without one, or with the development default, is refused there.
    """
    env = dict(os.environ)
    env["ANTHROPIC_API_BASE"] = f"http://{egress}"
    env["ANTHROPIC_API_KEY"] = token
    master = (source.get("general_settings") or {}).get("master_key")
    if master is None and not ingress_is_loopback:
        raise LiteLLMError("the LiteLLM config has no general_settings.master_key: not beyond loopback")
    if master != _MASTER_FROM_ENV:
        return env
    if not env.get(MASTER_KEY_ENV):
        if not ingress_is_loopback:
            raise LiteLLMError(
                f"{MASTER_KEY_ENV} is not set and the ingress listens beyond loopback: set a master key of your own "
                f"(the development default {DEV_MASTER_KEY!r} is only for --ingress-listen 127.0.0.1:PORT)"
            )
        env[MASTER_KEY_ENV] = DEV_MASTER_KEY
    elif env[MASTER_KEY_ENV] == DEV_MASTER_KEY and not ingress_is_loopback:
        raise LiteLLMError(f"{MASTER_KEY_ENV} is the development default: not beyond loopback")
    return env


def load(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise LiteLLMError(f"cannot read the LiteLLM config {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise LiteLLMError(f"the LiteLLM config {path} is not a YAML mapping")
    return doc
