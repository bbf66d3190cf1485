"""The audit trail: one JSON line per decision, holding kinds and fingerprints only, never a credential."""

from __future__ import annotations

import json
import logging

from ext_proc.rules import Audit

log = logging.getLogger("ext_proc.audit")


class AuditLog:
    def record(self, audit: Audit) -> None:
        if audit.outcome == "reject":
            log.warning("%s", json.dumps(audit.as_dict(), separators=(",", ":")))
        elif log.isEnabledFor(logging.INFO):
            log.info("%s", json.dumps(audit.as_dict(), separators=(",", ":")))
