"""Shared fixtures: the gateway (real Envoy + the ext-proc server + a recording Anthropic stand-in)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ext_proc.envoy import HostPort, Layout, Upstream
from tests.support.processes import Envoy, Proc, free_port, start_envoy, start_server
from tests.support.recorder import Recorder

SEAL_KEY = base64.urlsafe_b64encode(bytes(range(100, 132))).decode()


@dataclass
class Gateway:
    recorder: Recorder
    server: Proc
    envoy: Envoy
    layout: Layout

    @property
    def ingress(self) -> HostPort:
        return self.layout.ingress

    @property
    def egress(self) -> HostPort:
        return self.layout.egress


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Client -> ingress listener -> egress listener -> recorder: both legs, with nothing in between."""
    work = tmp_path_factory.mktemp("gateway")
    keys = work / "seal-keys"
    keys.write_text(SEAL_KEY + "\n")
    with Recorder() as recorder:
        socket_path = work / "ext-proc.sock"
        server = start_server(socket_path, {"EXT_PROC_LOG_LEVEL": "INFO"}, "--seal-key-file", str(keys))
        egress = HostPort("127.0.0.1", free_port())
        layout = Layout(
            ingress=HostPort("127.0.0.1", free_port()),
            egress=egress,
            litellm=Upstream("http", "127.0.0.1", egress.port),
            anthropic=Upstream.parse(recorder.url, "stand-in"),
            ext_proc=f"unix:{socket_path}",
            admin=HostPort("127.0.0.1", 0),
        )
        envoy = start_envoy(layout, work)
        try:
            yield Gateway(recorder, server, envoy, layout)
        finally:
            envoy.stop()
            server.stop()
