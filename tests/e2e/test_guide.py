"""docs/litellm.md sections 1 and 2, as written: the gateway in front of a LiteLLM the operator runs, and Claude Code.

Every command, config and variable comes from the guide's code blocks (the placeholders `sk-...` filled in with a
master key), with `--anthropic` pointed at the recording stand-in and LiteLLM from the newest pinned environment.
The real Claude Code CLI, with a subscription token of its own, must reach the stand-in with that token only; the
same CLI without a LiteLLM key must be told so at once (rule I8), not retry for minutes.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import claude_code, litellm_proxy
from tests.support.processes import BIN, Proc, answers_ok, wait_for
from tests.support.recorder import Recorder

pytestmark = pytest.mark.litellm
GUIDE = Path(__file__).resolve().parents[2] / "docs" / "litellm.md"
MASTER = "sk-guide-master-key-0123456789"
CLIENT_OAUTH = "sk-ant-oat01-GUIDEOAUTH"


def section(number: int) -> str:
    text = GUIDE.read_text()
    start = text.index(f"\n## {number}. ")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def assignments(block: str, env: dict[str, str]) -> dict[str, str]:
    """The `NAME=value` and `export NAME=value` lines of a sh block, as a shell in ``env`` evaluates them."""
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    wanted = [line.removeprefix("export ") for line in lines if re.match(r"(export )?[A-Z_]+=", line)]
    names = [line.split("=", 1)[0] for line in wanted]
    script = "\n".join([*wanted, *(f'printf "%s\\0" "${name}"' for name in names)])
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.split("\0")[:-1], strict=True))


@dataclass
class Guide:
    recorder: Recorder
    home: Path
    client: dict[str, str]


@pytest.fixture
def guide(tmp_path: Path) -> Iterator[Guide]:
    home = tmp_path / "home"
    home.mkdir()
    base = {"HOME": str(home), "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    one = section(1)
    (install, keygen, up_line) = (line.split("#", 1)[0].strip() for line in blocks(one, "sh")[0].splitlines()[:3])
    assert install == "pip install ." and keygen.startswith("(umask 077; ext-proc keygen > seal.key)")
    subprocess.run(["bash", "-c", keygen], env=base, cwd=tmp_path, check=True)
    words = shlex.split(up_line)
    assert words[:2] == ["ext-proc", "up"], up_line
    two = section(2)
    (config,) = blocks(two, "yaml")
    (tmp_path / "config.yaml").write_text(config.replace("sk-...", MASTER))
    with Recorder() as recorder:
        up = Proc([str(BIN / "ext-proc"), *words[1:], "--anthropic", recorder.url], base, cwd=tmp_path,
                  unset=("XDG_CONFIG_HOME", "LITELLM_MASTER_KEY"))  # fmt: skip
        server: Proc | None = None
        try:
            up.wait_line("ready ", timeout=60)
            env = assignments(blocks(two, "sh")[0], base)
            assert set(env) == {"ANTHROPIC_API_BASE", "ANTHROPIC_API_KEY"} and env["ANTHROPIC_API_KEY"]
            (run,) = re.findall(r"`(litellm --config [^`]*)`", two)
            command = shlex.split(run)
            command[0] = str(litellm_proxy.venv(litellm_proxy.RELEASES[-1]) / "bin" / "litellm")
            server = Proc(command, {**base, **env, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY":
                                    "False", "NO_DOCS": "True"}, cwd=tmp_path, unset=("DATABASE_URL",))  # fmt: skip
            port = command[command.index("--port") + 1]

            wait_for(
                lambda: answers_ok(f"http://127.0.0.1:{port}/health/liveliness"), "LiteLLM liveliness", timeout=180
            )
            checked = subprocess.run(
                [str(BIN / "ext-proc"), "check", "--litellm-config", "config.yaml", "--run-by", "litellm"],
                env={**base, **env}, cwd=tmp_path, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert checked.returncode == 0 and "error" not in checked.stdout, checked.stdout + checked.stderr
            client = assignments(blocks(two, "sh")[1].replace("sk-...", MASTER), base)
            assert set(client) == {"ANTHROPIC_BASE_URL", "ANTHROPIC_CUSTOM_HEADERS"}
            yield Guide(recorder, home, client)
        finally:
            if server is not None:
                server.stop()
            up.stop()


def claude(binary: Path | str, guide: Guide, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    quiet = {"DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
             "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}  # fmt: skip
    full = {"HOME": str(guide.home), "PATH": os.environ.get("PATH", ""), "CLAUDE_CODE_OAUTH_TOKEN": CLIENT_OAUTH,
            **quiet, **env}  # fmt: skip
    return subprocess.run([str(binary), "-p", "say ok"], env=full, capture_output=True, text=True, timeout=240,
                          cwd=cwd)  # fmt: skip


def test_the_existing_litellm_guide_with_the_real_claude_code_cli(guide: Guide, tmp_path: Path) -> None:
    binary = claude_code.install()
    if isinstance(binary, str):
        pytest.skip(binary)
    result = claude(binary, guide, guide.client, tmp_path)
    received = guide.recorder.take()
    assert result.returncode == 0, result.stdout + result.stderr
    assert received and all(g.get("authorization") == [f"Bearer {CLIENT_OAUTH}"] for g in received)
    assert all(g.get("x-api-key") == [] and "x-litellm-api-key" not in g.names for g in received)
    assert all(MASTER not in v for g in received for _, v in g.headers)


def test_a_client_without_a_litellm_key_is_told_at_the_ingress(guide: Guide, tmp_path: Path) -> None:
    """Measured before rule I8: LiteLLM answered 500 "No api key passed in" and Claude Code retried for ~150 s."""
    binary = claude_code.install()
    if isinstance(binary, str):
        pytest.skip(binary)
    started = time.monotonic()
    result = claude(binary, guide, {"ANTHROPIC_BASE_URL": guide.client["ANTHROPIC_BASE_URL"]}, tmp_path)
    took = time.monotonic() - started
    assert result.returncode != 0 and took < 60, (took, result.stdout + result.stderr)
    assert "needs a LiteLLM key" in result.stdout + result.stderr, result.stdout + result.stderr
    assert guide.recorder.take() == []
