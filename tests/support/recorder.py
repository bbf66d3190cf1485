"""The one stand-in: a local "Anthropic" that records exactly what reached it and answers like Anthropic.

Every request is recorded (method, path, headers in wire order, body length) before it is answered, so a test
that has its response also has the record. Answers:
- ``POST .../count_tokens``: ``{"input_tokens": 7}``;
- a JSON body with ``"stream": true``: an Anthropic SSE message stream;
- ``GET [/anthropic]/bytes/N``: N bytes of SSE, chunked, the same bytes every time (``expected_stream(N)``);
- anything else: a minimal Anthropic message.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHUNK = 64 * 1024


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def get(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]

    @property
    def names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}


def sse_chunks(total: int) -> Iterator[bytes]:
    line = b"event: content_block_delta\ndata: " + b"x" * 1000 + b"\n\n"
    block = (line * (CHUNK // len(line) + 1))[:CHUNK]
    sent = 0
    while sent < total:
        piece = block[: min(CHUNK, total - sent)]
        sent += len(piece)
        yield piece


def expected_stream(total: int) -> str:
    digest = hashlib.sha256()
    for piece in sse_chunks(total):
        digest.update(piece)
    return digest.hexdigest()


MESSAGE = {
    "id": "msg_stand_in",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [{"type": "text", "text": "ok"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 7, "output_tokens": 1},
}


def message_events(model: str) -> list[tuple[str, dict[str, Any]]]:
    text = {"type": "text", "text": ""}
    delta = {"type": "text_delta", "text": "ok"}
    start = {
        **MESSAGE,
        "model": model,
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": 7, "output_tokens": 0},
    }
    return [
        ("message_start", {"type": "message_start", "message": start}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": text}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 1}}),
        ("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}  # fmt: skip


class Recorder:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[Received] = []
        # Cleared by a test to hold every answer (after recording the request) until it is set again.
        self.gate = threading.Event()
        self.gate.set()
        # Statuses the next requests are answered with, in Anthropic's error shape (``fail_next``).
        self._failures: list[int] = []
        # Credentials Anthropic refuses, whatever the request (``refuse``): value -> status, response headers.
        self._refused: dict[str, tuple[int, tuple[tuple[str, str], ...]]] = {}
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                recorder._record(Received(self.command, self.path, tuple(self.headers.items()), body))
                recorder.gate.wait(timeout=120)
                refused = recorder._refusal(self.headers.get_all("x-api-key", []) +
                                            self.headers.get_all("authorization", []))  # fmt: skip
                if refused is not None:
                    return self._error(*refused)
                failure = recorder._next_failure()
                if failure is not None:
                    return self._error(failure)
                path = self.path.removeprefix("/anthropic")
                if self.command == "GET" and path.startswith("/bytes/"):
                    return self._stream(sse_chunks(int(path.split("/")[2])))
                if "count_tokens" in self.path:
                    return self._json({"input_tokens": 7})
                try:
                    doc = json.loads(body) if body else {}
                except ValueError:
                    doc = {}
                model = str(doc.get("model", MESSAGE["model"])) if isinstance(doc, dict) else str(MESSAGE["model"])
                if isinstance(doc, dict) and doc.get("stream"):
                    events = message_events(model)
                    return self._stream(f"event: {e}\ndata: {json.dumps(d)}\n\n".encode() for e, d in events)
                return self._json({**MESSAGE, "model": model})

            do_GET = do_POST = _handle

            def _json(self, doc: dict[str, Any]) -> None:
                payload = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.send_header("request-id", "req_stand_in")
                self.end_headers()
                self.wfile.write(payload)

            def _error(self, status: int, headers: tuple[tuple[str, str], ...] = ()) -> None:
                kind = ERROR_TYPES.get(status, "api_error")
                payload = json.dumps({"type": "error", "error": {"type": kind, "message": f"stand-in {status}"}})
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload.encode())

            def _stream(self, pieces: Iterator[bytes] | Any) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for piece in pieces:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, *statuses: int) -> None:
        """Answer the next requests with these statuses, one each, as Anthropic shapes its errors."""
        with self._lock:
            self._failures = list(statuses)

    def refuse(self, credential: str, status: int, *headers: tuple[str, str]) -> None:
        """Answer every request carrying ``credential`` (as x-api-key or Bearer) with ``status``, as Anthropic
        answers a revoked key (401) or one over its rate limit (429, with ``retry-after``)."""
        with self._lock:
            self._refused[credential] = (status, headers)

    def forgive(self) -> None:
        with self._lock:
            self._refused.clear()

    def _refusal(self, values: list[str]) -> tuple[int, tuple[tuple[str, str], ...]] | None:
        with self._lock:
            for value in values:
                found = self._refused.get(value.removeprefix("Bearer "))
                if found is not None:
                    return found
        return None

    def _next_failure(self) -> int | None:
        with self._lock:
            return self._failures.pop(0) if self._failures else None

    def _record(self, received: Received) -> None:
        with self._lock:
            self._received.append(received)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._received)

    def take(self) -> list[Received]:
        with self._lock:
            taken, self._received = self._received, []
        return taken

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
