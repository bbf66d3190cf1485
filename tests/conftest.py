"""Shared fixtures: both legs (real Envoy + the ext-proc server + a recording Anthropic stand-in)."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from ext_proc.envoy import Endpoint, HostPort, Layout
from tests.support.processes import SEAL_KEY, STARTED, Envoy, Proc, free_port, start_envoy, start_server
from tests.support.recorder import Recorder

# Secret files are refused when others may read them (secrets.check_secret_mode); every file a test writes is
# private, as a careful operator's would be. Tests of the refusal set their modes themselves.
os.umask(0o077)

# Any fake credential the tests use, in any of the forms they use it.
CREDENTIAL_SHAPED = re.compile(
    r"sk-(?:ant-(?:api|oat)\d\d-|litellm-|master-)\w+|LOADSECRET|session=abc|egress-(?:test-)?[A-Za-z0-9_-]{30,}"
    r"|VIRTUALKEY"
)


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_output() -> Iterator[None]:
    """After the whole run: no credential value in anything the ext-proc server, `ext-proc up` or Envoy printed."""
    yield
    ours = [p for p in STARTED if Path(p.args[0]).name in ("ext-proc", "envoy")]
    leaks = sorted({m.group(0) for p in ours for m in CREDENTIAL_SHAPED.finditer(p.output)})
    assert not leaks, f"credential values in process output: {leaks}"


@dataclass
class Legs:
    recorder: Recorder
    server: Proc
    envoy: Envoy
    layout: Layout
    socket_path: Path
    server_args: tuple[str, ...]

    def restart_server(self) -> None:
        """A new server process on the same socket, as a supervisor would start one."""
        keys = self.socket_path.parent / "seal-keys"
        self.server = start_server(
            self.socket_path, {"EXT_PROC_LOG_LEVEL": "INFO"}, "--seal-key-file", str(keys), *self.server_args
        )

    @property
    def ingress(self) -> HostPort:
        return self.layout.ingress

    @property
    def egress(self) -> HostPort:
        return self.layout.egress


@contextmanager
def running_legs(work: Path, recorder: Recorder, *server_args: str, tracing: HostPort | None = None) -> Iterator[Legs]:
    """Client -> ingress listener -> egress listener -> recorder: both legs, with nothing in between; Envoy's spans to
    ``tracing`` when given."""
    keys = work / "seal-keys"
    keys.write_text(SEAL_KEY + "\n")
    socket_path = work / "ext-proc.sock"
    server = start_server(socket_path, {"EXT_PROC_LOG_LEVEL": "INFO"}, "--seal-key-file", str(keys), *server_args)
    egress = HostPort("127.0.0.1", free_port())
    layout = Layout(
        ingress=HostPort("127.0.0.1", free_port()),
        egress=egress,
        litellm=Endpoint("http", "127.0.0.1", egress.port),
        anthropic=Endpoint.parse(recorder.url, "stand-in"),
        server_address=f"unix:{socket_path}",
        admin=HostPort("127.0.0.1", 0),
        tracing=tracing,
    )
    envoy = start_envoy(layout, work)
    legs = Legs(recorder, server, envoy, layout, socket_path, server_args)
    try:
        yield legs
    finally:
        envoy.stop()
        legs.server.stop()


@pytest.fixture(scope="module")
def legs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Legs]:
    with Recorder() as recorder, running_legs(tmp_path_factory.mktemp("legs"), recorder) as gw:
        yield gw


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The property tests' share of examples that reached the seal and the credential choice (test_properties.py)."""
    properties = sys.modules.get("tests.test_properties")
    shares = getattr(properties, "SHARES", {})
    if shares:
        terminalreporter.section("property tests: examples that reached the seal and the credential choice")
        for name, counts in shares.items():
            share = counts["reached"] / counts["examples"] if counts["examples"] else 0.0
            terminalreporter.write_line(f"{name}: {counts['reached']} of {counts['examples']} ({share:.0%})")
