"""Envoy's ext_proc filter fails closed on its own: a header change it refuses fails the request.

The server never asks for such a change; this checks the filter settings every form ships
(`mutation_rules.disallow_is_error`), with an ext_proc server that asks for one: without the setting Envoy would
drop the refused change and forward the request as it came, a LiteLLM key and all.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ext_proc.envoy import Endpoint, HostPort, Layout
from ext_proc.server import SERVICE
from tests.support.http import send
from tests.support.processes import free_port, start_envoy
from tests.support.recorder import Recorder


def _refused_change(
    requests: Iterator[pb.ProcessingRequest], _: grpc.ServicerContext
) -> Iterator[pb.ProcessingResponse]:
    """Answers every request's headers by rewriting :authority, which Envoy's default mutation rules refuse."""
    for _request in requests:
        option = base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=":authority", raw_value=b"elsewhere"))
        mutation = pb.HeaderMutation(set_headers=[option], remove_headers=["x-litellm-api-key"])
        yield pb.ProcessingResponse(
            request_headers=pb.HeadersResponse(response=pb.CommonResponse(header_mutation=mutation))
        )
        return


def test_a_header_change_envoy_refuses_fails_the_request(tmp_path: Path) -> None:
    handler = grpc.stream_stream_rpc_method_handler(
        _refused_change,
        request_deserializer=pb.ProcessingRequest.FromString,
        response_serializer=pb.ProcessingResponse.SerializeToString,
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Process": handler}),))
    socket_path = tmp_path / "refusing.sock"
    server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    try:
        with Recorder() as recorder:
            egress = HostPort("127.0.0.1", free_port())
            layout = Layout(
                ingress=HostPort("127.0.0.1", free_port()), egress=egress, litellm=Endpoint("http", "127.0.0.1", 1),
                anthropic=Endpoint.parse(recorder.url, "stand-in"), server_address=f"unix:{socket_path}",
                admin=HostPort("127.0.0.1", 0),
            )  # fmt: skip
            envoy = start_envoy(layout, tmp_path)
            try:
                status, body, _ = send(egress, "POST", "/v1/messages", [("x-litellm-api-key", "sk-litellm-REFUSED")],
                                       b"{}")  # fmt: skip
            finally:
                envoy.stop()
            assert recorder.take() == [], "nothing forwarded, neither as it came nor half-changed"
    finally:
        server.stop(0)
    assert status >= 500 and b'"type":"error"' in body
