"""The grpc.aio transport: Envoy's ext_proc messages in, the rules' decisions out.

It only converts. Leg and policy come from the gRPC metadata Envoy's filter config attaches to each stream
(``grpc_service.initial_metadata``, per listener or per route), never from the request's own headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from ext_proc.audit import AuditLog
from ext_proc.config import Config
from ext_proc.envoy import HostPort
from ext_proc.headers import HeaderView
from ext_proc.metrics import Metrics
from ext_proc.names import ANSWER_CLIENTS, ANSWER_KEY, ANSWER_NAMESPACE, LEG_METADATA, POLICY_METADATA
from ext_proc.reload import LiveRules
from ext_proc.rules import Decision, RuleContext, answer, decide
from ext_proc.secrets import Secrets
from ext_proc.tracing import Tracing

SERVICE = pb.DESCRIPTOR.services_by_name["ExternalProcessor"].full_name
log = logging.getLogger("ext_proc.server")

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
# Prebuilt, never mutated: answering a message we did not ask for costs no allocation.
_CONTINUE = {
    "request_headers": pb.ProcessingResponse(request_headers=pb.HeadersResponse()),
    "response_headers": pb.ProcessingResponse(response_headers=pb.HeadersResponse()),
    "request_body": pb.ProcessingResponse(request_body=pb.BodyResponse()),
    "response_body": pb.ProcessingResponse(response_body=pb.BodyResponse()),
    "request_trailers": pb.ProcessingResponse(request_trailers=pb.TrailersResponse()),
    "response_trailers": pb.ProcessingResponse(response_trailers=pb.TrailersResponse()),
}
_JSON = base_pb2.HeaderValueOption(
    header=base_pb2.HeaderValue(key="content-type", raw_value=b"application/json"), append_action=_OVERWRITE
)
_RESPONSE_CACHE_SIZE = 1024
_ON_CLIENTS_CREDENTIAL = struct_pb2.Struct()
_ON_CLIENTS_CREDENTIAL.get_or_create_struct(ANSWER_NAMESPACE)[ANSWER_KEY] = ANSWER_CLIENTS


def view_of(headers: pb.HttpHeaders) -> HeaderView:
    return HeaderView((h.key, h.raw_value or h.value.encode()) for h in headers.headers.headers)


def response_of(decision: Decision) -> pb.ProcessingResponse:
    rejection = decision.rejection
    if rejection is not None:
        return pb.ProcessingResponse(
            immediate_response=pb.ImmediateResponse(
                status=http_status_pb2.HttpStatus(code=rejection.status),
                headers=pb.HeaderMutation(set_headers=[_JSON]),
                body=rejection.body(),
                details=f"ext_proc_credentials_{rejection.reason}".replace("-", "_"),
            )
        )
    # Tells the answer filter (E9) that this request's answer is about a client's own credential.
    emitted = _ON_CLIENTS_CREDENTIAL if decision.on_clients_credential else None
    if not decision.remove and not decision.set and emitted is None:
        return _CONTINUE["request_headers"]
    mutation = pb.HeaderMutation(set_headers=_sets(decision.set), remove_headers=decision.remove)
    return pb.ProcessingResponse(
        request_headers=pb.HeadersResponse(response=pb.CommonResponse(header_mutation=mutation)),
        dynamic_metadata=emitted,
    )


def _sets(pairs: tuple[tuple[str, bytes], ...]) -> list[base_pb2.HeaderValueOption]:
    return [
        base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, raw_value=v), append_action=_OVERWRITE)
        for k, v in pairs
    ]


def on_clients_credential(request: pb.ProcessingRequest) -> bool:
    """Whether the request filter marked this stream's request as sent on a client's own credential."""
    emitted = request.metadata_context.filter_metadata.get(ANSWER_NAMESPACE)
    return emitted is not None and emitted.fields.get(ANSWER_KEY) == struct_pb2.Value(string_value=ANSWER_CLIENTS)


Process = Callable[
    [object, grpc.aio.ServicerContext[pb.ProcessingRequest, pb.ProcessingResponse]],
    Awaitable[pb.ProcessingResponse],
]


def process_handler(process: Process) -> grpc.GenericRpcHandler[pb.ProcessingRequest, pb.ProcessingResponse]:
    """Envoy's ``Process`` method served client-streaming (see CredentialProcessor), by ``process``."""
    method = grpc.stream_unary_rpc_method_handler(
        process,
        request_deserializer=pb.ProcessingRequest.FromString,
        response_serializer=pb.ProcessingResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(SERVICE, {"Process": method})


class CredentialProcessor:
    """Answers the first message of each ext_proc stream, then ends the stream with OK.

    Only headers carry work, and each filter's stream starts with the ones it asks for: the request filter's with
    the request headers, the egress's answer filter's (E9) with the response headers. ``Process`` is a
    bidirectional stream; it is served as client-streaming (many in, one out), which is the same on the wire, but
    lets grpc.aio send the answer and the status in one write and costs markedly less per call than its
    bidirectional path (docs/performance.md). Ending the stream with the answer also means no server-side state
    for a long SSE response, nothing to wait for on shutdown, and no stream that Envoy has to cancel (grpc.aio
    leaks a little native memory per cancelled streaming RPC, grpc#43360). Envoy sends nothing more on a stream
    the server has ended.
    """

    def __init__(
        self,
        rules: Callable[[], RuleContext],
        audit: AuditLog,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        tracing: Tracing | None = None,
    ) -> None:
        self._rules = rules
        self._audit = audit
        self._metrics = metrics
        self._clock = clock
        self._tracing = tracing
        # A client's requests repeat the same mutation (the same headers to drop, the same credential to write),
        # so each distinct forwarded one is built once. Bounded; it holds credentials only as the process already
        # does, and is never logged.
        self._responses: dict[tuple[tuple[str, ...], tuple[tuple[str, bytes], ...], bool], pb.ProcessingResponse] = {}

    def handler(self) -> grpc.GenericRpcHandler[pb.ProcessingRequest, pb.ProcessingResponse]:
        return process_handler(self.process)

    async def process(
        self, _: object, context: grpc.aio.ServicerContext[pb.ProcessingRequest, pb.ProcessingResponse]
    ) -> pb.ProcessingResponse:
        request = await context.read()
        if not isinstance(request, pb.ProcessingRequest):  # grpc.aio.EOF: closed before any message
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the stream ended before any ProcessingRequest")
        which = request.WhichOneof("request")
        if which == "response_headers":
            return self._answer(request)
        if which != "request_headers":
            self._metrics.unexpected.labels(which or "empty").inc()
            if which is None:
                # Nothing this version knows how to answer; Envoy fails the request closed.
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ProcessingRequest without a known message")
            if which.endswith("_body"):
                self._metrics.body_bytes.inc(len(getattr(request, which).body))
            return _CONTINUE[which]
        leg = policy = ""
        metadata = context.invocation_metadata() or ()
        for key, value in metadata:
            if key == LEG_METADATA:
                leg = str(value)
            elif key == POLICY_METADATA:
                policy = str(value)
        started = time.perf_counter_ns()
        headers = view_of(request.request_headers)
        decision = decide(leg, policy, headers, self._rules(), self._clock())
        elapsed_ns = time.perf_counter_ns() - started
        self._metrics.observe(leg, policy, decision, elapsed_ns * 1e-9)
        if self._tracing is not None:
            # The span lasts what the metric observed: its start is placed that long before the wall clock's now.
            end = time.time_ns()
            self._tracing.record(leg, policy, decision, end - elapsed_ns, end, metadata, headers)
        self._audit.record(decision.audit)
        if decision.rejection is not None:
            return response_of(decision)
        edits = (decision.remove, decision.set, decision.on_clients_credential)
        response = self._responses.get(edits)
        if response is None:
            if len(self._responses) >= _RESPONSE_CACHE_SIZE:
                self._responses.clear()
            response = self._responses[edits] = response_of(decision)
        return response

    def _answer(self, request: pb.ProcessingRequest) -> pb.ProcessingResponse:
        """The answer filter's one message: the upstream's response headers (E9)."""
        if not on_clients_credential(request):
            return _CONTINUE["response_headers"]
        headers = view_of(request.response_headers)
        sets = answer(headers)
        if not sets:
            return _CONTINUE["response_headers"]
        self._metrics.answers_marked.labels(headers.one(":status").decode("ascii")).inc()  # answer(): one 4xx
        mutation = pb.HeaderMutation(set_headers=_sets(sets))
        return pb.ProcessingResponse(
            response_headers=pb.HeadersResponse(response=pb.CommonResponse(header_mutation=mutation))
        )


def _private_socket_dir(path: Path, default: bool) -> Path:  # pragma: no mutate block (the process tests')
    """The socket's real path, in a directory made 0700 when missing.

    The default directory sits in a place other users can write (``/tmp`` when ``XDG_RUNTIME_DIR`` is unset), so
    it is trusted only if nobody else can have made, replaced or redirected it: a real directory (``lstat``: a
    symlink planted there would pass an owner check on its target, and be repointed after it), ours, mode 0700,
    below directories that only root or this user can change (world-writable ones only with the sticky bit).
    """
    if not default:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _remove_stale_socket(path)
        return path
    base = path.parent.parent.resolve()  # a missing one fails at its stat below
    directory = base / path.parent.name
    uid = os.getuid()
    for ancestor in (base, *base.parents):
        st = os.stat(ancestor)
        if st.st_uid not in (0, uid) or (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
            raise OSError(
                f"{ancestor} can be changed by another user (owner uid {st.st_uid}, mode {st.st_mode & 0o7777:o}), "
                f"so the socket directory below it could be replaced: set XDG_RUNTIME_DIR or --listen unix:PATH"
            )
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(
            f"{directory} is not a directory (a symbolic link or file another user may have planted): the server's "
            "answers hold credentials; remove it, or set XDG_RUNTIME_DIR or --listen unix:PATH"
        )
    if st.st_uid != uid or st.st_mode & 0o077:
        raise OSError(
            f"{directory} must belong to this user with mode 0700 (it is mode {st.st_mode & 0o777:o}, uid "
            f"{st.st_uid}): the server's answers hold credentials"
        )
    real = directory / path.name
    _remove_stale_socket(real)
    return real


def _remove_stale_socket(path: Path) -> None:
    """A socket file nobody listens on (what a killed server leaves) is removed; a live server's is refused, since
    unlinking it would cut that server off from Envoy without a word; any other file is left for bind to refuse."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(str(path))
                except ConnectionRefusedError:
                    path.unlink()
                    return
            raise OSError(f"{path}: another server is listening there; stop it, or give this one another --listen")


class Server:  # pragma: no mutate block (lifecycle: the process tests' business, not the decision path)
    """The server's explicit lifecycle: start (SERVING from the moment it listens), serve, drain, stop.

    Owns the gRPC server (ext_proc and health services), the Prometheus endpoint and the secret-file watcher.
    """

    def __init__(self, config: Config, secrets: Secrets | None = None) -> None:
        """``secrets``: as the command read them at start (read from ``config`` when not given)."""
        self.config = config
        self.metrics = Metrics()
        self.rules = LiveRules(config, self.metrics, secrets)
        self._server = grpc.aio.server()
        self._health = HealthServicer()
        self.audit = AuditLog(config.audit_sample_rate, config.log_format)
        self.tracing = Tracing.start(config)
        processor = CredentialProcessor(self.rules, self.audit, self.metrics, tracing=self.tracing)
        self._server.add_generic_rpc_handlers((processor.handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self._watcher: asyncio.Task[None] | None = None
        self.address = ""
        self.metrics_at: HostPort | None = None  # where /metrics is served, with the port the OS gave

    async def start(self) -> str:
        path = self.config.listen_socket
        if path is not None:
            path = _private_socket_dir(path, default=not self.config.listen)
            listen = f"unix:{path}"
        else:
            listen = self.config.listen
            log.warning(
                "listening on TCP %s: any process that can reach it can open an egress stream and read the server "
                "credential and any sealed credential from the answers; prefer unix:PATH",
                listen,
            )
        try:
            port = self._server.add_insecure_port(listen)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {listen}: {exc}") from None
        if path is not None:
            os.chmod(path, 0o600)
        metrics_at = self.config.metrics_address
        if metrics_at is not None:
            try:
                self.metrics_at = replace(metrics_at, port=self.metrics.serve(metrics_at.host, metrics_at.port))
            except OSError as exc:
                raise OSError(f"cannot serve metrics on {self.config.metrics_listen}: {exc.strerror}") from None
        await self._server.start()
        if self.rules.watched:
            self._watcher = asyncio.create_task(self.rules.watch(self.config.reload_interval_seconds))
        # No health to set: grpc_health's servicer reports SERVING from its creation, and the first checker got in
        # with self._server.start() (tests/test_server.py's health test fails if either stops being so).
        self.address = listen if path is not None else f"{listen.rpartition(':')[0]}:{port}"
        return self.address

    async def drain(self) -> None:
        """Report NOT_SERVING (health checkers stop sending new work) while still answering."""
        await self._health.enter_graceful_shutdown()

    async def stop(self, drain_seconds: float | None = None) -> None:
        """Report NOT_SERVING, keep answering for ``drain_seconds``, then refuse new streams, let in-flight ones
        finish within the grace period, and close.

        The drain period is for streams Envoy opened just before the signal: grpc core hands each new call to the
        event loop in turn, and one not yet handed over when the server stops is cancelled (Envoy then fails that
        request closed). Under load that hand-over lags (measured: 1 in 50 runs of the SIGTERM test with both cores
        busy lost its in-flight stream); a moment of serving after NOT_SERVING lets every opened stream in.
        """
        await self.drain()
        await asyncio.sleep(self.config.drain_seconds if drain_seconds is None else drain_seconds)
        await self._server.stop(self.config.grace_seconds)
        if self._watcher is not None:
            self._watcher.cancel()
            # Ended, not only asked to (a caller's loop that goes on has nothing left over); asyncio.wait, as
            # awaiting the task would cancel it with stop() itself and end stop()'s own cancellation there.
            await asyncio.wait((self._watcher,))
        self.audit.flush()
        self.metrics.close()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)

    async def run_until_signalled(self, on_ready: Callable[[str], None]) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        on_ready(await self.start())
        await stop.wait()
        log.info("signal received: draining for up to %.0fs", self.config.grace_seconds)
        await self.stop()
