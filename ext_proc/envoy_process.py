"""Envoy as `ext-proc up`'s child: how it is started, its admin API (a private Unix socket unless the operator asked
for TCP), when it is ready (its own /ready and both listeners accepting) and how it drains before it stops."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import math
import socket
from pathlib import Path

from ext_proc.envoy import HostPort, Layout, log_caps, render
from ext_proc.supervise import answers, die_with_parent, wait_until

log = logging.getLogger("ext_proc.up")
READY_TIMEOUT_SECONDS = 60.0
# Envoy's workers: the one-threaded ext_proc server saturates long before two workers do (docs/performance.md),
# and Envoy's default, one per CPU, only adds idle threads and connections.
ENVOY_WORKERS = 2
ACTIVE_REQUEST_STATS = frozenset({"http.ingress.downstream_rq_active", "http.egress.downstream_rq_active"})


class Admin:
    """Envoy's admin API, over its Unix socket or, when the operator asked for one, TCP."""

    def __init__(self, address: HostPort | str | None, address_file: Path) -> None:
        """``address``: the layout's (a ``unix:PATH`` string, or a HostPort whose port Envoy writes to the file)."""
        self._socket = address.removeprefix("unix:") if isinstance(address, str) else None
        self._address_file = address_file

    def request(self, path: str, method: str = "GET", timeout: float = 2.0) -> tuple[int, str]:
        if self._socket is not None:
            conn: http.client.HTTPConnection = _UnixHTTPConnection(self._socket, timeout)
        else:
            host, _, port = self._address_file.read_text().strip().rpartition(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        try:
            conn.request(method, path)
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


async def start(
    binary: Path, layout: Layout, work: Path, log_level: str, grace: float
) -> tuple[asyncio.subprocess.Process, Admin]:
    """Envoy with ``layout``'s config, written to ``work``, dying with this process; and its admin API.

    Envoy closes its listeners when its drain time ends: rounded up from ``grace``, so that a client connecting at
    any moment of `up`'s drain is still served (with ``Connection: close``)."""
    (work / "envoy.yaml").write_text(render(layout))
    proc = await asyncio.create_subprocess_exec(
        str(binary), "-c", str(work / "envoy.yaml"), "--log-level", log_level, *log_caps(),
        "--admin-address-path", str(work / "admin"), "--disable-hot-restart", "--concurrency", str(ENVOY_WORKERS),
        "--drain-time-s", str(math.ceil(grace)), "--drain-strategy", "immediate",
        preexec_fn=die_with_parent,
    )  # fmt: skip
    return proc, Admin(layout.admin, work / "admin")


async def wait_ready(envoy: asyncio.subprocess.Process, admin: Admin, layout: Layout, stopping: asyncio.Event) -> None:
    await wait_until(lambda: _ready(admin, layout), envoy, "Envoy", READY_TIMEOUT_SECONDS, stopping, 0.05)


def _ready(admin: Admin, layout: Layout) -> bool:
    """Envoy's own readiness, then each listener accepting a connection."""
    try:
        if admin.request("/ready", timeout=1)[0] != 200:
            return False
        return all(answers(at) for at in (layout.ingress, layout.egress))
    except (OSError, ValueError):
        return False


async def drain(envoy: asyncio.subprocess.Process, admin: Admin, grace: float) -> None:
    """Envoy's graceful drain (every answer, new connections' too, says ``Connection: close``), then wait until no
    request is active on either leg (or the grace runs out).

    A terminal's Ctrl-C (any signal sent to the process group) reaches Envoy too, which then stops at once and
    cannot be drained; a service manager signals only this process.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    try:
        await asyncio.to_thread(admin.request, "/drain_listeners?graceful", "POST")
        while loop.time() < deadline:
            _, text = await asyncio.to_thread(admin.request, "/stats?format=json&type=Gauges")
            active = sum(s["value"] for s in json.loads(text)["stats"] if s["name"] in ACTIVE_REQUEST_STATS)
            if active == 0:
                return
            await asyncio.sleep(0.05)
        log.warning("grace period over with requests still active on Envoy")
    except (OSError, ValueError, KeyError) as exc:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(envoy.wait(), 2)
        if envoy.returncode is not None:
            log.info("Envoy received the signal too and stopped without draining")
        else:
            log.warning("could not drain Envoy through its admin endpoint: %s", exc)
