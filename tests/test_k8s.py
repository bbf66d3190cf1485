"""Kubernetes manifests, validated offline: kustomize renders, schemas validate, embedded configs are real.

- every overlay renders with `kubectl kustomize` and every core object validates against the Kubernetes schemas;
- the Envoy config in each ConfigMap is the generator's output and passes `envoy --mode validate`;
- the ext-proc config in the ConfigMap passes the server's own validation;
- the Istio EnvoyFilter's patches parse with Envoy's generated API stubs, and their semantics (filter off by
  default, on for api.anthropic.com only) hold in a real Envoy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format

from ext_proc.cli import HEALTH_SECONDS
from ext_proc.config import Config
from ext_proc.deployed import DEPLOYED
from ext_proc.envoy import (
    ANSWER_FILTER,
    DEPLOYED_SOCKET,
    Endpoint,
    HostPort,
    Layout,
    bootstrap,
    find_envoy,
    log_caps,
    render,
)
from tests.support.http import send
from tests.support.pods import render_overlay
from tests.support.processes import Proc, free_port, start_envoy, start_server
from tests.support.recorder import Recorder

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("sidecar", "gateway", "mesh")
KUBERNETES_VERSION = "1.33.0"
LAYOUTS = {name: DEPLOYED[f"k8s/{name}/envoy.yaml"] for name in ("sidecar", "gateway")}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render_overlay(request.param)


def test_core_objects_validate_against_kubernetes_schemas(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = overlay
    validated = 0
    for doc in docs:
        if doc["apiVersion"].startswith("networking.istio.io/"):
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        validated += 1
    assert validated >= 1, name


def _pods(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]


def test_pods_are_hardened_and_probed(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    for pod in _pods(docs):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        sidecars = pod.get("initContainers", [])
        assert any(c["name"] == "ext-proc" for c in sidecars), "the server is a native sidecar"
        assert all(c["restartPolicy"] == "Always" for c in sidecars), "native sidecars start first and stop last"
        for container in [*sidecars, *pod["containers"]]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert "requests" in container["resources"]
            assert "readinessProbe" in container, container["name"]
        server = next(c for c in sidecars if c["name"] == "ext-proc")
        assert server["readinessProbe"]["exec"]["command"][:2] == ["ext-proc", "health"]
        assert server["readinessProbe"]["timeoutSeconds"] > HEALTH_SECONDS, "the command's own deadline comes first"
        assert DEPLOYED_SOCKET in server["args"], "the server listens only on a Unix socket, never on the pod network"
        assert not any("secret" in str(e).lower() and "value:" in str(e) for e in server.get("env", []))


def test_network_policies_keep_the_egress_listener_private() -> None:
    docs = render_overlay("gateway")
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    egress_rule = next(r for r in policy["spec"]["ingress"] if any(p["port"] == 10000 for p in r["ports"]))
    assert egress_rule["from"] == [{"podSelector": {"matchLabels": {"app": "litellm"}}}]
    sidecar = render_overlay("sidecar")
    (policy,) = [d for d in sidecar if d["kind"] == "NetworkPolicy"]
    assert {p["port"] for r in policy["spec"]["ingress"] for p in r["ports"]} == {8080, 9464, 9902}


@pytest.mark.parametrize("name", ["sidecar", "gateway"])
def test_embedded_envoy_config_is_generated_and_valid(name: str, tmp_path: Path) -> None:
    docs = render_overlay(name)
    (envoy_cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("envoy-config")]
    text = envoy_cm["data"]["envoy.yaml"]
    assert text == render(LAYOUTS[name]), f"deploy/k8s/{name}/envoy.yaml is stale: ext-proc envoy-config --all deploy/"
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    result = subprocess.run([str(find_envoy()), "--mode", "validate", "-c", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_embedded_ext_proc_config_is_valid(tmp_path: Path) -> None:
    for name in OVERLAYS:
        (cm,) = [
            d for d in render_overlay(name) if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "ext-proc-config"
        ]
        settings = tomllib.loads(cm["data"]["config.toml"])
        assert "seal_key_file" not in settings, "one server per pod makes its own key (the gateway form sets one)"
        path = tmp_path / "config.toml"
        token = tmp_path / "egress-token"
        token.write_text("egress-" + "k" * 43 + "\n")
        path.write_text(cm["data"]["config.toml"].replace(settings["egress_token_file"], str(token)))
        assert Config.load(path, {}).log_format == "json"


def test_only_the_gateway_form_shares_a_seal_key_across_replicas() -> None:
    """In the sidecar and mesh forms one server seals and opens a pod's handoffs: a key of its own makes a handoff
    open only there, so N replicas do not multiply the bound on its opens. The gateway form's replicas must share."""
    for name in OVERLAYS:
        docs = render_overlay(name)
        pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]
        containers = [c for pod in pods for c in (*pod.get("initContainers", []), *pod["containers"])]
        env = [item for c in containers if c["name"] == "ext-proc" for item in c.get("env", [])]
        shared = {"name": "EXT_PROC_SEAL_KEY_FILE", "value": "/etc/ext-proc/secrets/seal-keys"}
        assert (shared in env) == (name == "gateway"), name


def _envoyfilter() -> dict[str, Any]:
    (doc,) = [d for d in render_overlay("mesh") if d["kind"] == "EnvoyFilter"]
    return doc


def _patch(apply_to: str, context: str) -> dict[str, Any]:
    return next(
        p["patch"]["value"]
        for p in _envoyfilter()["spec"]["configPatches"]
        if p["applyTo"] == apply_to and p["match"]["context"] == context
    )


# Registers the message type that the cluster patch's typed_extension_protocol_options names.
assert http_protocol_options_pb2.HttpProtocolOptions


def _parse(message: Any, doc: dict[str, Any]) -> Any:
    return json_format.ParseDict({k: v for k, v in doc.items() if k != "@type"}, message)


def test_istio_patches_parse_with_the_generated_stubs() -> None:
    egress = _parse(ext_proc_pb2.ExternalProcessor(), _patch("HTTP_FILTER", "SIDECAR_OUTBOUND")["typed_config"])
    ingress = _parse(ext_proc_pb2.ExternalProcessor(), _patch("HTTP_FILTER", "SIDECAR_INBOUND")["typed_config"])
    assert [(m.key, m.value) for m in egress.grpc_service.initial_metadata] == [
        ("x-ext-proc-leg", "egress"), ("x-ext-proc-policy", "anthropic"),
    ]  # fmt: skip
    assert [(m.key, m.value) for m in ingress.grpc_service.initial_metadata] == [("x-ext-proc-leg", "ingress")]
    for parsed in (egress, ingress):
        assert parsed.failure_mode_allow is False
        assert parsed.processing_mode.request_body_mode == parsed.processing_mode.NONE
    # The same filter settings as the shipped Envoy config, apart from where the server is.
    shipped = bootstrap(Layout())["static_resources"]["listeners"][1]["filter_chains"][0]["filters"][0]
    shipped_filter = shipped["typed_config"]["http_filters"][0]["typed_config"]
    assert (
        _patch("HTTP_FILTER", "SIDECAR_OUTBOUND")["typed_config"]["processing_mode"]
        == shipped_filter["processing_mode"]
    )
    _parse(cluster_pb2.Cluster(), _patch("CLUSTER", "SIDECAR_OUTBOUND"))
    vhost = _patch("VIRTUAL_HOST", "SIDECAR_OUTBOUND")["typed_per_filter_config"]["envoy.filters.http.ext_proc"]
    config = _parse(route_components_pb2.FilterConfig(), {"config": vhost["config"]} | {"disabled": False})
    assert config.config.type_url.endswith("ExtProcPerRoute")


def test_istio_patch_semantics_in_a_real_envoy(tmp_path: Path) -> None:
    """The mesh filter as Istio would place it: processes api.anthropic.com, leaves every other host alone."""
    socket_path = tmp_path / "ext-proc.sock"
    server = start_server(socket_path)
    with Recorder() as recorder:
        layout = Layout(
            ingress=HostPort("127.0.0.1", free_port()), egress=HostPort("127.0.0.1", free_port()),
            anthropic=Endpoint.parse(recorder.url, "stand-in"), server_address=f"unix:{socket_path}",
            admin=HostPort("127.0.0.1", 0),
        )  # fmt: skip
        config = bootstrap(layout)
        listener = config["static_resources"]["listeners"][1]
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        (mesh_filter, mesh_answer) = [
            p["patch"]["value"] for p in _envoyfilter()["spec"]["configPatches"]
            if p["applyTo"] == "HTTP_FILTER" and p["match"]["context"] == "SIDECAR_OUTBOUND"
        ]  # fmt: skip
        assert mesh_answer["disabled"] is True and mesh_answer["name"] == ANSWER_FILTER
        hcm["http_filters"][:2] = [mesh_filter, mesh_answer]
        per_filter = _patch("VIRTUAL_HOST", "SIDECAR_OUTBOUND")["typed_per_filter_config"]
        route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]
        hcm["route_config"]["virtual_hosts"] = [
            {"name": "api.anthropic.com:80", "domains": ["api.anthropic.com"], "routes": [route],
             "typed_per_filter_config": per_filter},
            {"name": "other:80", "domains": ["*"], "routes": [route]},
        ]  # fmt: skip
        cluster = _patch("CLUSTER", "SIDECAR_OUTBOUND")
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["pipe"]["path"] = str(
            socket_path
        )
        config["static_resources"]["clusters"].append(cluster)
        envoy = start_envoy_document(config, tmp_path)
        try:
            headers = [("x-litellm-api-key", "sk-litellm-MESH"), ("x-api-key", "sk-ant-api03-MESHKEY")]
            for host in ("api.anthropic.com", "bedrock.example"):
                status, _, _ = send(layout.egress, "POST", "/v1/messages", headers, b"{}", host=host)
                assert status == 200
            anthropic, other = recorder.take()
            # Rule E9 on api.anthropic.com only: a client's own key refused reaches LiteLLM with retry-after: 0.
            recorder.refuse("sk-ant-api03-MESHKEY", 401)
            waits = {}
            for host in ("api.anthropic.com", "bedrock.example"):
                status, _, answer = send(layout.egress, "POST", "/v1/messages", headers, b"{}", host=host)
                assert status == 401
                waits[host] = answer.getheader("retry-after")
        finally:
            envoy.stop()
            server.stop()
    assert "x-litellm-api-key" not in anthropic.names and anthropic.get("x-api-key") == ["sk-ant-api03-MESHKEY"]
    assert other.get("x-litellm-api-key") == ["sk-litellm-MESH"], "the filter must stay off for other hosts"
    assert waits == {"api.anthropic.com": "0", "bedrock.example": None}


def start_envoy_document(document: dict[str, Any], workdir: Path) -> Proc:
    return start_envoy(Layout(admin=HostPort("127.0.0.1", 0)), workdir, document=document).proc


def test_litellm_patch_merges_into_a_deployment_and_validates(tmp_path: Path) -> None:
    (tmp_path / "deployment.yaml").write_text(yaml.safe_dump({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "litellm"},
        "spec": {"selector": {"matchLabels": {"app": "litellm"}}, "template": {
            "metadata": {"labels": {"app": "litellm"}},
            "spec": {"containers": [{"name": "litellm", "image": "ghcr.io/berriai/litellm:main-stable"}]}}},
    }))  # fmt: skip
    shutil.copy(K8S / "mesh" / "litellm-patch.yaml", tmp_path / "patch.yaml")
    (tmp_path / "kustomization.yaml").write_text("resources: [deployment.yaml]\npatches: [{path: patch.yaml}]\n")
    (merged,) = render_overlay(str(tmp_path))
    kubernetes_validate.validate(merged, KUBERNETES_VERSION, strict=True)
    pod = merged["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["ext-proc"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["containers"][0]["env"]}
    assert env["ANTHROPIC_API_BASE"] == "http://api.anthropic.com"
    assert env["ANTHROPIC_API_KEY"] == {"secretKeyRef": {"name": "ext-proc-secrets", "key": "egress-token"}}


def _dockerfile() -> dict[str, str]:
    """The final stage's instructions of the image recipe, by keyword."""
    final = (ROOT / "Dockerfile").read_text().split("\nFROM ")[-1]
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in final.splitlines() if line[:1].isupper()}


@pytest.mark.parametrize("name", ["sidecar", "gateway"])
def test_image_recipe_matches_what_the_manifests_assume(name: str) -> None:
    """Entrypoint, user and writable paths: what a pod asks of the image is what the image does."""
    recipe = _dockerfile()
    assert json.loads(recipe["ENTRYPOINT"]) == ["ext-proc"]
    uid, gid = recipe["USER"].split(":")
    entry_points = subprocess.run(
        [sys.executable, "-c", "from importlib.metadata import entry_points as e; "
         "print(sorted(p.name for p in e(group='console_scripts')))"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "'envoy'" in entry_points and "'ext-proc'" in entry_points, "the image's pip install puts both on PATH"
    docs = render_overlay(name)
    (pod,) = _pods(docs)
    assert (str(pod["securityContext"]["runAsUser"]), str(pod["securityContext"]["runAsGroup"])) == (uid, gid)
    (envoy_cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("envoy-config")]
    envoy = yaml.safe_load(envoy_cm["data"]["envoy.yaml"])
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        if not container["image"].startswith("ext-proc-credentials"):
            continue
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        writable = {
            m["mountPath"] for m in container["volumeMounts"]
            if "emptyDir" in next(v for v in pod["volumes"] if v["name"] == m["name"])
        }  # fmt: skip
        # Every file it creates: the server's socket (--listen), Envoy's admin socket; Python writes nothing else.
        writes = [a.removeprefix("unix:") for a in container.get("args", []) if a.startswith("unix:")]
        if container.get("command") == ["envoy"]:
            writes.append(envoy["admin"]["address"]["pipe"]["path"])
        assert writes, container["name"]
        for path in writes:
            assert any(path.startswith(w + "/") for w in writable), f"{container['name']} writes {path} read-only"


@pytest.mark.parametrize("name", ["sidecar", "gateway"])
def test_envoy_containers_cap_the_header_printing_loggers(name: str) -> None:
    (pod,) = _pods(render_overlay(name))
    (envoy,) = [c for c in [*pod.get("initContainers", []), *pod["containers"]] if c.get("command") == ["envoy"]]
    caps = log_caps()
    assert envoy["args"][envoy["args"].index(caps[0]) + 1] == caps[1]
    assert envoy["args"][envoy["args"].index("--concurrency") + 1] == "2", "two workers, not one per node CPU"
