"""`ext-proc up`'s children: started so that they die with it, waited for, stopped in order; ports checked first.

Nothing here knows Envoy or LiteLLM: envoy_process.py and litellm.py say what to start and what ready means.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ext_proc.envoy import HostPort

_PR_SET_PDEATHSIG = 1
STOP_SECONDS = 20.0
WORKDIR_PREFIX = "ext-proc-up-"


class UpError(RuntimeError):
    """A reason `ext-proc up` cannot run or keep running, worded for the operator."""


def ensure_free(at: HostPort, what: str) -> None:
    """Fail at start, naming the process that holds the port, rather than let a child fail later."""
    with socket.socket(socket.AF_INET6 if ":" in at.host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, True)
        try:
            probe.bind((at.host, at.port))
        except OSError as exc:
            holder = port_holder(at.port)
            held = f"; held by {holder}" if holder else ""
            raise UpError(f"cannot listen on {at} ({what}): {exc.strerror}{held}") from None


def port_holder(port: int) -> str | None:
    """The process listening on a TCP port, as ``pid N (name)``, from /proc; None where it cannot be seen."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()  # sl local_address(HEX_IP:HEX_PORT) rem_address st ... inode
                if fields[3] == "0A" and int(fields[1].partition(":")[2], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    for pid in (p for p in os.listdir("/proc") if p.isdigit()) if inodes else ():
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    name = Path(f"/proc/{pid}/comm").read_text().strip()
                    return f"pid {pid} ({name})"
    return None


def die_with_parent() -> None:
    """In the child, before exec: SIGTERM when `ext-proc up` dies, even by SIGKILL (Linux prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


async def wait_until(
    ready: Callable[[], bool], child: asyncio.subprocess.Process, name: str, within: float,
    stopping: asyncio.Event, poll: float,
) -> None:  # fmt: skip
    """``ready()`` (run in a thread) true, or the child's death or the time running out reported; back early once
    ``stopping`` is set."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not stopping.is_set():
        if child.returncode is not None:
            raise UpError(f"{name} exited during start-up with status {child.returncode} (see its log above)")
        if await asyncio.to_thread(ready):
            return
        if loop.time() > deadline:
            raise UpError(f"{name} was not ready after {within:.0f}s")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), poll)


async def stop(child: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL if it is still there after STOP_SECONDS."""
    if child.returncode is None:
        child.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(child.wait(), STOP_SECONDS)
        except TimeoutError:
            child.kill()
            await child.wait()


async def prefixed(child: asyncio.subprocess.Process, prefix: str) -> None:
    """A child's output on our stderr, each line marked with where it came from (stderr is line-buffered)."""
    assert child.stdout is not None
    async for line in child.stdout:
        sys.stderr.write(prefix + line.decode(errors="backslashreplace"))


def answers(at: HostPort) -> bool:
    """Something accepts TCP connections there (a wildcard listener: at its loopback)."""
    try:
        with socket.create_connection((at.reached_at.host, at.port), timeout=1):
            return True
    except OSError:
        return False


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (our own loopback child)
            return bool(response.status == 200)
    except OSError:
        return False


def remove_stale_workdirs(log: logging.Logger) -> None:
    """Private directories of earlier runs that ended without cleaning up (SIGKILL): removed at the next start.

    Only real directories of this user's, named as ours, holding the pid of a process that no longer exists. One
    that cannot be removed (another `up` starting at the same moment got there first) is reported, not fatal.
    """
    uid = os.getuid()
    for candidate in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        try:
            st = candidate.lstat()
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
                continue
            pid = int((candidate / "pid").read_text().strip())
        except (OSError, ValueError):
            continue
        try:
            os.kill(pid, 0)  # signal 0: only asks whether it runs
        except ProcessLookupError:
            try:
                shutil.rmtree(candidate)
            except OSError as exc:
                log.warning("could not remove %s, left by an earlier run (pid %d): %s", candidate, pid, exc)
            else:
                log.info("removed %s, left by an earlier run (pid %d) that was killed", candidate, pid)
        except PermissionError:
            continue
