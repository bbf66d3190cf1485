"""Variant (f)'s server: answers every ext_proc message with one prebuilt empty response.

This is the floor: what Envoy's ext_proc client plus grpc.aio cost before any rule runs.
Run: python -m bench.null_server unix:/path/to.sock
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

_EMPTY = pb.ProcessingResponse(request_headers=pb.HeadersResponse())


class NullProcessor(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    async def Process(
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.ProcessingResponse]:
        async for _ in request_iterator:
            yield _EMPTY


async def main(address: str) -> None:
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(NullProcessor(), server)
    server.add_insecure_port(address)
    await server.start()
    print(f"serving ext_proc on {address}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
