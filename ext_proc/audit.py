"""The audit trail and log output: one line per decision with kinds and fingerprints, never a credential.

Sampling is keyed on Envoy's request id, so the ingress and egress lines of one request are kept or dropped
together. Rejections are always logged, at once, through ``logging``. Forwarded decisions, one per request, take a
cheaper path: the line is formatted here (the same format as every other log line) and lines are written to the
log stream in batches, at most ``flush_seconds`` late, instead of one ``logging`` call and one write per request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import zlib
from typing import Any, TextIO

from ext_proc.rules import Audit

log = logging.getLogger("ext_proc.audit")
_SCALE = 1 << 32
_BATCH_BYTES = 64 * 1024
_BODY_CACHE_SIZE = 1024
# How late a batched line may be written (docs/performance.md: "at most 50 ms late").
FLUSH_SECONDS = 0.05


def format_line(fmt: str, created: float, level: str, logger: str, message: str, audit: dict[str, Any] | None) -> str:
    """One log line, for `logging` records and batched audit lines alike."""
    if fmt == "json":
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(created))
        doc: dict[str, Any] = {"time": stamp, "level": level, "logger": logger}
        doc.update(audit if audit is not None else {"message": message})
        return json.dumps(doc, separators=(",", ":"))
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created)) + f",{int(created * 1000) % 1000:03d}"
    line = f"{stamp} {level} {logger} {message}"
    return f"{line} {json.dumps(audit, separators=(',', ':'))}" if audit is not None else line


class AuditLog:
    def __init__(self, sample_rate: float, fmt: str, stream: TextIO | None = None) -> None:
        self._threshold = int(sample_rate * _SCALE)
        self._counter = 0
        self._stream = stream
        self._enabled = log.isEnabledFor(logging.INFO)
        self._buffer: list[str] = []
        self._size = 0
        self._flush_scheduled = False
        self._lines = _AuditLines(fmt)
        self.flush_seconds = FLUSH_SECONDS

    def record(self, audit: Audit) -> None:
        if audit.outcome == "reject":
            log.warning("decision", extra={"audit": audit.as_dict()})
        elif self._enabled and self._sampled(audit.request_id):
            line = self._lines.line(audit, time.time())
            self._buffer.append(line)
            self._size += len(line)
            if self._size >= _BATCH_BYTES:
                self.flush()
            elif not self._flush_scheduled:
                self._schedule()

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_scheduled = True
        loop.call_later(self.flush_seconds, self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if not self._buffer:
            return
        stream = self._stream or sys.stderr
        stream.write("\n".join(self._buffer) + "\n")
        stream.flush()
        self._buffer.clear()
        self._size = 0

    def _sampled(self, request_id: str | None) -> bool:
        if self._threshold >= _SCALE:
            return True
        if request_id is None:
            self._counter += 1
            request_id = str(self._counter)
        return zlib.crc32(request_id.encode()) < self._threshold


class _AuditLines:
    """``format_line`` for forwarded decisions, byte for byte, at a fraction of the cost.

    A client's requests repeat the same decision apart from the request id (the last field), so each distinct
    rest is rendered to JSON once, and the timestamp's formatted seconds once per second. Both caches are small
    and bounded; they hold kinds, names and fingerprints, never a credential.
    """

    def __init__(self, fmt: str) -> None:
        self._fmt = fmt
        self._bodies: dict[tuple[object, ...], str] = {}
        self._second = -1
        self._stamp = ""

    def line(self, audit: Audit, created: float) -> str:
        a = audit
        key = (a.leg, a.policy, a.outcome, a.reason, a.source, a.kind, a.fingerprint, a.sealed, a.removed, a.scrubbed)
        body = self._bodies.get(key)
        if body is None:
            if len(self._bodies) >= _BODY_CACHE_SIZE:
                self._bodies.clear()
            fields = audit.as_dict()
            del fields["request_id"]
            body = self._bodies[key] = json.dumps(fields, separators=(",", ":"))[1:-1]
        second = int(created)
        if second != self._second:
            self._second = second
            stamp_format = "%Y-%m-%dT%H:%M:%S" if self._fmt == "json" else "%Y-%m-%d %H:%M:%S"
            self._stamp = time.strftime(stamp_format, time.localtime(created))
        rest = f'{body},"request_id":{json.dumps(audit.request_id)}'
        if self._fmt == "json":
            return f'{{"time":"{self._stamp}","level":"INFO","logger":"ext_proc.audit",{rest}}}'
        return f"{self._stamp},{int(created * 1000) % 1000:03d} INFO ext_proc.audit decision {{{rest}}}"


class LineFormatter(logging.Formatter):
    def __init__(self, fmt: str) -> None:
        super().__init__()
        self._fmt_name = fmt

    def format(self, record: logging.LogRecord) -> str:
        line = format_line(
            self._fmt_name, record.created, record.levelname, record.name, record.getMessage(),
            getattr(record, "audit", None),
        )  # fmt: skip
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()  # sys.stderr
    handler.setFormatter(LineFormatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
