"""``ext-proc up``: the ext_proc server and Envoy run together as one gateway, started and stopped as one.

The server runs in this process on a private Unix socket; Envoy is a child process that dies with this process,
however it ends (its parent-death signal is SIGTERM). Envoy's admin API is a Unix socket in the same private
directory (0700) unless ``--admin-listen`` asks for TCP. Ready means both legs accept connections; the ready line
says whether LiteLLM answers, and a change in that is logged while running. On SIGTERM/SIGINT Envoy drains first
(its listeners stop taking new work while requests in flight, which still need the egress leg and this server,
finish, up to ``grace_seconds``), then Envoy stops, then the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from ext_proc import litellm as litellm_child
from ext_proc.config import LITELLM_KEY_MIN, Config, ConfigError, new_egress_token
from ext_proc.envoy import HostPort, Layout, find_envoy, log_caps, render
from ext_proc.litellm_config import asks_for_key, attempts, key_header
from ext_proc.litellm_config import check_text as check_litellm
from ext_proc.server import Server

log = logging.getLogger("ext_proc.up")
READY_TIMEOUT_SECONDS = 60.0
LITELLM_CHECK_SECONDS = 5.0
LITELLM_START_SECONDS = 180.0
_PR_SET_PDEATHSIG = 1
ACTIVE_REQUEST_STATS = frozenset({"http.ingress.downstream_rq_active", "http.egress.downstream_rq_active"})


class GatewayError(RuntimeError):
    """A reason the gateway cannot run, worded for the operator."""


def ensure_free(at: HostPort, what: str) -> None:
    """Fail at start, naming the process that holds the port, rather than let Envoy fail later."""
    if at.port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in at.host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((at.host, at.port))
        except OSError as exc:
            holder = port_holder(at.port)
            held = f"; held by {holder}" if holder else ""
            raise GatewayError(f"cannot listen on {at} ({what}): {exc.strerror}{held}") from None


def port_holder(port: int) -> str | None:
    """The process listening on a TCP port, as ``pid N (name)``, from /proc; None where it cannot be seen."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    for pid in (p for p in os.listdir("/proc") if p.isdigit()) if inodes else ():
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    name = Path(f"/proc/{pid}/comm").read_text().strip()
                    return f"pid {pid} ({name})"
    return None


def default_egress_token_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ext-proc" / "egress-token"


def egress_token_file(path: Path | None = None) -> Path:
    """`up`'s egress token (the default place unless ``path``), kept across runs so LiteLLM's configuration stays
    valid; made (0600, in a 0700 directory if it has to make one) on first use."""
    path = path or default_egress_token_path()
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(new_egress_token() + "\n")
        log.info("generated the egress token in %s", path)
    return path


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when `ext-proc up` dies, even by SIGKILL (Linux prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# Envoy's workers: the one-threaded ext_proc server saturates long before two workers do (docs/performance.md),
# and Envoy's default, one per CPU, only adds idle threads and connections.
ENVOY_WORKERS = 2
WORKDIR_PREFIX = "ext-proc-up-"


async def run(
    config: Config,
    layout: Layout,
    envoy_log_level: str = "warning",
    envoy: str | None = None,
    litellm_config: Path | None = None,
) -> int:
    envoy_bin = find_envoy(envoy)
    litellm = _LiteLLMPlan.of(litellm_config, layout, config) if litellm_config is not None else None
    if litellm is not None:
        config = litellm.applied(config)
    places = [(layout.ingress, "ingress"), (layout.egress, "egress"), (layout.admin, "Envoy admin"),
              (layout.probe, "probe")]  # fmt: skip
    if litellm is not None:
        places.append((HostPort(layout.litellm.host, layout.litellm.port), "LiteLLM"))
    for at, what in places:
        if isinstance(at, HostPort):
            ensure_free(at, what)
    _remove_stale_workdirs()
    # Private to this user (0700): the server's socket and Envoy's admin socket live here.
    with tempfile.TemporaryDirectory(prefix=WORKDIR_PREFIX) as workdir:
        work = Path(workdir)
        (work / "pid").write_text(f"{os.getpid()}\n")
        socket_path = f"unix:{work / 'ext-proc.sock'}"
        if layout.admin is None:
            layout = replace(layout, admin=f"unix:{work / 'envoy-admin.sock'}")
        else:
            log.warning(
                "Envoy's admin API listens on %s: any process that can reach it can stop Envoy or raise its log "
                "level (which prints credentials); leave --admin-listen unset for a private Unix socket",
                layout.admin,
            )
        if litellm is not None and litellm.attempts.calls > config.seal_max_opens:
            # Every call LiteLLM makes for a request (retries, fallbacks) opens its handoff once (rule S1).
            log.info("%s: seal_max_opens %d", litellm.attempts, litellm.attempts.calls)
            config = replace(config, seal_max_opens=litellm.attempts.calls)
        server = Server(replace(config, listen=socket_path))
        await server.start()
        if server.metrics_port is not None and config.metrics_address is not None:
            log.info("metrics on http://%s:%d/metrics", config.metrics_address[0], server.metrics_port)
        layout = replace(layout, ext_proc=socket_path)
        (work / "envoy.yaml").write_text(render(layout))
        admin = Admin(str(layout.admin), work / "admin")
        proc = await asyncio.create_subprocess_exec(
            str(envoy_bin), "-c", str(work / "envoy.yaml"), "--log-level", envoy_log_level, *log_caps(),
            "--admin-address-path", str(work / "admin"), "--disable-hot-restart", "--concurrency", str(ENVOY_WORKERS),
            "--drain-time-s", str(max(1, int(config.grace_seconds))), "--drain-strategy", "immediate",
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        watcher: asyncio.Task[None] | None = None
        child: asyncio.subprocess.Process | None = None
        try:
            await _wait_ready(proc, admin, layout, stop)
            if litellm is not None and not stop.is_set():
                child = await litellm.start(work, layout)
                await _wait_litellm(child, layout, stop)
            if stop.is_set():
                return 0
            answers = await asyncio.to_thread(_answers, layout.litellm.host, layout.litellm.port)
            print(
                f"ready ingress={layout.ingress} egress={layout.egress} "
                f"litellm={'up' if answers else 'down'} ({layout.litellm.host}:{layout.litellm.port})",
                flush=True,
            )
            if child is not None and litellm is not None:
                _print_client_setup(layout, litellm.source)
            elif config.egress_token_file is not None:
                print(
                    f"litellm: send the egress token as the Anthropic key: ANTHROPIC_API_KEY="
                    f'"$(cat {config.egress_token_file})" and api_key: os.environ/ANTHROPIC_API_KEY; '
                    f"ANTHROPIC_API_BASE=http://{layout.egress}",
                    flush=True,
                )
            watcher = asyncio.create_task(_watch_litellm(layout, answers))
            waiting = {
                "Envoy": asyncio.create_task(proc.wait()),
                "stop": asyncio.create_task(stop.wait()),
                **({"LiteLLM": asyncio.create_task(child.wait())} if child is not None else {}),
            }
            await asyncio.wait(waiting.values(), return_when=asyncio.FIRST_COMPLETED)
            for name, task in waiting.items():
                if name != "stop" and task.done():
                    raise GatewayError(f"{name} exited unexpectedly with status {task.result()}")
            for task in waiting.values():
                task.cancel()
            log.info("signal received: draining Envoy for up to %.0fs", config.grace_seconds)
            await _drain_envoy(proc, admin, config.grace_seconds)
            return 0
        finally:
            if watcher is not None:
                watcher.cancel()
            if child is not None:
                await _stop(child)
            await _stop(proc)
            await server.stop(drain_seconds=0)  # Envoy, its only client, has stopped


def _remove_stale_workdirs() -> None:
    """Private directories of earlier runs that ended without cleaning up (SIGKILL): removed at the next start.

    Only real directories of this user's, named as ours, holding the pid of a process that no longer exists.
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
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(candidate, ignore_errors=True)
            log.info("removed %s, left by an earlier run (pid %d) that was killed", candidate, pid)
        except PermissionError:
            continue


class _LiteLLMPlan:
    """What `up --litellm-config` runs: the user's config (read now, so a bad one fails before anything starts)."""

    def __init__(self, source: dict[str, Any], derived: str, env: dict[str, str], binary: Path, path: Path) -> None:
        self.source = source
        self.derived = derived
        self.env = env
        self.binary = binary
        self.path = path
        self.output: asyncio.Task[None] | None = None
        self.attempts = attempts(source)
        master = env.get(litellm_child.MASTER_KEY_ENV)
        # Known by value when long enough to search for without false matches (shorter ones are loopback-only).
        self.master_key = master if master and len(master) >= LITELLM_KEY_MIN else None
        self.requires_key = asks_for_key(source, env)
        self.key_header = key_header(source)

    def applied(self, config: Config) -> Config:
        """The server's settings that follow from this LiteLLM: its master key known by value (rule E7), whether
        it asks callers for a key and the header it reads one from besides the usual ones (rule I8)."""
        config = replace(config, litellm_requires_key=self.requires_key)
        if self.master_key:
            config = replace(config, litellm_keys=(*config.litellm_keys, self.master_key))
        if self.key_header and self.key_header not in config.all_litellm_headers:
            config = replace(config, litellm_headers=(*config.litellm_headers, self.key_header))
        try:
            return config.validated()
        except ConfigError as exc:
            raise GatewayError(f"the LiteLLM config {self.path}: {exc}") from None

    @classmethod
    def of(cls, path: Path, layout: Layout, config: Config) -> _LiteLLMPlan:
        if layout.litellm.scheme != "http":
            raise GatewayError("--litellm-config runs LiteLLM on --litellm, which must be an http:// address here")
        binary = litellm_child.find_litellm()
        token = config.load_egress_token()
        if token is None:
            raise GatewayError("--litellm-config needs an egress token (egress_token_file)")
        source = litellm_child.load(path)
        derived = yaml.safe_dump(litellm_child.derive(source, str(layout.egress)), sort_keys=False)
        findings = check_litellm(derived, token, config.anthropic_prefix, {"ANTHROPIC_API_KEY": token.decode()})
        for finding in findings:
            log.warning("LiteLLM config %s: %s", path, finding)
        if any(f.error for f in findings):
            raise GatewayError(f"the LiteLLM config {path} breaks a guarantee (see above)")
        loopback = layout.ingress.host in ("127.0.0.1", "::1", "localhost")
        env = litellm_child.environment(source, token.decode(), str(layout.egress), loopback)
        return cls(source, derived, env, binary, path)

    async def start(self, work: Path, layout: Layout) -> asyncio.subprocess.Process:
        derived = work / "litellm.yaml"
        fd = os.open(derived, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.derived)
        child = await asyncio.create_subprocess_exec(
            str(self.binary), "--config", str(derived),
            "--host", layout.litellm.host, "--port", str(layout.litellm.port),
            env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        self.output = asyncio.create_task(_prefixed(child, "litellm | "))
        log.info("LiteLLM started from %s (pid %d)", self.path, child.pid)
        return child


async def _prefixed(child: asyncio.subprocess.Process, prefix: str) -> None:
    """A child's output on our stderr, each line marked with where it came from."""
    assert child.stdout is not None
    async for line in child.stdout:
        sys.stderr.write(prefix + line.decode(errors="backslashreplace"))
        sys.stderr.flush()


async def _wait_litellm(child: asyncio.subprocess.Process, layout: Layout, stop: asyncio.Event) -> None:
    """LiteLLM's liveliness endpoint answering 200, or its death reported."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LITELLM_START_SECONDS
    url = f"http://{layout.litellm.host}:{layout.litellm.port}/health/liveliness"
    while not stop.is_set():
        if child.returncode is not None:
            raise GatewayError(f"LiteLLM exited during start-up with status {child.returncode} (see its log above)")
        if await asyncio.to_thread(_http_ok, url):
            return
        if loop.time() > deadline:
            raise GatewayError(f"LiteLLM was not ready after {LITELLM_START_SECONDS:.0f}s")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (our own loopback child)
            return bool(response.status == 200)
    except OSError:
        return False


def _print_client_setup(layout: Layout, source: dict[str, Any]) -> None:
    """The two lines a Claude Code user needs (a master key as the shell holds it, never its value)."""
    host = "127.0.0.1" if layout.ingress.host in ("0.0.0.0", "::") else layout.ingress.host
    if (source.get("general_settings") or {}).get("master_key") != f"os.environ/{litellm_child.MASTER_KEY_ENV}":
        key = "<your LiteLLM key>"
    elif os.environ.get(litellm_child.MASTER_KEY_ENV):
        key = f"${litellm_child.MASTER_KEY_ENV}"
    else:
        key = litellm_child.DEV_MASTER_KEY
    print(f"export ANTHROPIC_BASE_URL=http://{host}:{layout.ingress.port}", flush=True)
    print(f'export ANTHROPIC_CUSTOM_HEADERS="x-litellm-api-key: {key}"', flush=True)


class Admin:
    """Envoy's admin API, over its Unix socket or, when the operator asked for one, TCP."""

    def __init__(self, address: str, address_file: Path) -> None:
        self._socket = address.removeprefix("unix:") if address.startswith("unix:") else None
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


async def _wait_ready(envoy: asyncio.subprocess.Process, admin: Admin, layout: Layout, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT_SECONDS
    while not stop.is_set():
        if envoy.returncode is not None:
            raise GatewayError(f"Envoy exited during start-up with status {envoy.returncode} (see its log above)")
        if await asyncio.to_thread(_ready, admin, layout):
            return
        if loop.time() > deadline:
            raise GatewayError(f"Envoy was not ready after {READY_TIMEOUT_SECONDS:.0f}s")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


def _ready(admin: Admin, layout: Layout) -> bool:
    """Envoy's own readiness, then each listener accepting a connection."""
    try:
        if admin.request("/ready", timeout=1)[0] != 200:
            return False
        for at in (layout.ingress, layout.egress):
            if not _answers(at.host, at.port):
                return False
    except (OSError, ValueError):
        return False
    return True


def _answers(host: str, port: int) -> bool:
    """Something accepts TCP connections there."""
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


async def _watch_litellm(layout: Layout, up: bool) -> None:
    """Log each change in whether LiteLLM accepts connections: the ingress leg's 503s then name it too."""
    answered = up
    while True:
        await asyncio.sleep(LITELLM_CHECK_SECONDS)
        now = await asyncio.to_thread(_answers, layout.litellm.host, layout.litellm.port)
        if now != up:
            up = now
            where = f"{layout.litellm.host}:{layout.litellm.port}"
            if up:
                log.info("LiteLLM at %s answers%s", where, " again" if answered else "")
                answered = True
            else:
                log.warning("LiteLLM at %s does not answer: the ingress leg answers 503 until it does", where)


async def _drain_envoy(envoy: asyncio.subprocess.Process, admin: Admin, grace: float) -> None:
    """Stop taking new connections, then wait until no request is active on either leg (or the grace runs out).

    A terminal's Ctrl-C (any signal sent to the process group) reaches Envoy too, which then stops at once and
    cannot be drained; a service manager signals only this process.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    try:
        await asyncio.to_thread(admin.request, "/drain_listeners?graceful", "POST")
        while loop.time() < deadline:
            _, text = await asyncio.to_thread(admin.request, "/stats?format=json&filter=downstream_rq_active")
            stats = json.loads(text)
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


async def _stop(child: asyncio.subprocess.Process) -> None:
    if child.returncode is None:
        child.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(child.wait(), 20)
        except TimeoutError:
            child.kill()
            await child.wait()
