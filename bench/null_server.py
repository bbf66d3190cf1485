"""The null ext_proc servers: one prebuilt empty response per message, no rule run.

Variant (f), the transport's floor (what any grpc.aio ext_proc server costs before it decides anything): grpc.aio on
the standard event loop, the bidirectional handler answering every message until Envoy ends the stream. Variant (g),
with ``--shipped``: the same null answer on the transport as ext-proc ships it (uvloop, served client-streaming: the
first message answered, then OK), so g/f is what the transport levers took off the floor and c/g is what the rules
cost on top of it.

Run: python -m bench.null_server [--shipped] unix:/path/to.sock
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from ext_proc.server import process_handler

_EMPTY = pb.ProcessingResponse(request_headers=pb.HeadersResponse())


class NullProcessor(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    async def Process(
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.ProcessingResponse]:
        async for _ in request_iterator:
            yield _EMPTY


async def _first_then_ok(
    _: object, context: grpc.aio.ServicerContext[pb.ProcessingRequest, pb.ProcessingResponse]
) -> pb.ProcessingResponse:
    await context.read()
    return _EMPTY


async def main(address: str, shipped: bool) -> None:
    server = grpc.aio.server()
    if shipped:
        server.add_generic_rpc_handlers((process_handler(_first_then_ok),))
    else:
        pb_grpc.add_ExternalProcessorServicer_to_server(NullProcessor(), server)
    server.add_insecure_port(address)
    await server.start()
    print(f"serving ext_proc on {address}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("--shipped", action="store_true")
    args = parser.parse_args()
    if args.shipped:
        import uvloop

        uvloop.run(main(args.address, shipped=True))
    else:
        asyncio.run(main(args.address, shipped=False))
