"""The benchmark's smoke mode: the command works end to end (never a timed assertion)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.variants import GATEWAY_PAIRS, RATIOS, Name

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.litellm
def test_bench_smoke_runs_every_variant() -> None:
    if shutil.which("wrk") is None or shutil.which("curl") is None:
        pytest.skip("wrk or curl is missing (scripts/test.sh installs them when run as root: apt-get install wrk curl)")
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for variant in Name:
        assert f"| {variant} | 1 |" in result.stdout, f"variant {variant} missing from the report"
    for top, bottom in RATIOS:
        assert f"{top}/{bottom} p50" in result.stdout
    for _, _, header_set in GATEWAY_PAIRS:
        assert f"| {header_set} | 1 |" in result.stdout, "the gateway-next-to-LiteLLM table has both header sets"
    assert "body bytes seen by the server: 0" in result.stdout
