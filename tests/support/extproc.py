"""The ext_proc server in-process, for transport tests: a started server, a stub, and messages as Envoy sends them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from ext_proc.config import Config
from ext_proc.server import Server
from tests.support.processes import SEAL_KEY

EGRESS = (("x-ext-proc-leg", "egress"), ("x-ext-proc-policy", "anthropic"))


def headers_message(*pairs: tuple[str, bytes], legacy: bool = False) -> pb.ProcessingRequest:
    values = [
        base_pb2.HeaderValue(key=k, value=v.decode()) if legacy else base_pb2.HeaderValue(key=k, raw_value=v)
        for k, v in pairs
    ]
    return pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=values)))


@asynccontextmanager
async def serving(tmp_path: Path, **overrides: Any) -> AsyncIterator[tuple[Server, pb_grpc.ExternalProcessorStub]]:
    """A started server (seal key SEAL_KEY, no metrics port) and a stub connected to it.

    No drain period unless a test asks for one: stopping is not what these tests are about, and a second per test
    was most of the unit suite's time (the drain has its own test).
    """
    config = Config.load(
        env={"EXT_PROC_SEAL_KEYS": SEAL_KEY},
        overrides={"listen": f"unix:{tmp_path}/s.sock", "metrics_listen": "off", "grace_seconds": 1,
                   "drain_seconds": 0, **overrides},
    )  # fmt: skip
    server = Server(config)
    address = await server.start()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            yield server, pb_grpc.ExternalProcessorStub(channel)
    finally:
        await server.stop()


async def exchange(
    tmp_path: Path, messages: Sequence[pb.ProcessingRequest], metadata: Sequence[tuple[str, str]] = EGRESS
) -> list[pb.ProcessingResponse]:
    async with serving(tmp_path) as (_, stub):
        return [r async for r in stub.Process(message_stream(*messages), metadata=metadata)]


async def message_stream(*messages: pb.ProcessingRequest) -> AsyncIterator[pb.ProcessingRequest]:
    for m in messages:
        yield m
