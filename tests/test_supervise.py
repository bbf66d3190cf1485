"""supervise.py's pieces on real processes and sockets: who holds a port, when a listener answers, how a child is
waited for and stopped, how its output is relayed. `up` itself (tests/test_up.py) reaches them only on its happy
paths: a child that ignores SIGTERM, a port held on IPv6 beside other listeners, a wildcard listener are here."""

from __future__ import annotations

import asyncio
import http.server
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ext_proc import supervise
from ext_proc.envoy import HostPort
from ext_proc.supervise import UpError, answers, port_holder, prefixed, stop, wait_until
from tests.support.processes import has_ipv6_loopback

DOCS = Path(__file__).resolve().parent.parent / "docs"


IPV6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="this machine has no IPv6 loopback")

# A child that listens on HOST (an ephemeral port), says the port, and lives until its stdin closes.
_LISTENER = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family)
s.bind((sys.argv[1], 0))
s.listen()
print(s.getsockname()[1], flush=True)
sys.stdin.read()
"""


@contextmanager
def _listener(host: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    child = subprocess.Popen(
        [sys.executable, "-c", _LISTENER, host], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        yield child, int(child.stdout.readline())
    finally:
        child.kill()
        child.wait()


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


@pytest.mark.parametrize("host", ["127.0.0.1", pytest.param("::1", marks=IPV6)])
def test_port_holder_names_the_process_listening_on_that_port_not_another_listener(host: str) -> None:
    with _listener(host) as (other, _), _listener(host) as (holder, port):
        assert other.pid < holder.pid  # the other is met first in /proc: only the port can tell them apart
        assert port_holder(port) == f"pid {holder.pid} ({_comm(holder.pid)})"
    assert port_holder(port) is None


def test_a_taken_port_is_refused_naming_its_holder_and_port_zero_is_always_free() -> None:
    with _listener("127.0.0.1") as (holder, port):
        with pytest.raises(UpError) as refused:
            supervise.ensure_free(HostPort("127.0.0.1", port), "ingress")
        held = f"held by pid {holder.pid} ({_comm(holder.pid)})"
        assert str(refused.value) == f"cannot listen on 127.0.0.1:{port} (ingress): Address already in use; {held}"
    supervise.ensure_free(HostPort("127.0.0.1", 0), "metrics")  # the kernel picks a port: nothing to check


@pytest.mark.parametrize("listen", ["0.0.0.0", pytest.param("::", marks=IPV6)])
def test_a_wildcard_listener_answers_at_its_loopback(listen: str) -> None:
    with socket.socket(socket.AF_INET6 if ":" in listen else socket.AF_INET) as server:
        if ":" in listen:
            server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as Envoy listens on `::`
        server.bind((listen, 0))
        server.listen()
        port = server.getsockname()[1]
        assert answers(HostPort(listen, port))
    assert not answers(HostPort(listen, port))


_SLEEPS = "import signal, time\nprint('ready', flush=True)\ntime.sleep(60)"
_IGNORES_SIGTERM = _SLEEPS.replace("\nprint", "\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint")


async def _child(code: str) -> asyncio.subprocess.Process:
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE)
    assert child.stdout is not None
    assert await child.stdout.readline() == b"ready\n"
    return child


def test_stop_sends_sigterm_and_waits_for_the_child() -> None:
    async def scenario() -> int | None:
        child = await _child(_SLEEPS)
        await asyncio.wait_for(stop(child), 10)
        return child.returncode

    assert asyncio.run(scenario()) == -signal.SIGTERM


def test_stop_kills_a_child_that_ignores_sigterm_after_stop_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervise, "STOP_SECONDS", 0.5)

    async def scenario() -> tuple[int | None, float]:
        child = await _child(_IGNORES_SIGTERM)
        began = asyncio.get_running_loop().time()
        await asyncio.wait_for(stop(child), 10)
        return child.returncode, asyncio.get_running_loop().time() - began

    code, took = asyncio.run(scenario())
    assert code == -signal.SIGKILL and took >= 0.5


def test_the_docs_give_the_time_a_child_has_between_sigterm_and_sigkill() -> None:
    """docs/operations.md, Shutdown: what an operator sizes terminationGracePeriodSeconds and service timeouts by."""
    text = " ".join((DOCS / "operations.md").read_text().split())
    assert f"if it is still running after {supervise.STOP_SECONDS:.0f} s, SIGKILL" in text
    assert supervise.STOP_SECONDS.is_integer()


def test_wait_until_asks_once_per_poll_and_names_the_child_when_the_time_runs_out() -> None:
    asked = 0

    def ready() -> bool:
        nonlocal asked
        asked += 1
        return False

    async def scenario() -> None:
        child = await _child(_SLEEPS)
        try:
            await wait_until(ready, child, "Thing", 1.0, asyncio.Event(), 0.25)
        finally:
            child.kill()
            await child.wait()

    with pytest.raises(UpError, match=r"^Thing was not ready after 1s$"):
        asyncio.run(scenario())
    assert 2 <= asked <= 8, f"asked {asked} times in 1 s at one poll per 0.25 s"


def test_wait_until_reports_a_child_that_exits_and_returns_once_ready_or_stopping() -> None:
    async def exits() -> None:
        child = await asyncio.create_subprocess_exec(sys.executable, "-c", "raise SystemExit(3)")
        await child.wait()
        await wait_until(lambda: False, child, "Thing", 10, asyncio.Event(), 0.05)

    with pytest.raises(UpError, match=re.escape("Thing exited during start-up with status 3 (see its log above)")):
        asyncio.run(exits())

    async def stopped_while_waiting() -> float:
        child = await _child(_SLEEPS)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, stopping.set)
        began = loop.time()
        try:
            await wait_until(lambda: False, child, "Thing", 30, stopping, 20)
        finally:
            child.kill()
            await child.wait()
        return loop.time() - began

    assert asyncio.run(stopped_while_waiting()) < 5, "a signal during start-up is not held up by the poll"


def test_a_child_s_output_is_relayed_line_by_line_with_its_prefix_undecodable_bytes_shown(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def scenario() -> None:
        code = "import sys; sys.stdout.buffer.write(b'one\\n\\xff two\\n')"
        child = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE)
        await asyncio.wait_for(prefixed(child, "thing | "), 10)
        await child.wait()

    asyncio.run(scenario())
    assert capsys.readouterr().err == "thing | one\nthing | \\xff two\n"


@pytest.mark.parametrize(("status", "ok"), [(200, True), (204, False), (503, False)])
def test_http_ok_is_a_200_and_nothing_else(status: int, ok: bool) -> None:
    """LiteLLM's liveliness: up waits for a 200; a 503 (still starting) or another success is not it."""

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/health/liveliness"
        assert supervise.http_ok(url) is ok
        server.shutdown()
    assert supervise.http_ok(url) is False, "nothing listening"


def _workdir(parent: Path, pid: int | str) -> Path:
    made = parent / f"{supervise.WORKDIR_PREFIX}{pid}"
    made.mkdir(mode=0o700)
    (made / "pid").write_text(f"{pid}\n")
    return made


def test_only_a_dead_run_s_own_private_directory_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/operations.md: a SIGKILLed `up` leaves its private directory (the derived LiteLLM config may be in it);
    the next start removes it, and nothing else: not a running `up`'s, not another user's, not a look-alike."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    left = _workdir(tmp_path, dead.pid)
    # A running `up`'s: this very process, which a signal other than 0 (asked whether it runs) would end.
    running = _workdir(tmp_path, os.getpid())
    others = _workdir(tmp_path, "other-user") if os.geteuid() == 0 else None  # root plays another user
    if others is not None:
        (others / "pid").write_text(f"{dead.pid}\n")
        os.chown(others, 65534, 65534)
    unreadable = _workdir(tmp_path, "no-pid")
    (unreadable / "pid").unlink()
    garbled = _workdir(tmp_path, "garbled")
    (garbled / "pid").write_text("not a pid\n")
    linked = tmp_path / f"{supervise.WORKDIR_PREFIX}link"
    linked.symlink_to(left)
    plain = tmp_path / f"{supervise.WORKDIR_PREFIX}file"
    plain.write_text(f"{dead.pid}\n")
    caplog.set_level(logging.INFO, logger="ext_proc.up")
    hangup = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # a runner under nohup ignores it: here it would end us
    try:
        supervise.remove_stale_workdirs(logging.getLogger("ext_proc.up"))
    finally:
        signal.signal(signal.SIGHUP, hangup)
    assert not left.exists()
    assert [r.getMessage() for r in caplog.records] == [
        f"removed {left}, left by an earlier run (pid {dead.pid}) that was killed"
    ]
    assert all(p.exists() for p in (running, unreadable, garbled, plain)) and linked.is_symlink()
    assert others is None or others.exists()


@pytest.mark.skipif(shutil.which("chattr") is None or os.geteuid() != 0, reason="needs chattr and root")
def test_a_stale_directory_that_cannot_be_removed_is_reported_and_the_start_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What another `up` removing the same directory at the same moment would cause: a warning saying so, never
    an exception that stops this start, never "removed" for what is still there."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    stuck = _workdir(tmp_path, dead.pid)
    pinned = stuck / "envoy.yaml"
    pinned.write_text("")
    if subprocess.run(["chattr", "+i", str(pinned)], capture_output=True).returncode != 0:
        pytest.skip("this file system has no immutable flag")
    try:
        caplog.set_level(logging.INFO, logger="ext_proc.up")
        supervise.remove_stale_workdirs(logging.getLogger("ext_proc.up"))
    finally:
        subprocess.run(["chattr", "-i", str(pinned)], check=True)
    ((level, message),) = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert level == "WARNING" and stuck.exists()
    assert message.startswith(f"could not remove {stuck}, left by an earlier run (pid {dead.pid}): ")
    assert "Operation not permitted" in message
