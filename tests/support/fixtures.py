"""Real client requests (recorded from Claude Code 2.1.197; see tests/fixtures/README.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body_len: int

    def without(self, *names: str) -> tuple[tuple[str, str], ...]:
        drop = {n.lower() for n in names}
        return tuple((k, v) for k, v in self.headers if k.lower() not in drop)


def load(name: str) -> Recorded:
    line = (FIXTURES / f"{name}.jsonl").read_text().splitlines()[0]
    doc = json.loads(line)
    return Recorded(doc["method"], doc["path"], tuple((k, v) for k, v in doc["headers"]), doc["body_len"])


CLAUDE_CODE_API_KEY = "claude-code-2.1.197-api-key"
CLAUDE_CODE_OAUTH = "claude-code-2.1.197-oauth"
