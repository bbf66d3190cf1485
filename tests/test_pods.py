"""The Kubernetes forms run as the kubelet would run them (tests/support/pods.py): containers, files, probes, order.

A form counts when it has run as written: each pod's containers start from the rendered manifests, every probe they
declare passes within its failureThreshold, and a client request through the Service's target port reaches the
recording stand-in with the client's own credential and nothing it must not carry.
"""

from __future__ import annotations

import base64
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from ext_proc.envoy import HostPort
from ext_proc.supervise import port_holder
from tests.e2e.matrix import CLIENT_OAUTH, CLIENTS
from tests.support import litellm_proxy
from tests.support.helm_render import LITELLM_VALUES, find, litellm_chart_pod, render_chart, secret_files
from tests.support.http import send
from tests.support.pods import Pod, ProbeFailed, render_overlay
from tests.support.processes import BIN
from tests.support.recorder import Recorder

pytestmark = pytest.mark.litellm
SECRETS = {
    "ext-proc-secrets": {
        "seal-keys": base64.urlsafe_b64encode(bytes(range(32))).decode() + "\n",
        "egress-token": litellm_proxy.EGRESS_TOKEN + "\n",
    },
    "litellm-secrets": {"master-key": litellm_proxy.MASTER_KEY},
}
# This machine has no network: LiteLLM reads its model-cost map locally and sends no telemetry.
OFFLINE = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False", "NO_DOCS": "True"}
PORTS = (8080, 9902, 9464, 10000, 4000, 4001)
DOCS = Path(__file__).resolve().parent.parent / "docs"


def images() -> dict[str, object]:
    release = litellm_proxy.RELEASES[-1]
    return {
        "ext-proc-credentials": lambda: str(BIN / "ext-proc"),
        "ghcr.io/berriai/litellm": lambda: str(litellm_proxy.venv(release) / "bin" / "litellm"),
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
    assert not any(litellm_proxy.MASTER_KEY in v or litellm_proxy.EGRESS_TOKEN in v for _, v in got.headers)


def scraped_as_the_podmonitor_says(docs: list[dict[str, Any]], monitor: dict[str, Any] | None = None) -> dict[str, str]:
    """Each endpoint of the PodMonitor (deploy/monitoring's unless given) that this pod declares, fetched as
    Prometheus would, once the monitor selects the pod."""
    if monitor is None:
        (monitor,) = (d for d in render_overlay("../monitoring") if d["kind"] == "PodMonitor")
    (deployment,) = (d for d in docs if d["kind"] == "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = monitor["spec"]["selector"]
    assert all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
    assert all(labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", []))
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
            assert_scrapes(scraped_as_the_podmonitor_says(docs))


def test_gateway_pod_runs_as_written(free_pod_ports: None, tmp_path: Path) -> None:
    with Recorder() as recorder:
        docs = render_overlay("gateway")
        pod = Pod(docs, "ext-proc-gateway", SECRETS, images(), machine_env=OFFLINE,  # type: ignore[arg-type]
                  clusters={"anthropic": ("127.0.0.1", recorder.port), "litellm": ("127.0.0.1", 4000)})  # fmt: skip
        with pod.running_pod():
            # The existing LiteLLM, configured as docs/kubernetes-gateway.md says (ext-proc-egress:10000 is here).
            setup = litellm_proxy.Setup(
                litellm_proxy.RELEASES[-1], "http://127.0.0.1:10000", litellm_proxy.EGRESS_TOKEN
            )
            proxy = litellm_proxy.start(setup, tmp_path, 4000)
            try:
                at = HostPort("127.0.0.1", pod.service_port("ext-proc-gateway"))
                assert oauth_request(at) == 200
                assert_own_credential_only(recorder)
                assert_scrapes(scraped_as_the_podmonitor_says(docs))
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


def test_the_chart_s_gateway_pod_runs_as_written(free_pod_ports: None, tmp_path: Path) -> None:
    """`helm install` with the chart's defaults and monitoring on: the Secret it generates is the one the pod and
    LiteLLM use, its PodMonitor scrapes the pod."""
    with Recorder() as recorder:
        docs = render_chart({"monitoring": {"podMonitor": {"enabled": True}}})
        secrets = secret_files(docs)
        pod = Pod(docs, "ext-proc-credentials", secrets, images(), machine_env=OFFLINE,  # type: ignore[arg-type]
                  clusters={"anthropic": ("127.0.0.1", recorder.port), "litellm": ("127.0.0.1", 4000)})  # fmt: skip
        with pod.running_pod():
            token = secrets["ext-proc-credentials"]["egress-token"]
            setup = litellm_proxy.Setup(litellm_proxy.RELEASES[-1], "http://127.0.0.1:10000", token)
            proxy = litellm_proxy.start(setup, tmp_path, 4000)
            try:
                assert oauth_request(HostPort("127.0.0.1", pod.service_port("ext-proc-credentials"))) == 200
                assert_own_credential_only(recorder)
                assert_scrapes(scraped_as_the_podmonitor_says(docs, find(docs, "PodMonitor")))
            finally:
                proxy.stop()


def _proxy_config() -> str:
    """The LiteLLM config docs/kubernetes-sidecar.md gives for LiteLLM's chart (its `proxy_config` value)."""
    (block,) = re.findall(r"```yaml\n(proxy_config:\n.*?)```", (DOCS / "kubernetes-sidecar.md").read_text(), re.DOTALL)
    return str(yaml.safe_dump(yaml.safe_load(block)["proxy_config"]))


def test_the_sidecar_form_in_litellm_s_chart_runs_as_written(free_pod_ports: None, tmp_path: Path) -> None:
    """The chart with `mode=sidecar`, and LiteLLM's pod as its chart places deploy/helm/litellm/sidecar-values.yaml:
    every request and every probe of LiteLLM's container goes through Envoy's ingress."""
    with Recorder() as recorder:
        ours = render_chart({"mode": "sidecar"})
        config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "litellm-config"},
                  "data": {"config.yaml": _proxy_config()}}  # fmt: skip
        docs = [
            *ours,
            config,
            *litellm_chart_pod(
                LITELLM_VALUES / "sidecar-values.yaml",
                "ghcr.io/berriai/litellm-database:main-stable",
                "litellm-masterkey",
            ),
        ]
        secrets = secret_files(ours) | {"litellm-masterkey": {"masterkey": litellm_proxy.MASTER_KEY}}
        # The image's home directory, where LiteLLM writes its caches.
        machine = {**OFFLINE, "HOME": str(tmp_path)}
        pod = Pod(docs, "litellm", secrets, images(), machine_env=machine,  # type: ignore[arg-type]
                  clusters={"anthropic": ("127.0.0.1", recorder.port)})  # fmt: skip
        with pod.running_pod():
            assert oauth_request(HostPort("127.0.0.1", pod.service_port("litellm"))) == 200
            assert_own_credential_only(recorder)
