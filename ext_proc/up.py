"""``ext-proc up``: the ext_proc server and Envoy run together as one gateway, started and stopped as one.

The server runs in this process on a private Unix socket; Envoy (envoy_process.py) and, with ``--litellm-config``,
LiteLLM (litellm.py) are children that die with this process, however it ends (supervise.py). Envoy's admin API is
a Unix socket in the same private directory (0700) unless ``--admin-listen`` asks for TCP. Ready means both legs
accept connections; the ready line says whether LiteLLM answers, and a change in that is logged while running. On
SIGTERM/SIGINT Envoy drains first (its listeners stop taking new work while requests in flight, which still need
the egress leg and this server, finish, up to ``grace_seconds``), then LiteLLM and Envoy stop, then the server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import tempfile
from dataclasses import replace
from pathlib import Path

from ext_proc import envoy_process, litellm
from ext_proc.config import Config
from ext_proc.envoy import HostPort, Layout, find_envoy
from ext_proc.secrets import Secrets
from ext_proc.server import Server
from ext_proc.supervise import WORKDIR_PREFIX, UpError, answers, ensure_free, remove_stale_workdirs, stop

log = logging.getLogger("ext_proc.up")


async def run(
    config: Config, secrets: Secrets, layout: Layout, envoy_log_level: str = "warning", envoy: str | None = None,
    litellm_config: Path | None = None,
) -> int:  # fmt: skip
    envoy_bin = find_envoy(envoy)
    plan = litellm.Plan.of(litellm_config, layout, config, secrets) if litellm_config is not None else None
    if plan is not None:
        config, secrets = plan.applied(config, secrets)
    _ensure_ports_free(layout, plan is not None)
    remove_stale_workdirs(log)
    # From here on a signal is ours to handle, also during start-up: what is started by then is stopped, exit 0.
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stopping.set)
    with tempfile.TemporaryDirectory(prefix=WORKDIR_PREFIX) as workdir:  # 0700: the server's and admin sockets
        work = Path(workdir)
        (work / "pid").write_text(f"{os.getpid()}\n")
        socket_path = f"unix:{work / 'ext-proc.sock'}"
        layout = replace(layout, server_address=socket_path, admin=layout.admin or f"unix:{work / 'envoy-admin.sock'}")
        server = Server(replace(config, listen=socket_path), secrets)
        await server.start()
        if server.metrics_at is not None:
            log.info("metrics on http://%s/metrics", server.metrics_at)
        proc, admin = await envoy_process.start(envoy_bin, layout, work, envoy_log_level, config.grace_seconds)
        watcher: asyncio.Task[None] | None = None
        child: asyncio.subprocess.Process | None = None
        try:
            await envoy_process.wait_ready(proc, admin, layout, stopping)
            if plan is not None and not stopping.is_set():
                child = await plan.start(work, layout, stopping)
            if stopping.is_set():
                return 0
            up = await asyncio.to_thread(answers, layout.litellm.address)
            _print_ready(layout, up, config, plan)
            watcher = asyncio.create_task(litellm.watch(layout, up))
            await _until_stopped_or_dead(stopping, {"Envoy": proc, **({"LiteLLM": child} if child else {})})
            log.info("signal received: draining Envoy for up to %.0fs", config.grace_seconds)
            await envoy_process.drain(proc, admin, config.grace_seconds)
            return 0
        finally:
            if watcher is not None:
                watcher.cancel()
            if child is not None:
                await stop(child)
            await stop(proc)
            await server.stop(drain_seconds=0)  # Envoy, its only client, has stopped


def _ensure_ports_free(layout: Layout, runs_litellm: bool) -> None:
    """Every address this run will listen on is free, or the run stops now, naming who holds it."""
    places = [(layout.ingress, "ingress"), (layout.egress, "egress"), (layout.admin, "Envoy admin"),
              (layout.probe, "probe")]  # fmt: skip
    if runs_litellm:
        places.append((layout.litellm.address, "LiteLLM"))
    for at, what in places:
        if isinstance(at, HostPort):
            ensure_free(at, what)
    if layout.admin is not None:
        log.warning(
            "Envoy's admin API listens on %s: any process that can reach it can stop Envoy or raise its log level "
            "(which prints credentials); leave --admin-listen unset for a private Unix socket",
            layout.admin,
        )


def _print_ready(layout: Layout, up: bool, config: Config, plan: litellm.Plan | None) -> None:
    state = f"{'up' if up else 'down'} ({layout.litellm.address})"
    print(f"ready ingress={layout.ingress} egress={layout.egress} litellm={state}", flush=True)
    if plan is not None:
        plan.print_client_setup(layout)
    elif config.egress_token_file is not None:
        token = f'ANTHROPIC_API_KEY="$(cat {config.egress_token_file})"'
        base = f"http://{layout.egress.reached_at}"
        print(f"litellm: send the egress token as the Anthropic key: {token} and api_key: "
              f"os.environ/ANTHROPIC_API_KEY; ANTHROPIC_API_BASE={base}", flush=True)  # fmt: skip


async def _until_stopped_or_dead(stopping: asyncio.Event, children: dict[str, asyncio.subprocess.Process]) -> None:
    """Back on a signal; a child that exits first is an error."""
    waiting = {name: asyncio.create_task(child.wait()) for name, child in children.items()}
    signalled = asyncio.create_task(stopping.wait())
    await asyncio.wait([signalled, *waiting.values()], return_when=asyncio.FIRST_COMPLETED)
    for task in (signalled, *waiting.values()):
        task.cancel()
    for name, task in waiting.items():
        if task.done() and not task.cancelled():
            raise UpError(f"{name} exited unexpectedly with status {task.result()}")
