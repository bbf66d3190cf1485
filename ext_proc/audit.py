"""The audit trail and log output: one line per decision with kinds and fingerprints, never a credential.

Sampling is keyed on Envoy's request id, so the ingress and egress lines of one request are kept or dropped
together. Rejections are always logged.
"""

from __future__ import annotations

import json
import logging
import sys
import zlib
from typing import Any

from ext_proc.rules import Audit

log = logging.getLogger("ext_proc.audit")
_SCALE = 1 << 32


class AuditLog:
    def __init__(self, sample_rate: float = 1.0) -> None:
        self._threshold = int(sample_rate * _SCALE)
        self._counter = 0

    def record(self, audit: Audit) -> None:
        if audit.outcome == "reject":
            log.warning("decision", extra={"audit": audit.as_dict()})
        elif log.isEnabledFor(logging.INFO) and self._sampled(audit.request_id):
            log.info("decision", extra={"audit": audit.as_dict()})

    def _sampled(self, request_id: str | None) -> bool:
        if self._threshold >= _SCALE:
            return True
        if request_id is None:
            self._counter += 1
            request_id = str(self._counter)
        return zlib.crc32(request_id.encode()) < self._threshold


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
        }
        audit = getattr(record, "audit", None)
        if audit is not None:
            doc.update(audit)
        else:
            doc["message"] = record.getMessage()
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        audit = getattr(record, "audit", None)
        return f"{line} {json.dumps(audit, separators=(',', ':'))}" if audit is not None else line


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
