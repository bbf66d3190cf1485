"""Real processes for tests: the ext-proc server (its console script) and Envoy, each waited for by readiness."""

from __future__ import annotations

import base64
import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ext_proc.envoy import Layout, find_envoy, render
from ext_proc.supervise import die_with_parent
from tests.support.http import get_text

BIN = Path(sys.executable).parent
# The seal key of the servers the tests start (urlsafe base64, as seal_key_file holds it).
SEAL_KEY = base64.urlsafe_b64encode(bytes(range(100, 132))).decode()
STARTUP_SECONDS = 30.0
# Every process the suite started, so its whole output can be searched for leaked secrets at the end.
STARTED: list[Proc] = []


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports handed out in this run. A server binds its port seconds later (LiteLLM takes ~10 s to start), and a child
# that outlives its test may bind late too: a port is never handed out twice, so no later test can be given it.
_HANDED_OUT: set[int] = set()


def bare_env(**variables: str) -> dict[str, str]:
    """An environment of only ``variables`` for a command under test, keeping PYTHONPATH when it is set: the second
    mutation step points it at the mutated copy, which the command must run too, not the checkout the package is
    installed from (scripts/mutate_constants.py)."""
    kept = {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}
    return {**kept, **variables}


def has_ipv6_loopback() -> bool:
    """Whether ::1 can be bound here (containers may run without IPv6): the IPv6 tests skip, saying why, where not."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def free_port() -> int:
    """A free port below the ephemeral range, so outgoing connections cannot take it before a server binds it."""
    top = min(_ephemeral_floor(), 32768)
    for _ in range(200):
        port = random.randrange(15000, top)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise OSError("no free port found")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = STARTUP_SECONDS) -> None:
    """Poll a readiness condition until it holds (never a fixed sleep standing in for it)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


@dataclass
class Proc:
    """A child process whose output lines are collected, so tests can wait on them and grep them."""

    args: Sequence[str]
    env: Mapping[str, str] | None = None
    unset: Sequence[str] = ()
    cwd: Path | None = None
    lines: list[str] = field(default_factory=list)
    ready_line: str = ""

    def __post_init__(self) -> None:
        # Without PYTHONUNBUFFERED (set on some machines): a child's stdout on a pipe is block-buffered, as under an
        # operator's log collector, so a line printed without a flush would not reach a test waiting for it.
        base = {k: v for k, v in os.environ.items() if k not in (*self.unset, "PYTHONUNBUFFERED")}
        self._popen = subprocess.Popen(
            list(self.args),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**base, **(self.env or {})},
            cwd=self.cwd,
            text=True,
            errors="backslashreplace",
            # A test run killed outright (mutation testing's CPU limit, a kill -9) leaves no server or Envoy behind.
            preexec_fn=die_with_parent,
        )
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        STARTED.append(self)

    def _pump(self) -> None:
        assert self._popen.stdout is not None
        for line in self._popen.stdout:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def wait_line(self, prefix: str, timeout: float = STARTUP_SECONDS) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no line starting {prefix!r} from {self.args[0]}:\n{self.output}") from None
            if line is None:
                raise RuntimeError(f"{self.args[0]} exited ({self._popen.wait()}):\n{self.output}")
            if line.startswith(prefix):
                return line.strip()

    @property
    def metrics_url(self) -> str:
        """From a `serve` ready line: where its /metrics is."""
        return "http://" + self.ready_line.rsplit("metrics=", 1)[1] + "/metrics"

    def metrics_value(self, name: str) -> float | None:
        for line in get_text(self.metrics_url).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def pid(self) -> int:
        return self._popen.pid

    def poll(self) -> int | None:
        return self._popen.poll()

    def wait(self, timeout: float) -> int:
        """Its exit status, once it exits by itself."""
        return self._popen.wait(timeout)

    def signal(self, sig: int) -> None:
        if self._popen.poll() is None:
            self._popen.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            return self._popen.wait()


def start_server(socket_path: Path, env: Mapping[str, str] | None = None, *extra: str) -> Proc:
    """`ext-proc serve` on a Unix socket; its metrics port is picked by the OS and read from the ready line."""
    args = ["serve", "--listen", f"unix:{socket_path}", "--metrics-listen", "127.0.0.1:0", *extra]
    proc = Proc([str(BIN / "ext-proc"), *args], env)
    proc.ready_line = proc.wait_line("serving ext_proc on")
    return proc


@dataclass
class Envoy:
    proc: Proc
    admin: str

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://{self.admin}/stats?format=json&filter=ext_proc") as response:
            doc = json.load(response)
        return {s["name"]: s["value"] for s in doc["stats"] if "value" in s}

    def stop(self) -> int:
        return self.proc.stop()


def start_envoy(
    layout: Layout | None,
    workdir: Path,
    document: dict[str, Any] | None = None,
    name: str = "envoy",
    log_level: str = "warning",
) -> Envoy:
    """Envoy (one worker) with the generated config for `layout`, or with `document` as given (its admin port must
    be 0); `name` keeps several Envoys' files apart in one directory."""
    config = workdir / f"{name}.yaml"
    config.write_text(yaml.safe_dump(document) if document is not None else render(layout or Layout()))
    admin_file = workdir / f"{name}.admin-address"
    proc = Proc(
        [str(find_envoy()), "-c", str(config), "--concurrency", "1", "--log-level", log_level,
         "--admin-address-path", str(admin_file), "--disable-hot-restart"]
    )  # fmt: skip
    wait_for(
        lambda: (admin_file.exists() and admin_file.read_text().strip() != "") or proc.poll() is not None, "envoy admin"
    )
    if proc.poll() is not None:
        raise RuntimeError(f"envoy {name} exited:\n{proc.output}")
    admin = admin_file.read_text().strip()

    wait_for(lambda: answers_ok(f"http://{admin}/ready", 1), f"envoy {name} /ready")
    return Envoy(proc, admin)


def answers_ok(url: str, timeout: float = 2) -> bool:
    """Whether a GET of ``url`` answers 200 now (a readiness or liveness endpoint); False on any connection error."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (local test URLs)
            return bool(response.status == 200)
    except OSError:
        return False
