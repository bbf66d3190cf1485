"""The README's first command: the whole chain (Envoy, the server, LiteLLM) from the shipped example config.

It runs exactly the command line the README gives (after its `pip install`), with `--anthropic` pointed at the
recording stand-in, LiteLLM from the newest pinned environment on PATH (what `pip install '.[litellm]'` puts next
to ext-proc), and the user's config directory in a temporary place. A Claude Code request (its recorded header
set, and the real CLI where npm can install it) must reach the stand-in with the client's own credential only,
set up from nothing but the two lines `up` prints.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import claude_code, fixtures, litellm_proxy
from tests.support.http import send
from tests.support.processes import BIN, Proc
from tests.support.recorder import Recorder

pytestmark = pytest.mark.litellm
ROOT = Path(__file__).resolve().parents[2]
CLIENT_OAUTH = "sk-ant-oat01-FAKEOAUTH"


def readme_command() -> list[str]:
    """`ext-proc up ...` from the README's first line, as a shell would split it."""
    first = (ROOT / "README.md").read_text().split("```sh\n", 1)[1].splitlines()[0]
    command = first.split("&&", 1)[1].split("#", 1)[0]
    words = shlex.split(command)
    assert words[:2] == ["ext-proc", "up"], first
    return words


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[tuple[Proc, Recorder, dict[str, str]]]:
    private = tmp_path / "tmp"
    private.mkdir(mode=0o700)
    with Recorder() as recorder:
        env = {
            "PATH": f"{litellm_proxy.venv(litellm_proxy.RELEASES[-1]) / 'bin'}:{BIN}:{os.environ.get('PATH', '')}",
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_TELEMETRY": "False",
            "TMPDIR": str(private),
        }
        words = readme_command()
        umask = os.umask(0o022)  # an operator's usual umask, not the tests' 077: the files' modes are up's own doing
        try:
            up = Proc(
                [str(BIN / "ext-proc"), *words[1:], "--anthropic", recorder.url], env, unset=("LITELLM_MASTER_KEY",)
            )
        finally:
            os.umask(umask)
        try:
            up.ready_line = up.wait_line("ready ", timeout=240)
            client = {
                m.group(1): m.group(2)
                for m in (re.match(r'export (\w+)="?(.*?)"?$', up.wait_line(f"export {name}")) for name in
                          ("ANTHROPIC_BASE_URL", "ANTHROPIC_CUSTOM_HEADERS"))
                if m
            }  # fmt: skip
            yield up, recorder, client
        finally:
            up.signal(signal.SIGTERM)
            code = up.stop(60)
            assert code == 0, up.output[-3000:]


def test_the_readme_command_runs_the_whole_chain(chain: tuple[Proc, Recorder, dict[str, str]], tmp_path: Path) -> None:
    up, recorder, client = chain
    assert "litellm=up" in up.ready_line
    assert client["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:8080"
    name, _, key = client["ANTHROPIC_CUSTOM_HEADERS"].partition(": ")
    recorded = fixtures.load(fixtures.CLAUDE_CODE_OAUTH)
    headers = [(k, key if k.lower() == name else v) for k, v in recorded.headers]
    body = b'{"model":"claude-sonnet-5-5","max_tokens":16,"stream":false,"messages":[{"role":"user","content":"hi"}]}'
    host, port = client["ANTHROPIC_BASE_URL"].removeprefix("http://").split(":")
    from ext_proc.envoy import HostPort

    status, answer, _ = send(HostPort(host, int(port)), "POST", "/v1/messages?beta=true", headers, body)
    assert status == 200, answer[:300]
    (got,) = recorder.take()
    assert got.get("authorization") == [f"Bearer {CLIENT_OAUTH}"]
    assert got.get("x-api-key") == [] and "x-litellm-api-key" not in got.names
    assert '"model":"claude-sonnet-5-5"' in got.body.decode().replace(" ", "")
    # A wrong LiteLLM key is LiteLLM's clear 4xx (measured: 400 "No connected db." without a database), never a
    # 5xx that Claude Code would retry for minutes; nothing goes upstream.
    wrong = [(k, "sk-wrong-key" if k.lower() == name else v) for k, v in headers]
    status, answer, _ = send(HostPort(host, int(port)), "POST", "/v1/messages?beta=true", wrong, body)
    assert 400 <= status < 500 and "error" in json.loads(answer), answer[:300]
    assert recorder.take() == []
    # LiteLLM runs from a derived copy of the config (with any key the operator wrote in it): only its owner reads it.
    (work,) = (tmp_path / "tmp").glob("ext-proc-up-*")
    derived = Path(_config_of(_litellm_child(up.pid)))
    assert derived.parent == work and derived.stat().st_mode & 0o777 == 0o600 and work.stat().st_mode & 0o777 == 0o700
    # LiteLLM's output comes through `up`, marked; no credential in any of it.
    assert "litellm | " in up.output
    for secret in (CLIENT_OAUTH, litellm_proxy.EGRESS_TOKEN):
        assert secret not in up.output


def test_the_real_claude_code_cli_with_the_printed_setup(
    chain: tuple[Proc, Recorder, dict[str, str]], tmp_path: Path
) -> None:
    binary = claude_code.install()
    if isinstance(binary, str):
        pytest.skip(binary)
    _, recorder, client = chain
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "HOME": str(home), "PATH": os.environ.get("PATH", ""), "CLAUDE_CODE_OAUTH_TOKEN": CLIENT_OAUTH,
        "DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", **client,
    }  # fmt: skip
    result = subprocess.run([str(binary), "-p", "say ok"], env=env, capture_output=True, text=True, timeout=180,
                            cwd=tmp_path)  # fmt: skip
    received = recorder.take()
    assert result.returncode == 0, result.stdout + result.stderr
    assert received and all(g.get("authorization") == [f"Bearer {CLIENT_OAUTH}"] for g in received)
    assert all(g.get("x-api-key") == [] and "x-litellm-api-key" not in g.names for g in received)


def test_litellm_s_death_stops_the_gateway_with_an_error(tmp_path: Path) -> None:
    with Recorder() as recorder:
        env = {
            "PATH": f"{litellm_proxy.venv(litellm_proxy.RELEASES[-1]) / 'bin'}:{BIN}:{os.environ.get('PATH', '')}",
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        }
        up = Proc([str(BIN / "ext-proc"), *readme_command()[1:], "--anthropic", recorder.url], env)
        try:
            up.wait_line("ready ", timeout=240)
            os.kill(_litellm_child(up.pid), signal.SIGKILL)
            code = up.wait(60)
        finally:
            up.stop()
    assert code == 1
    assert f"LiteLLM exited unexpectedly with status {-signal.SIGKILL}" in up.output


def _litellm_child(pid: int) -> int:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    (child,) = [int(c) for c in children if "litellm" in Path(f"/proc/{c}/cmdline").read_text()]
    return child


def _config_of(pid: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    return argv[argv.index("--config") + 1]
