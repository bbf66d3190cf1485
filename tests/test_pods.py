"""The Kubernetes forms run as the kubelet would run them (tests/support/pods.py): containers, files, probes, order.

A form counts when it has run as written: each pod's containers start from the rendered manifests, every probe they
declare passes within its failureThreshold, and a client request through the Service's target port reaches the
recording stand-in with the client's own credential and nothing it must not carry.
"""

from __future__ import annotations

import base64
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ext_proc.envoy import HostPort
from ext_proc.up import port_holder
from tests.e2e.matrix import CLIENT_OAUTH, CLIENTS
from tests.support import litellm
from tests.support.http import send
from tests.support.pods import Pod, ProbeFailed, render_overlay
from tests.support.processes import BIN
from tests.support.recorder import Recorder

pytestmark = pytest.mark.litellm
SECRETS = {
    "ext-proc-secrets": {
        "seal-keys": base64.urlsafe_b64encode(bytes(range(32))).decode() + "\n",
        "egress-token": litellm.EGRESS_TOKEN + "\n",
    },
    "litellm-secrets": {"master-key": litellm.MASTER_KEY},
}
# This machine has no network: LiteLLM reads its model-cost map locally and sends no telemetry.
OFFLINE = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False", "NO_DOCS": "True"}
PORTS = (8080, 9902, 9464, 10000, 4000)


def images() -> dict[str, object]:
    release = litellm.RELEASES[-1]
    return {
        "ext-proc-credentials": lambda: str(BIN / "ext-proc"),
        "ghcr.io/berriai/litellm": lambda: str(litellm.venv(release) / "bin" / "litellm"),
    }


@pytest.fixture
def free_pod_ports() -> None:
    taken = {port: port_holder(port) for port in PORTS if port_holder(port)}
    assert not taken, f"the pod's ports are taken on this machine: {taken}"


def oauth_request(at: HostPort) -> int:
    client = next(c for c in CLIENTS if c.name.startswith("OAuth"))
    body = b'{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"say ok"}]}'
    status, _, _ = send(at, "POST", "/v1/messages", list(client.headers), body)
    return status


def assert_own_credential_only(recorder: Recorder) -> None:
    (got,) = recorder.take()
    assert got.get("authorization") == [f"Bearer {CLIENT_OAUTH}"]
    assert got.get("x-api-key") == [] and "x-litellm-api-key" not in got.names
    assert not any(litellm.MASTER_KEY in v or litellm.EGRESS_TOKEN in v for _, v in got.headers)


def scraped_as_the_podmonitor_says(docs: list[dict[str, Any]], app: str) -> dict[str, str]:
    """Each endpoint of deploy/monitoring's PodMonitor that this pod declares, fetched as Prometheus would."""
    (monitor,) = (d for d in render_overlay("../monitoring") if d["kind"] == "PodMonitor")
    (wanted,) = monitor["spec"]["selector"]["matchExpressions"]
    assert app in wanted["values"]
    (deployment,) = (d for d in docs if d["kind"] == "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    ports = {p["name"]: p["containerPort"] for c in [*spec.get("initContainers", []), *spec["containers"]]
             for p in c.get("ports", []) if "name" in p}  # fmt: skip
    scraped = {}
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        if endpoint["port"] in ports:
            url = f"http://127.0.0.1:{ports[endpoint['port']]}{endpoint['path']}"
            with urllib.request.urlopen(url, timeout=5) as response:
                scraped[endpoint["port"]] = response.read().decode()
    return scraped


def assert_scrapes(scraped: dict[str, str]) -> None:
    assert set(scraped) == {"metrics", "probe"}
    assert (
        'ext_proc_requests_total{leg="egress",policy="anthropic",source="sealed-authorization"} 1.0'
        in (scraped["metrics"])
    )
    assert 'envoy_http_ext_proc_streams_started{envoy_http_conn_manager_prefix="egress"} 1' in scraped["probe"]


def test_sidecar_pod_runs_as_written(free_pod_ports: None) -> None:
    with Recorder() as recorder:
        docs = render_overlay("sidecar")
        pod = Pod(docs, "litellm", SECRETS, images(), machine_env=OFFLINE,  # type: ignore[arg-type]
                  clusters={"anthropic": ("127.0.0.1", recorder.port)})  # fmt: skip
        with pod.running_pod():
            at = HostPort("127.0.0.1", pod.service_port("litellm"))
            assert oauth_request(at) == 200
            assert_own_credential_only(recorder)
            assert_scrapes(scraped_as_the_podmonitor_says(docs, "litellm"))


def test_gateway_pod_runs_as_written(free_pod_ports: None, tmp_path: Path) -> None:
    with Recorder() as recorder:
        docs = render_overlay("gateway")
        pod = Pod(docs, "ext-proc-gateway", SECRETS, images(), machine_env=OFFLINE,  # type: ignore[arg-type]
                  clusters={"anthropic": ("127.0.0.1", recorder.port), "litellm": ("127.0.0.1", 4000)})  # fmt: skip
        with pod.running_pod():
            # The existing LiteLLM, configured as docs/kubernetes-gateway.md says (ext-proc-egress:10000 is here).
            setup = litellm.Setup(litellm.RELEASES[-1], "http://127.0.0.1:10000", litellm.EGRESS_TOKEN)
            proxy = litellm.start(setup, tmp_path, 4000)
            try:
                at = HostPort("127.0.0.1", pod.service_port("ext-proc-gateway"))
                assert oauth_request(at) == 200
                assert_own_credential_only(recorder)
                assert_scrapes(scraped_as_the_podmonitor_says(docs, "ext-proc-gateway"))
            finally:
                proxy.stop()


def test_a_probe_on_a_port_nothing_serves_fails_the_pod(free_pod_ports: None) -> None:
    """The check that would have caught the missing probe listener: a pod whose probe port is dead never runs."""
    docs = render_overlay("gateway")
    for doc in docs:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].startswith("envoy-config"):
            doc["data"]["envoy.yaml"] = doc["data"]["envoy.yaml"].replace("port_value: 9902", "port_value: 9903")
    pod = Pod(docs, "ext-proc-gateway", SECRETS, images(), machine_env=OFFLINE)  # type: ignore[arg-type]
    with pytest.raises(ProbeFailed, match="envoy readinessProbe failed"), pod.running_pod():
        pass
