"""``ext-proc up``: the ext_proc server and Envoy run together as one gateway, started and stopped as one.

The server runs in this process on a private Unix socket; Envoy is a child process. Ready means both legs accept
connections. On SIGTERM/SIGINT Envoy drains first (its listeners stop taking new work while requests in flight,
which still need the egress leg and this server, finish, up to ``grace_seconds``), then Envoy stops, then the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import tempfile
import urllib.request
from dataclasses import replace
from pathlib import Path

from ext_proc.config import Config
from ext_proc.envoy import HostPort, Layout, find_envoy, render
from ext_proc.server import Server

log = logging.getLogger("ext_proc.gateway")
READY_TIMEOUT_SECONDS = 60.0
ACTIVE_REQUEST_STATS = frozenset({"http.ingress.downstream_rq_active", "http.egress.downstream_rq_active"})


class GatewayError(RuntimeError):
    """A reason the gateway cannot run, worded for the operator."""


def ensure_free(at: HostPort, what: str) -> None:
    if at.port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in at.host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((at.host, at.port))
        except OSError as exc:
            raise GatewayError(f"cannot listen on {at} ({what}): {exc.strerror}") from None


async def run(config: Config, layout: Layout, envoy_log_level: str = "warning", envoy: str | None = None) -> int:
    envoy_bin = find_envoy(envoy)
    for at, what in ((layout.ingress, "ingress"), (layout.egress, "egress"), (layout.admin, "Envoy admin")):
        ensure_free(at, what)
    with tempfile.TemporaryDirectory(prefix="ext-proc-") as workdir:
        work = Path(workdir)
        socket_path = f"unix:{work / 'ext-proc.sock'}"
        server = Server(replace(config, listen=socket_path))
        await server.start()
        if server.metrics_port is not None and config.metrics_address is not None:
            log.info("metrics on http://%s:%d/metrics", config.metrics_address[0], server.metrics_port)
        layout = replace(layout, ext_proc=socket_path)
        (work / "envoy.yaml").write_text(render(layout))
        proc = await asyncio.create_subprocess_exec(
            str(envoy_bin), "-c", str(work / "envoy.yaml"), "--log-level", envoy_log_level,
            "--admin-address-path", str(work / "admin"), "--disable-hot-restart",
            "--drain-time-s", str(max(1, int(config.grace_seconds))), "--drain-strategy", "immediate",
        )  # fmt: skip
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await _wait_ready(proc, work / "admin", layout, stop)
            if stop.is_set():
                return 0
            print(f"ready ingress={layout.ingress} egress={layout.egress}", flush=True)
            exited = asyncio.create_task(proc.wait())
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({exited, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if exited.done():
                raise GatewayError(f"Envoy exited unexpectedly with status {exited.result()}")
            stopped.cancel()
            exited.cancel()
            log.info("signal received: draining Envoy for up to %.0fs", config.grace_seconds)
            await _drain_envoy(proc, (work / "admin").read_text().strip(), config.grace_seconds)
            return 0
        finally:
            await _stop_envoy(proc)
            await server.stop()


async def _wait_ready(envoy: asyncio.subprocess.Process, admin_file: Path, layout: Layout, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT_SECONDS
    while not stop.is_set():
        if envoy.returncode is not None:
            raise GatewayError(f"Envoy exited during start-up with status {envoy.returncode} (see its log above)")
        if await asyncio.to_thread(_ready, admin_file, layout):
            return
        if loop.time() > deadline:
            raise GatewayError(f"Envoy was not ready after {READY_TIMEOUT_SECONDS:.0f}s")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


def _ready(admin_file: Path, layout: Layout) -> bool:
    """Envoy's own readiness, then each listener accepting a connection."""
    try:
        admin = admin_file.read_text().strip()
        if not admin:
            return False
        with urllib.request.urlopen(f"http://{admin}/ready", timeout=1) as response:
            if response.status != 200:
                return False
        for at in (layout.ingress, layout.egress):
            host = "127.0.0.1" if at.host in ("0.0.0.0", "::") else at.host
            with socket.create_connection((host, at.port), timeout=1):
                pass
    except OSError:
        return False
    return True


async def _drain_envoy(envoy: asyncio.subprocess.Process, admin: str, grace: float) -> None:
    """Stop taking new connections, then wait until no request is active on either leg (or the grace runs out).

    A terminal's Ctrl-C (any signal sent to the process group) reaches Envoy too, which then stops at once and
    cannot be drained; a service manager signals only this process.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    try:
        await asyncio.to_thread(_admin, admin, "/drain_listeners?graceful", "POST")
        while loop.time() < deadline:
            stats = json.loads(await asyncio.to_thread(_admin, admin, "/stats?format=json&filter=downstream_rq_active"))
            active = sum(s.get("value", 0) for s in stats["stats"] if s["name"] in ACTIVE_REQUEST_STATS)
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


def _admin(admin: str, path: str, method: str = "GET") -> str:
    request = urllib.request.Request(f"http://{admin}{path}", method=method)
    with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310
        return str(response.read().decode())


async def _stop_envoy(envoy: asyncio.subprocess.Process) -> None:
    if envoy.returncode is None:
        envoy.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(envoy.wait(), 20)
        except TimeoutError:
            envoy.kill()
            await envoy.wait()
