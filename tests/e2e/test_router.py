"""LiteLLM's router (retries, fallbacks) through the gateway: every call it makes for a request carries the
client's own credential, and the bound on a handoff's opens follows from LiteLLM's config (docs/rules.md S1).

The stand-in answers 529 (Anthropic's "overloaded") as many times as a case asks; LiteLLM retries and falls back
on it. The number of calls measured must be the number `ext_proc.litellm_config.attempts` derives from the same
config, on every supported release.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ext_proc.envoy import HostPort
from ext_proc.litellm_config import DEFAULT_MAX_FALLBACKS, DEFAULT_NUM_RETRIES, attempts
from tests.e2e.matrix import CLIENT_OAUTH
from tests.e2e.test_litellm import AFTER, gateway
from tests.support import litellm_proxy
from tests.support.http import send
from tests.support.litellm_proxy import MASTER_KEY, MODEL, RELEASES, Setup
from tests.support.processes import BIN, Proc, free_port
from tests.support.recorder import Received, Recorder

pytestmark = pytest.mark.litellm
HEADERS = [("x-litellm-api-key", MASTER_KEY), ("content-type", "application/json"),
           ("anthropic-version", "2023-06-01"), ("authorization", f"Bearer {CLIENT_OAUTH}")]  # fmt: skip
BODY = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
CASES: dict[str, tuple[tuple[str, ...], tuple[tuple[str, dict[str, Any]], ...]]] = {
    "defaults": ((), ()),
    "num_retries 5": ((), (("litellm_settings", {"num_retries": 5}),)),
    "nested fallbacks, num_retries 3": (
        ("backup", "backup2"),
        (("router_settings", {"fallbacks": [{MODEL: ["backup"]}, {"backup": ["backup2"]}], "num_retries": 3}),),
    ),
}


@pytest.fixture(scope="module")
def recorder() -> Any:
    with Recorder() as r:
        yield r


_DEFAULTS = """
import json
from litellm import Router
router = Router(model_list=[{"model_name": "m", "litellm_params": {"model": "anthropic/m", "api_key": "k"}}])
print(json.dumps([router.num_retries, router.max_fallbacks]))
"""


@pytest.mark.parametrize("version", RELEASES)
def test_the_router_defaults_attempts_assumes_are_each_release_s_own(version: str) -> None:
    """A config that sets neither num_retries nor max_fallbacks gets the release's own: read from its Router."""
    python = litellm_proxy.venv(version) / "bin" / "python"
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}
    ran = subprocess.run([str(python), "-c", _DEFAULTS], capture_output=True, text=True, timeout=300, env=env)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout.splitlines()[-1]) == [DEFAULT_NUM_RETRIES, DEFAULT_MAX_FALLBACKS]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("version", RELEASES)
def test_the_calls_litellm_makes_for_one_request_are_the_ones_derived_from_its_config(
    version: str, case: str, recorder: Recorder, tmp_path: Path
) -> None:
    groups, settings = CASES[case]
    doc = yaml.safe_load(
        litellm_proxy.config_yaml(Setup(version, "http://x", "k", more_groups=groups, settings=settings))
    )
    derived = attempts(doc).calls
    with gateway(version, AFTER[0], recorder, tmp_path, more_groups=groups, settings=settings,
                 env={"EXT_PROC_SEAL_MAX_OPENS": "100"}) as at:  # fmt: skip
        routes = (("/v1/messages", False, derived), ("/v1/chat/completions", False, derived),
                  ("/v1/messages", True, derived), ("/anthropic/v1/messages", False, 1))  # fmt: skip
        for route, stream, expected in routes:
            _, calls = _after_failures(recorder, 100, at, route, {**BODY, "stream": stream})
            assert len(calls) == expected, (route, stream)
            assert all(c.get("authorization") == [f"Bearer {CLIENT_OAUTH}"] for c in calls), "the client's own"


CONFIG = f"""model_list:
  - model_name: claude-primary
    litellm_params: {{model: anthropic/{MODEL}}}
  - model_name: claude-backup
    litellm_params: {{model: anthropic/{MODEL}}}
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
"""
SUCCEEDS = {
    # (router settings, failures before the call that succeeds, the bound `up` derives)
    "fallback after three 529s": ({"fallbacks": [{"claude-primary": ["claude-backup"]}]}, 3, 6),
    "sixth try of num_retries 5": ({"num_retries": 5}, 5, 6),
}


def _after_failures(
    recorder: Recorder, failures: int, at: HostPort, route: str, body: dict[str, Any]
) -> tuple[tuple[int, bytes], list[Received]]:
    """One request while the stand-in answers 529 to the next ``failures`` calls: its answer, and every call made."""
    recorder.take()
    recorder.fail_next(*[529] * failures)
    try:
        status, answer, _ = send(at, "POST", route, HEADERS, json.dumps(body).encode())
        return (status, answer), recorder.take()
    finally:
        recorder.fail_next()


@pytest.mark.parametrize("case", list(SUCCEEDS))
@pytest.mark.parametrize("version", RELEASES)
def test_up_derives_the_bound_so_a_request_succeeds_when_a_retry_or_fallback_does(
    version: str, case: str, recorder: Recorder, tmp_path: Path
) -> None:
    router, failures, bound = SUCCEEDS[case]
    config = tmp_path / "litellm.yaml"
    config.write_text(CONFIG + yaml.safe_dump({"router_settings": router}))
    ingress = HostPort("127.0.0.1", free_port())
    env = {
        "PATH": f"{litellm_proxy.venv(version) / 'bin'}:{BIN}:{os.environ.get('PATH', '')}",
        "XDG_CONFIG_HOME": str(tmp_path / "config"), "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False", "LITELLM_MASTER_KEY": MASTER_KEY, **litellm_proxy.NO_RETRY_WAIT,
    }  # fmt: skip
    up = Proc([str(BIN / "ext-proc"), "up", "--litellm-config", str(config), "--ingress-listen", str(ingress),
               "--egress-listen", f"127.0.0.1:{free_port()}", "--litellm", f"http://127.0.0.1:{free_port()}",
               "--anthropic", recorder.url, "--metrics-listen", "off"], env)  # fmt: skip
    try:
        up.wait_line("ready ", timeout=240)
        assert f"LiteLLM may call Anthropic up to {bound} times for one request" in up.output
        (status, answer), got = _after_failures(recorder, failures, ingress, "/v1/messages",
                                                {**BODY, "model": "claude-primary"})  # fmt: skip
        assert status == 200, answer[:400]
        assert len(got) == failures + 1
        assert all(c.get("authorization") == [f"Bearer {CLIENT_OAUTH}"] for c in got), "each try: the client's own"
    finally:
        up.signal(signal.SIGTERM)
        up.stop(60)
