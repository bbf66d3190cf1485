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
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import Proc, free_port, wait_for

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


OPENAI_MODEL = "gpt-4o"
OPENAI_KEY = "sk-proj-FAKEOPENAIKEY"


def config_yaml(setup: Setup) -> str:
    key = f"      api_key: {setup.api_key}\n" if setup.api_key is not None else ""
    routes = [(MODEL, setup.anthropic_base)] + ([(DIRECT_MODEL, setup.direct_base)] if setup.direct_base else [])
    models = "".join(
        f"  - model_name: {name}\n    litellm_params:\n      model: anthropic/{MODEL}\n      api_base: {base}\n{key}"
        for name, base in routes
    )
    if setup.openai_base:
        models += (
            f"  - model_name: {OPENAI_MODEL}\n    litellm_params:\n      model: openai/{OPENAI_MODEL}\n"
            f"      api_base: {setup.openai_base}\n      api_key: {OPENAI_KEY}\n"
        )
    # The recommended form: forwarding for the Anthropic model groups only (docs/litellm.md).
    groups = ", ".join(name for name, _ in routes)
    forward = ""
    if setup.forward_client_headers and not setup.forward_globally:
        forward = f"litellm_settings:\n  model_group_settings:\n    forward_client_headers_to_llm_api: [{groups}]\n"
    general = f"general_settings:\n  master_key: {MASTER_KEY}\n"
    if setup.forward_client_headers and setup.forward_globally:
        general += "  forward_client_headers_to_llm_api: true\n"
    # Cooldowns would turn a failed call into 429s for the calls after it: each cell must stand alone.
    router = "" if setup.default_router else "router_settings:\n  disable_cooldowns: true\n"
    return f"model_list:\n{models}{forward}{general}{router}"


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
        try:
            with urllib.request.urlopen(f"{litellm.url}/health/liveliness", timeout=2) as response:  # noqa: S310
                return bool(response.status == 200)
        except OSError:
            return False

    wait_for(alive, f"LiteLLM {setup.version} liveliness", timeout=180)
    return litellm
