"""`ext-proc up` started as users start it (its console script), for the tests of `up` and of what it exports."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ext_proc.envoy import HostPort
from tests.support.processes import BIN, Proc, free_port
from tests.support.recorder import Recorder

TOKEN = "egress-test-token-0123456789abcdefghij"
SERVER_KEY = "sk-ant-api03-UPSERVERKEY"


def up_process(*args: str, env: dict[str, str] | None = None) -> Proc:
    return Proc([str(BIN / "ext-proc"), "up", *args], env)


@contextmanager
def running_up(
    tmp_path: Path, recorder: Recorder, *extra: str, litellm: str | None = None, env: dict[str, str] | None = None
) -> Iterator[tuple[Proc, HostPort, HostPort]]:
    """`up` whose ingress goes straight to its egress (a client plays LiteLLM's part), with a token and server key."""
    ingress, egress = free_port(), free_port()
    token, key = tmp_path / "egress-token", tmp_path / "server-key"
    token.write_text(TOKEN + "\n")
    key.write_text(SERVER_KEY + "\n")
    up = up_process(
        "--ingress-listen", f"127.0.0.1:{ingress}", "--egress-listen", f"127.0.0.1:{egress}",
        "--litellm", litellm or f"http://127.0.0.1:{egress}", "--anthropic", recorder.url,
        "--metrics-listen", "off", "--egress-token-file", str(token), "--server-credential-file", str(key), *extra,
        env=env,
    )  # fmt: skip
    try:
        up.ready_line = up.wait_line("ready ")
        yield up, HostPort("127.0.0.1", ingress), HostPort("127.0.0.1", egress)
    finally:
        up.stop()
