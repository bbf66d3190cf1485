"""``ext-proc up`` as users run it: its console script, the real Envoy, signals and clear start-up errors."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

from ext_proc.envoy import HostPort
from tests.support.http import send
from tests.support.processes import BIN, Proc, free_port
from tests.support.recorder import Recorder


def _up(*args: str, env: dict[str, str] | None = None) -> Proc:
    return Proc([str(BIN / "ext-proc"), "up", *args], env)


def test_up_serves_both_legs_and_stops_cleanly_on_sigterm() -> None:
    ingress, egress, admin = free_port(), free_port(), free_port()
    with Recorder() as recorder:
        # Options from the environment, as a container would set them; the ingress goes straight to the egress leg.
        env = {
            "EXT_PROC_LISTEN": f"127.0.0.1:{ingress}",
            "EXT_PROC_EGRESS_LISTEN": f"127.0.0.1:{egress}",
            "EXT_PROC_ADMIN_LISTEN": f"127.0.0.1:{admin}",
            "EXT_PROC_LITELLM": f"http://127.0.0.1:{egress}",
            "EXT_PROC_ANTHROPIC": recorder.url,
            "EXT_PROC_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
        }
        up = _up(env=env)
        try:
            assert up.wait_line("ready ") == f"ready ingress=127.0.0.1:{ingress} egress=127.0.0.1:{egress}"
            status, _, _ = send(
                HostPort("127.0.0.1", ingress), "POST", "/v1/messages",
                [("authorization", "Bearer sk-ant-oat01-UP"), ("x-litellm-api-key", "sk-litellm-1")], b"{}",
            )  # fmt: skip
            assert status == 200
            (got,) = recorder.take()
            assert got.get("authorization") == ["Bearer sk-ant-oat01-UP"] and "x-litellm-api-key" not in got.names
        finally:
            up.signal(signal.SIGTERM)
            code = up.stop()
        assert code == 0, up.output
        for port in (ingress, egress, admin):
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open after exit"
        assert "sk-ant-oat01-UP" not in up.output


def test_up_refuses_a_taken_port_clearly() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["up", "--listen", f"127.0.0.1:{port}", "--egress-listen", f"127.0.0.1:{free_port()}"]
        result = subprocess.run([str(BIN / "ext-proc"), *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} (ingress)" in result.stderr


def test_up_says_when_envoy_is_missing() -> None:
    result = subprocess.run(
        [str(BIN / "ext-proc"), "up", "--envoy", "/nonexistent/envoy"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1 and "Envoy not found" in result.stderr


def test_up_rejects_bad_options_before_starting() -> None:
    result = subprocess.run(
        [str(BIN / "ext-proc"), "up", "--litellm", "ftp://x"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "--litellm: expected an http:// or https:// URL" in result.stderr


def test_envoy_config_command_prints_what_deploy_ships() -> None:
    result = subprocess.run([str(BIN / "ext-proc"), "envoy-config"], capture_output=True, text=True, timeout=60, env={})
    assert result.returncode == 0
    assert result.stdout == (Path(__file__).resolve().parent.parent / "deploy" / "envoy.yaml").read_text()
