"""The ext_proc filter's own settings, held against a processor that asks for more than ours ever does.

Our server never asks for a change Envoy refuses, never asks for a body and ends each stream after its first
answer, so through it these settings change nothing. They are what holds when a processor does (a version with a
bug, or another process on the socket): a refused header change fails the request (`disallow_is_error`), the
filters send headers only whatever the processor asks (`processing_mode`, `allow_mode_override`), and a pause
shorter than `message_timeout` costs latency, not the request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from grpc_health.v1 import health, health_pb2_grpc

from ext_proc.envoy import Endpoint, HostPort, Layout
from ext_proc.server import SERVICE
from tests.support.http import send
from tests.support.processes import Envoy, free_port, start_envoy
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


Handler = Callable[[Iterator[pb.ProcessingRequest], grpc.ServicerContext], Iterator[pb.ProcessingResponse]]


@contextmanager
def _egress(tmp_path: Path, handler: Handler, recorder: Recorder) -> Iterator[tuple[HostPort, Envoy]]:
    """The shipped egress leg's Envoy, with ``handler`` as its ext_proc server (and a health service, as ours)."""
    method = grpc.stream_stream_rpc_method_handler(
        handler,
        request_deserializer=pb.ProcessingRequest.FromString,
        response_serializer=pb.ProcessingResponse.SerializeToString,
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Process": method}),))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    socket_path = tmp_path / "processor.sock"
    server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    try:
        egress = HostPort("127.0.0.1", free_port())
        layout = Layout(
            ingress=HostPort("127.0.0.1", free_port()), egress=egress, litellm=Endpoint("http", "127.0.0.1", 1),
            anthropic=Endpoint.parse(recorder.url, "stand-in"), server_address=f"unix:{socket_path}",
            admin=HostPort("127.0.0.1", 0),
        )  # fmt: skip
        envoy = start_envoy(layout, tmp_path)
        try:
            yield egress, envoy
        finally:
            envoy.stop()
    finally:
        server.stop(0)


def test_a_header_change_envoy_refuses_fails_the_request(tmp_path: Path) -> None:
    """Without ``disallow_is_error`` Envoy would drop the refused change and forward the request as it came, a
    LiteLLM key and all."""
    with Recorder() as recorder, _egress(tmp_path, _refused_change, recorder) as (egress, _):
        status, body, _ = send(egress, "POST", "/v1/messages", [("x-litellm-api-key", "sk-litellm-REFUSED")], b"{}")
        assert recorder.take() == [], "nothing forwarded, neither as it came nor half-changed"
    assert status == 503 and b'"type":"error"' in body


_EVERYTHING = processing_mode_pb2.ProcessingMode(
    response_header_mode=processing_mode_pb2.ProcessingMode.SEND,
    request_body_mode=processing_mode_pb2.ProcessingMode.STREAMED,
    response_body_mode=processing_mode_pb2.ProcessingMode.STREAMED,
    request_trailer_mode=processing_mode_pb2.ProcessingMode.SEND,
    response_trailer_mode=processing_mode_pb2.ProcessingMode.SEND,
)


def _continue(
    request: pb.ProcessingRequest, mode: processing_mode_pb2.ProcessingMode | None = None
) -> pb.ProcessingResponse:
    """The answer that lets a message of any kind go on unchanged (with ``mode`` as its mode_override)."""
    which = request.WhichOneof("request")
    empty = pb.HeadersResponse() if which.endswith("headers") else (
        pb.BodyResponse() if which.endswith("body") else pb.TrailersResponse())  # fmt: skip
    return pb.ProcessingResponse(**{which: empty}, mode_override=mode)


def _asks_for_everything(
    requests: Iterator[pb.ProcessingRequest], _: grpc.ServicerContext
) -> Iterator[pb.ProcessingResponse]:
    """Keeps its stream open, answers each message unchanged, and asks in its first answer for every other
    message there is (``mode_override``)."""
    for request in requests:
        yield _continue(request, _EVERYTHING)


def test_the_filters_send_headers_only_whatever_the_processor_asks(tmp_path: Path) -> None:
    """The request filter sends the request headers, the answer filter (on a 4xx) the response headers, and
    nothing else, bodies included, even to a processor that keeps its stream open and asks for more."""
    with Recorder() as recorder, _egress(tmp_path, _asks_for_everything, recorder) as (egress, envoy):
        recorder.fail_next(429)
        before = envoy.stats()
        status, body, _ = send(
            egress, "POST", "/v1/messages", [("x-api-key", "sk-ant-api03-K")], b'{"a":' + b"1" * 9000 + b"}"
        )
        after = envoy.stats()
        (got,) = recorder.take()
    assert status == 429 and json.loads(body)["type"] == "error" and got.get("x-api-key") == ["sk-ant-api03-K"]
    for filter_ in ("ext_proc", "ext_proc.answer"):
        for stat in ("streams_started", "stream_msgs_sent"):
            name = f"http.egress.{filter_}.{stat}"
            assert after.get(name, 0) - before.get(name, 0) == 1, name


def _pauses(seconds: float) -> Handler:
    """Answers each stream's first message (the request's headers, or a 4xx answer's) after ``seconds``."""

    def handler(requests: Iterator[pb.ProcessingRequest], _: grpc.ServicerContext) -> Iterator[pb.ProcessingResponse]:
        for request in requests:
            time.sleep(seconds)  # the pause under test (a GC pause, a busy CPU), not a wait for something
            yield _continue(request)
            return

    return handler


@pytest.mark.parametrize(("pause", "expected"), [(0.4, 429), (1.6, 504)])
def test_a_pause_shorter_than_the_message_timeout_costs_latency_not_the_request(
    tmp_path: Path, pause: float, expected: int
) -> None:
    """The shipped message timeout is 1 s, on both filters: a processor that answers in 0.4 s is waited for (the
    request, and Anthropic's 429 on the way back); one that takes 1.6 s fails the request closed (504, nothing
    forwarded), as the frozen server of test_faults does."""
    with Recorder() as recorder, _egress(tmp_path, _pauses(pause), recorder) as (egress, envoy):
        recorder.fail_next(429)
        started = time.monotonic()
        status, _, _ = send(egress, "POST", "/v1/messages", [("x-api-key", "sk-ant-api03-K")], b"{}")
        took = time.monotonic() - started
        forwarded = recorder.take()
        stats = envoy.stats()
    assert status == expected and len(forwarded) == (status != 504)
    assert stats.get("http.egress.ext_proc.message_timeouts", 0) == (status == 504)
    assert stats.get("http.egress.ext_proc.answer.streams_started", 0) == (status != 504)
    assert stats.get("http.egress.ext_proc.answer.message_timeouts", 0) == 0
    # Envoy's timer and this clock differ by a few ms; the 429 waited for both pauses.
    assert took >= 0.9 * (min(pause, 1.0) if status == 504 else 2 * pause)


def _fails_on_the_answer(
    requests: Iterator[pb.ProcessingRequest], context: grpc.ServicerContext
) -> Iterator[pb.ProcessingResponse]:
    for request in requests:
        if request.WhichOneof("request") == "response_headers":
            context.abort(grpc.StatusCode.UNAVAILABLE, "down between the request and its answer")
        yield _continue(request)
        return


def test_the_answer_filter_fails_open_the_upstream_answer_goes_back_as_it_came(tmp_path: Path) -> None:
    """All the answer filter can add is ``retry-after: 0``, never a credential; failing closed would turn
    Anthropic's 4xx into a 503 that LiteLLM's router cools the shared deployment down on."""
    with Recorder() as recorder, _egress(tmp_path, _fails_on_the_answer, recorder) as (egress, envoy):
        recorder.fail_next(429)
        status, body, response = send(egress, "POST", "/v1/messages", [("x-api-key", "sk-ant-api03-K")], b"{}")
        stats = envoy.stats()
    assert status == 429 and json.loads(body)["error"]["type"] == "rate_limit_error"
    assert response.getheader("retry-after") is None
    assert stats["http.egress.ext_proc.answer.failure_mode_allowed"] == 1
