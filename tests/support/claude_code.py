"""The real Claude Code CLI from npm, pinned to the release the fixtures were recorded with, cached in .cache/."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from pathlib import Path

from tests.support.litellm_proxy import CACHE

VERSION = "2.1.197"


def install() -> Path | str:
    """The `claude` binary, or the reason it cannot be had here (npm missing or its registry unreachable)."""
    npm = shutil.which("npm")
    if npm is None:
        return "npm is not installed"
    prefix = CACHE / f"claude-code-{VERSION}"
    binary = prefix / "node_modules" / ".bin" / "claude"
    CACHE.mkdir(exist_ok=True)
    with (CACHE / "claude-code.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.exists():
            prefix.mkdir(parents=True, exist_ok=True)
            package = f"@anthropic-ai/claude-code@{VERSION}"
            command = [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", package]
            result = subprocess.run(command, capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                return f"npm install @anthropic-ai/claude-code@{VERSION} failed: {result.stderr.strip()[-500:]}"
    return binary
