"""The route tables ext_proc ships (ext_proc/data/) are LiteLLM's own, for every supported release.

Each release's table is written again from the installed release by scripts/litellm_routes.py and compared with
the shipped copy: a release that adds, drops or reorders a route fails here until the table is regenerated, and a
route it adds is refused for clients with their own credential until it is classified (ext_proc/routes.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support import litellm_proxy
from tests.support.litellm_proxy import RELEASES

pytestmark = pytest.mark.litellm
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("version", RELEASES)
def test_the_shipped_route_table_is_the_release_s_own(version: str, tmp_path: Path) -> None:
    python = litellm_proxy.venv(version) / "bin" / "python"
    written = subprocess.run(
        [str(python), str(ROOT / "scripts" / "litellm_routes.py")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        check=True,
    ).stdout
    shipped = (ROOT / "ext_proc" / "data" / f"litellm-routes-{version}.json").read_text()
    assert written == shipped, (
        f"LiteLLM {version}'s routes differ from ext_proc/data/litellm-routes-{version}.json; regenerate it with "
        "scripts/litellm_routes.py and classify any new route in ext_proc/routes.py"
    )
