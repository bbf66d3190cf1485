"""The grpc.aio transport on its own: conversion both ways, every message type answered, health, lifecycle."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ext_proc.config import Config
from ext_proc.server import Server, _remove_stale_socket
from tests.support.extproc import EGRESS, exchange, headers_message, message_stream, serving


def test_headers_become_a_mutation(tmp_path: Path) -> None:
    message = headers_message(
        (":path", b"/v1/messages"), ("x-api-key", b"sk-ant-api03-K"), ("x-litellm-api-key", b"l"), ("cookie", b"c")
    )
    (response,) = asyncio.run(exchange(tmp_path, [message]))
    mutation = response.request_headers.response.header_mutation
    assert list(mutation.remove_headers) == ["x-litellm-api-key", "cookie"]
    [(option)] = mutation.set_headers
    assert (option.header.key, option.header.raw_value, option.header.value) == ("x-api-key", b"sk-ant-api03-K", "")
    assert option.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def test_each_request_gets_its_own_credential_whatever_was_answered_before(tmp_path: Path) -> None:
    """Mutations are built once per distinct edit and reused; past the bound, they are rebuilt, never mixed up."""
    keys = [f"sk-ant-api03-K{i}".encode() for i in range(1100)]

    async def scenario() -> list[bytes]:
        async with serving(tmp_path) as (_, stub):
            got = []
            for key in [*keys, keys[0], keys[-1], keys[0]]:
                message = headers_message(("x-api-key", key), ("cookie", b"c"))
                (answer,) = [r async for r in stub.Process(message_stream(message), metadata=EGRESS)]
                mutation = answer.request_headers.response.header_mutation
                assert list(mutation.remove_headers) == ["cookie"]
                got.append(b"".join(o.header.raw_value for o in mutation.set_headers))
            return got

    assert asyncio.run(scenario()) == [*keys, keys[0], keys[-1], keys[0]]


def test_value_used_when_raw_value_absent(tmp_path: Path) -> None:
    (response,) = asyncio.run(
        exchange(tmp_path, [headers_message(("authorization", b"Bearer sk-ant-oat01-O"), legacy=True)])
    )
    sets = {o.header.key: o.header.raw_value for o in response.request_headers.response.header_mutation.set_headers}
    assert sets == {"authorization": b"Bearer sk-ant-oat01-O", "anthropic-beta": b"oauth-2025-04-20"}


def _answered(status: bytes, emitted: struct_pb2.Struct | None) -> pb.ProcessingRequest:
    headers = base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=":status", raw_value=status),
                                          base_pb2.HeaderValue(key="retry-after", raw_value=b"12")])  # fmt: skip
    context = base_pb2.Metadata()
    for namespace, value in emitted.fields.items() if emitted is not None else ():
        context.filter_metadata[namespace].CopyFrom(value.struct_value)
    return pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=headers), metadata_context=context)


def test_e9_the_request_filter_marks_a_clients_credential_and_the_answer_filter_acts_on_the_mark(
    tmp_path: Path,
) -> None:
    """The egress's decision emits the mark only for a client's own credential; the answer filter's stream (its
    first message is the response headers) sets retry-after: 0 on a 4xx only when the mark came with it."""
    server_key = tmp_path / "server-key"
    server_key.write_text("sk-ant-api03-OPERATOR\n")

    async def scenario() -> tuple[list[pb.ProcessingResponse], list[pb.ProcessingResponse], float | None]:
        async with serving(tmp_path, server_credential_file=str(server_key)) as (server, stub):
            decided = []
            for credential in ((("x-api-key", b"sk-ant-api03-CLIENT"),), ()):
                message = headers_message(*credential)
                decided += [r async for r in stub.Process(message_stream(message), metadata=EGRESS)]
            answered = []
            marks = [mark, mark, None, unmarked]
            for status, emitted in zip((b"401", b"503", b"401", b"401"), marks, strict=True):
                answered += [r async for r in stub.Process(message_stream(_answered(status, emitted)), metadata=EGRESS)]
            count = server.metrics.registry.get_sample_value("ext_proc_answers_marked_total", {"status": "401"})
            return decided, answered, count

    mark = struct_pb2.Struct()
    mark.get_or_create_struct("ext_proc.credentials")["credential"] = "client"
    unmarked = struct_pb2.Struct()
    unmarked.get_or_create_struct("ext_proc.credentials")["credential"] = "server"
    decided, answered, count = asyncio.run(scenario())
    assert [r.dynamic_metadata for r in decided] == [mark, struct_pb2.Struct()]
    assert [r.HasField("dynamic_metadata") for r in decided] == [True, False]
    sets = [[(o.header.key, o.header.raw_value) for o in r.response_headers.response.header_mutation.set_headers]
            for r in answered]  # fmt: skip
    assert sets == [[("retry-after", b"0"), ("retry-after-ms", b"12000")], [], [], []]
    assert all(r.WhichOneof("response") == "response_headers" for r in answered)
    assert count == 1.0


def test_every_other_message_gets_an_empty_continue_and_ends_the_stream(tmp_path: Path) -> None:
    """Envoy is configured to send only request headers; anything else is answered so the request goes on."""
    messages = [
        pb.ProcessingRequest(response_headers=pb.HttpHeaders()),
        pb.ProcessingRequest(request_body=pb.HttpBody(body=b"x" * 100)),
        pb.ProcessingRequest(response_body=pb.HttpBody(body=b"y", end_of_stream=True)),
        pb.ProcessingRequest(request_trailers=pb.HttpTrailers()),
        pb.ProcessingRequest(response_trailers=pb.HttpTrailers()),
    ]

    async def scenario() -> list[list[pb.ProcessingResponse]]:
        async with serving(tmp_path) as (_, stub):
            # Each sent first on its own stream, followed by request headers that must go unanswered.
            then = headers_message(("x-api-key", b"k"))
            return [[r async for r in stub.Process(message_stream(m, then), metadata=EGRESS)] for m in messages]

    answers = asyncio.run(scenario())
    assert [[r.WhichOneof("response") for r in rs] for rs in answers] == [
        ["response_headers"], ["request_body"], ["response_body"], ["request_trailers"], ["response_trailers"],
    ]  # fmt: skip
    assert all(rs[0].ByteSize() == 2 for rs in answers), "each is an empty continue"


def test_unexpected_messages_are_counted(tmp_path: Path) -> None:
    async def scenario() -> tuple[float | None, float | None, float | None]:
        async with serving(tmp_path) as (server, stub):
            for body in (pb.HttpBody(body=b"x" * 100), pb.HttpBody(body=b"y" * 5)):
                body_first = message_stream(pb.ProcessingRequest(request_body=body))
                [r async for r in stub.Process(body_first, metadata=EGRESS)]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                [r async for r in stub.Process(message_stream(pb.ProcessingRequest()), metadata=EGRESS)]
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        sample = server.metrics.registry.get_sample_value
        return (
            sample("ext_proc_body_bytes_total"),
            sample("ext_proc_unexpected_messages_total", {"type": "request_body"}),
            sample("ext_proc_unexpected_messages_total", {"type": "empty"}),
        )

    assert asyncio.run(scenario()) == (105.0, 2.0, 1.0)


def test_a_stream_closed_before_any_message_is_refused_not_left_open(tmp_path: Path) -> None:
    async def scenario() -> grpc.StatusCode:
        async with serving(tmp_path) as (_, stub):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                [r async for r in stub.Process(message_stream(), metadata=EGRESS, timeout=10)]
            return refused.value.code()

    assert asyncio.run(scenario()) == grpc.StatusCode.INVALID_ARGUMENT


def test_rejection_is_an_immediate_anthropic_error(tmp_path: Path) -> None:
    (response,) = asyncio.run(exchange(tmp_path, [headers_message(("x-credential-handoff", b"v1.forged"))]))
    immediate = response.immediate_response
    assert immediate.status.code == 400
    assert json.loads(immediate.body)["error"]["type"] == "invalid_request_error"
    assert [(h.header.key, h.header.raw_value) for h in immediate.headers.set_headers] == [
        ("content-type", b"application/json")
    ]
    assert immediate.details == "ext_proc_credentials_seal_malformed"


def test_missing_leg_metadata_fails_closed(tmp_path: Path) -> None:
    (response,) = asyncio.run(exchange(tmp_path, [headers_message(("x-api-key", b"sk-ant-api03-K"))], metadata=()))
    assert response.immediate_response.status.code == 500


def test_health_serving_then_not_serving_on_drain(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, int]:
        config = Config.load(
            env={}, overrides={"listen": f"unix:{tmp_path}/h.sock", "metrics_listen": "off", "grace_seconds": 1}
        )
        server = Server(config)
        address = await server.start()
        async with grpc.aio.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            serving = (await stub.Check(health_pb2.HealthCheckRequest())).status
            await server.drain()
            draining = (await stub.Check(health_pb2.HealthCheckRequest())).status
            await server.stop()
        return serving, draining

    serving, draining = asyncio.run(scenario())
    assert serving == health_pb2.HealthCheckResponse.SERVING
    assert draining == health_pb2.HealthCheckResponse.NOT_SERVING


def test_stop_returns_once_everything_the_server_started_has_ended(tmp_path: Path) -> None:
    """The secret-file watcher included: `serve`'s asyncio.Runner would cancel a task left over, but a caller whose
    loop goes on (an embedding, a test) would have a server still reloading files after stop()."""
    credential = tmp_path / "server-key"
    credential.write_text("sk-ant-api03-OPERATOR\n")

    async def scenario() -> tuple[bool, list[asyncio.Task[object]]]:
        async with asyncio.timeout(30):  # a watcher never ended would hold stop() here
            async with serving(tmp_path, server_credential_file=str(credential)) as (server, _):
                watched = server.rules.watched
        return watched, [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]

    assert asyncio.run(scenario()) == (True, [])


def test_stream_ends_once_the_request_headers_are_answered(tmp_path: Path) -> None:
    """Envoy never has to end (cancel) the stream: the server finishes it with OK right after its answer."""

    async def scenario() -> tuple[str | None, grpc.StatusCode]:
        config = Config.load(env={}, overrides={"listen": f"unix:{tmp_path}/e.sock", "metrics_listen": "off"})
        server = Server(config)
        address = await server.start()
        never = asyncio.Event()
        try:
            async with grpc.aio.insecure_channel(address) as channel:

                async def requests() -> AsyncIterator[pb.ProcessingRequest]:
                    yield headers_message(("x-api-key", b"sk-ant-api03-K"))
                    await never.wait()  # the client never half-closes, as Envoy would not before the HTTP stream ends

                call = pb_grpc.ExternalProcessorStub(channel).Process(requests(), metadata=EGRESS)
                first = await call.read()
                rest = await asyncio.wait_for(call.read(), 5)
                code = await call.code()
                return first.WhichOneof("response") if rest is grpc.aio.EOF else "more", code  # type: ignore[attr-defined]
        finally:
            await server.stop()

    assert asyncio.run(scenario()) == ("request_headers", grpc.StatusCode.OK)


@pytest.mark.parametrize(("drain", "answered"), [(1.0, True), (0.0, False)])
def test_after_not_serving_the_server_keeps_answering_for_the_drain_period(
    tmp_path: Path, drain: float, answered: bool
) -> None:
    """A stream Envoy opens once the server reports NOT_SERVING, within drain_seconds, still gets its answer."""

    async def scenario() -> bool:
        async with (
            serving(tmp_path, drain_seconds=drain) as (server, stub),
            grpc.aio.insecure_channel(server.address) as health_channel,
        ):
            watch = health_pb2_grpc.HealthStub(health_channel).Watch(health_pb2.HealthCheckRequest())
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            stopping = asyncio.create_task(server.stop())
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            try:
                call = stub.Process(message_stream(headers_message(("x-api-key", b"sk-ant-api03-LATE"))),
                                    metadata=EGRESS, timeout=5)  # fmt: skip
                answers = [r async for r in call]
            except grpc.aio.AioRpcError:
                answers = []
            await stopping
            return bool(answers) and answers[0].HasField("request_headers")

    assert asyncio.run(scenario()) is answered


def test_a_socket_nobody_listens_on_is_replaced_a_live_one_refused_any_other_file_kept(tmp_path: Path) -> None:
    """What `serve` does with the file at its --listen path (tests/test_up.py runs it as a command): a dead server's
    socket (SIGKILL leaves one) is removed, a live server's is refused with what to do, and a file that is no socket
    is left for bind to refuse."""
    live, dead, other = tmp_path / "live.sock", tmp_path / "dead.sock", tmp_path / "file.sock"
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(live))
        listening.listen()
        with pytest.raises(OSError) as refused:
            _remove_stale_socket(live)
        assert str(refused.value) == (
            f"{live}: another server is listening there; stop it, or give this one another --listen"
        )
        assert live.is_socket()
    with socket.socket(socket.AF_UNIX) as closed:
        closed.bind(str(dead))
    assert dead.is_socket()
    _remove_stale_socket(dead)
    assert not dead.exists()
    other.write_text("not a socket")
    _remove_stale_socket(other)
    assert other.read_text() == "not a socket"
    _remove_stale_socket(tmp_path / "absent.sock")
