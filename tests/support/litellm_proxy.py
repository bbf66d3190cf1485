"""Real LiteLLM proxies from PyPI, one virtualenv per release, cached in .cache/ between local runs.

Each release installs from a frozen requirements file (tests/e2e/litellm-<version>.txt), so CI gets the exact
set that was measured. LiteLLM is started with a master key and no database, its model-cost map read locally
(no network here), and Anthropic pointed wherever the test says.
"""

from __future__ import annotations

import fcntl
import hashlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.processes import Proc, answers_ok, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"
REQUIREMENTS = ROOT / "tests" / "e2e"
# 1.81.14: the release most public bug reports are about. 1.108.7: the newest that `pip install litellm[proxy]`
# resolved here on 2026-11-26.
RELEASES = ("1.81.14", "1.108.7")
MASTER_KEY = "sk-master-1234"
MODEL = "claude-sonnet-4-5"
# The same model under a second name, routed to `Setup.direct_base` (the benchmark's LiteLLM-alone variant).
DIRECT_MODEL = f"{MODEL}-direct"
# What LiteLLM sends as its Anthropic key behind the gateway: the egress token (docs/rules.md E0).
EGRESS_TOKEN = "egress-test-token-0123456789abcdefghij"


def venv(version: str) -> Path:
    """The virtualenv for one release, made once per requirements file (a lock keeps parallel runs apart)."""
    requirements = REQUIREMENTS / f"litellm-{version}.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    path = CACHE / f"litellm-{version}"
    stamp = path / f".installed-{digest}"
    CACHE.mkdir(exist_ok=True)
    with (CACHE / f"litellm-{version}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], check=True)
            pip = [str(path / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
            subprocess.run([*pip, "--no-deps", "-r", str(requirements)], check=True, timeout=1200)
            stamp.touch()
    return path


@dataclass(frozen=True)
class Setup:
    """What LiteLLM is configured with for one run."""

    version: str
    anthropic_base: str
    api_key: str | None
    forward_client_headers: bool = True
    direct_base: str | None = None
    # An OpenAI deployment (OPENAI_MODEL) at this base URL, e.g. the egress's /upstreams/openai/v1.
    openai_base: str | None = None
    # Forwarding for every provider (general_settings), as the earlier guide said, instead of per model group.
    forward_globally: bool = False
    # LiteLLM's default router settings (cooldowns on) instead of cooldowns off.
    default_router: bool = False
    # More Anthropic model groups (fallback targets), and settings merged into the config's top-level sections.
    more_groups: tuple[str, ...] = ()
    settings: tuple[tuple[str, dict[str, Any]], ...] = ()
    # Deployments in MODEL's group, load-balanced by LiteLLM's router (each its own cooldown).
    deployments: int = 1


# LiteLLM waits 0.5 s doubling per retry, plus up to 0.75 s of jitter (both read from its environment): tests that
# make it retry need not wait.
NO_RETRY_WAIT = {"INITIAL_RETRY_DELAY": "0", "JITTER": "0"}
OPENAI_MODEL = "gpt-4o"
OPENAI_KEY = "sk-proj-FAKEOPENAIKEY"


def config_yaml(setup: Setup) -> str:
    params = {"model": f"anthropic/{MODEL}"} | ({"api_key": setup.api_key} if setup.api_key is not None else {})
    routes = [(MODEL, setup.anthropic_base)] * setup.deployments + (
        [(DIRECT_MODEL, setup.direct_base)] if setup.direct_base else []
    )
    routes += [(name, setup.anthropic_base) for name in setup.more_groups]
    models: list[dict[str, Any]] = [
        {"model_name": name, "litellm_params": {**params, "api_base": base}} for name, base in routes
    ]
    if setup.openai_base:
        models.append({"model_name": OPENAI_MODEL, "litellm_params": {
            "model": f"openai/{OPENAI_MODEL}", "api_base": setup.openai_base, "api_key": OPENAI_KEY}})  # fmt: skip
    doc: dict[str, Any] = {"model_list": models, "general_settings": {"master_key": MASTER_KEY}}
    if setup.forward_client_headers and not setup.forward_globally:
        # The recommended form: forwarding for the Anthropic model groups only (docs/litellm.md).
        doc["litellm_settings"] = {"model_group_settings": {
            "forward_client_headers_to_llm_api": list(dict.fromkeys(name for name, _ in routes))}}  # fmt: skip
    if setup.forward_client_headers and setup.forward_globally:
        doc["general_settings"]["forward_client_headers_to_llm_api"] = True
    if not setup.default_router:
        # Cooldowns would turn a failed call into 429s for the calls after it: each cell must stand alone.
        doc["router_settings"] = {"disable_cooldowns": True}
    for section, values in setup.settings:
        doc.setdefault(section, {}).update(values)
    return str(yaml.safe_dump(doc, sort_keys=False))


@dataclass
class LiteLLM:
    proc: Proc
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> int:
        return self.proc.stop()


def start(setup: Setup, workdir: Path, port: int | None = None) -> LiteLLM:
    path = venv(setup.version)
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "litellm.yaml"
    config.write_text(config_yaml(setup))
    port = port or free_port()
    env = {
        "ANTHROPIC_API_BASE": setup.anthropic_base,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "DISABLE_SCHEMA_UPDATE": "True",
        "NO_DOCS": "True",
        "HOME": str(workdir),
        **NO_RETRY_WAIT,
    }
    if setup.api_key is not None:
        env["ANTHROPIC_API_KEY"] = setup.api_key
    proc = Proc(
        [str(path / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
        env,
        unset=("ANTHROPIC_API_KEY", "DATABASE_URL"),
    )
    litellm = LiteLLM(proc, port)

    def alive() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"LiteLLM {setup.version} exited:\n{proc.output[-4000:]}")
        return answers_ok(f"{litellm.url}/health/liveliness")

    wait_for(alive, f"LiteLLM {setup.version} liveliness", timeout=180)
    return litellm
