"""deploy/envoy.yaml is the generator's output with defaults, and the real Envoy accepts it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ext_proc.envoy import Layout, find_envoy, render

ROOT = Path(__file__).resolve().parent.parent


def test_deploy_envoy_yaml_is_current() -> None:
    assert (ROOT / "deploy" / "envoy.yaml").read_text() == render(Layout()), (
        "deploy/envoy.yaml is stale: run `ext-proc envoy-config > deploy/envoy.yaml`"
    )


def test_envoy_validates_deploy_config() -> None:
    result = subprocess.run(
        [str(find_envoy()), "--mode", "validate", "-c", str(ROOT / "deploy" / "envoy.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr
