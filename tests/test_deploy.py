"""deploy/envoy.yaml is the generator's output with defaults, and the real Envoy accepts it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ext_proc.envoy import DEPLOYED, bootstrap, find_envoy, render

ROOT = Path(__file__).resolve().parent.parent


def test_every_shipped_envoy_config_is_current() -> None:
    for relative, layout in DEPLOYED.items():
        assert (ROOT / "deploy" / relative).read_text() == render(layout), (
            f"deploy/{relative} is stale: run `ext-proc envoy-config --all deploy/`"
        )


def test_shipped_configs_have_no_admin_on_tcp() -> None:
    """Envoy's admin API can stop Envoy and raise its log level: never on a port in a shipped config."""
    for relative, layout in DEPLOYED.items():
        admin = bootstrap(layout).get("admin")
        assert admin is None or admin["address"]["pipe"]["mode"] == 0o600, relative


def test_envoy_validates_deploy_config() -> None:
    result = subprocess.run(
        [str(find_envoy()), "--mode", "validate", "-c", str(ROOT / "deploy" / "envoy.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr
