"""The Helm chart, rendered by Helm's own engine: schemas, lint, values that must fail, and one source with the
kustomize forms and the Envoy builders.

- every render (defaults, each mode, each shipped values file) validates against the Kubernetes schemas, and
  `helm lint --strict` passes;
- a wrong value (mode, a misspelt or mistyped server setting, a port, a short egress token) fails at install;
- the Envoy config and EnvoyFilter the chart renders are the builders' output for the same values, and Envoy
  accepts them;
- gateway and istio renders hold what deploy/k8s's gateway and mesh overlays hold (containers, probes, volumes,
  ports, policies, configs), and the LiteLLM-chart values files hold the sidecar and mesh forms' containers;
- the Secret is generated, taken from values, or not made (existingSecret), and what it holds is what the server
  accepts.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import re
import shlex
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ext_proc.chart import CHART_SETS, _templated, config_schema, sentinel_layout
from ext_proc.cli import HEALTH_SECONDS
from ext_proc.config import Config
from ext_proc.deployed import DEPLOYED, GATEWAY
from ext_proc.envoy import Endpoint, HostPort, Layout, bootstrap, find_envoy
from ext_proc.istio import envoyfilter
from ext_proc.secrets import load_secrets
from tests.support.helm_render import (
    CHART,
    LITELLM_VALUES,
    Doc,
    find,
    litellm_chart_pod,
    render_chart,
    sdk,
    secret_files,
)
from tests.support.pods import render_overlay

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES_VERSION = "1.33.0"
MODES: dict[str, dict[str, Any]] = {
    "gateway": {},
    "gateway-monitored": {"monitoring": {"podMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}},
    "sidecar": {"mode": "sidecar"},
    "istio": {"mode": "istio", "monitoring": {"podMonitor": {"enabled": True}}},
    "existing-secret": {"secrets": {"existingSecret": "my-secrets", "existingSecretHasServerCredential": True}},
}
# Kinds whose schemas are not Kubernetes' own (Istio, the Prometheus Operator): checked by the tests below.
CUSTOM = ("networking.istio.io/", "monitoring.coreos.com/")


@pytest.mark.parametrize("name", MODES)
def test_every_render_validates_against_the_kubernetes_schemas(name: str) -> None:
    docs = render_chart(MODES[name])
    core = [d for d in docs if not d["apiVersion"].startswith(CUSTOM)]
    for doc in core:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert len(core) >= 2, name


@pytest.mark.parametrize("name", MODES)
def test_helm_lint_passes(name: str) -> None:
    report = sdk().lint(CHART, MODES[name], strict=True, kube_version=f"v{KUBERNETES_VERSION}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"mode": "sidecars"}, "at '/mode': value must be one of"),
        ({"config": {"seal_max_open": 3}}, "additional properties 'seal_max_open' not allowed"),
        ({"config": {"seal_max_opens": "3"}}, "at '/config/seal_max_opens': got string, want integer"),
        ({"config": {"egress_token": "egress-" + "a" * 40}}, "additional properties 'egress_token' not allowed"),
        ({"config": {"egress_token_file": "/run/token"}}, "additional properties 'egress_token_file' not allowed"),
        ({"gateway": {"ports": {"http": 70000}}}, "at '/gateway/ports/http': maximum"),
        ({"secrets": {"egressToken": "short"}}, "at '/secrets/egressToken'"),
        # Helm merges maps: null removes the default label, and no label at all would select every pod.
        ({"litellm": {"podLabels": {"app.kubernetes.io/name": None}}}, "at '/litellm/podLabels'"),
        ({"litellm": {"host": "litellm\nadmin: {}"}}, "at '/litellm/host'"),
        ({"replicas": 3}, "additional properties 'replicas' not allowed"),
    ],
)
def test_a_wrong_value_fails_at_install(values: dict[str, Any], error: str) -> None:
    with pytest.raises(sdk().HelmValuesError, match=re.escape(error)):
        render_chart(values)


def test_the_config_value_takes_every_setting_but_secrets_and_what_the_chart_sets() -> None:
    served = {f.name for f in dataclasses.fields(Config) if "serve" in f.metadata["commands"]}
    secrets = {f.name for f in dataclasses.fields(Config) if not f.repr}
    assert set(config_schema()["properties"]) == served - CHART_SETS
    assert not secrets & served, "a secret is no flag"
    assert secrets == {"seal_keys", "server_credential", "egress_token", "litellm_keys"}


def _config_toml(docs: list[Doc], tmp_path: Path, files: dict[str, str]) -> Config:
    """The rendered config.toml loaded by the server, with the Secret's files where the chart mounts them."""
    text = find(docs, "ConfigMap", "ext-proc-credentials-config")["data"]["config.toml"]
    for name, content in files.items():
        (tmp_path / name).write_text(content)
        (tmp_path / name).chmod(0o600)
    text = text.replace("/etc/ext-proc/secrets/", f"{tmp_path}/")
    (tmp_path / "config.toml").write_text(text)
    return Config.load(tmp_path / "config.toml", {})


def test_every_server_setting_renders_to_a_config_the_server_loads(tmp_path: Path) -> None:
    """Each setting's default, given as a value, comes out as the same setting (TOML written by the template)."""
    defaults = Config()
    every = {
        name: list(value) if isinstance(value, tuple) else value
        for name in config_schema()["properties"]
        if (value := getattr(defaults, name)) is not None
    }
    every |= {"oauth_beta": 'oauth-"quoted" \\ <b>', "audit_sample_rate": 0.25}
    docs = render_chart({"config": every})
    secrets = secret_files(docs)["ext-proc-credentials"]
    loaded = _config_toml(docs, tmp_path, secrets)
    for name, value in every.items():
        expected = tuple(value) if isinstance(value, list) else value
        assert getattr(loaded, name) == expected, name


def test_a_generated_secret_is_one_the_server_accepts(tmp_path: Path) -> None:
    docs = render_chart()
    secrets = secret_files(docs)["ext-proc-credentials"]
    assert set(secrets) == {"seal-keys", "egress-token"}
    config = _config_toml(docs, tmp_path, secrets)
    assert load_secrets(config).egress_token == secrets["egress-token"].encode()
    assert config.server_credential_file is None
    keyring = load_secrets(dataclasses.replace(config, seal_key_file=tmp_path / "seal-keys")).keyring
    assert keyring is not None
    # Generated anew for each render without a cluster (docs: set them or use existingSecret with Argo CD).
    assert secret_files(render_chart())["ext-proc-credentials"]["egress-token"] != secrets["egress-token"]


def test_secret_values_are_used_as_given(tmp_path: Path) -> None:
    given = {"sealKeys": base64.b64encode(bytes(32)).decode(), "egressToken": "egress-" + "t" * 40,
             "serverCredential": "sk-ant-api03-" + "s" * 40}  # fmt: skip
    docs = render_chart({"secrets": given})
    secrets = secret_files(docs)["ext-proc-credentials"]
    assert secrets == {"seal-keys": given["sealKeys"], "egress-token": given["egressToken"],
                       "server-credential": given["serverCredential"]}  # fmt: skip
    config = _config_toml(docs, tmp_path, secrets)
    assert config.server_credential_file == tmp_path / "server-credential"


def test_an_existing_secret_is_mounted_and_none_is_made() -> None:
    docs = render_chart(MODES["existing-secret"])
    assert secret_files(docs) == {}
    volumes = find(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "ext-proc-secrets", "secret": {"secretName": "my-secrets", "defaultMode": 0o440}} in volumes
    toml = tomllib.loads(find(docs, "ConfigMap", "ext-proc-credentials-config")["data"]["config.toml"])
    assert toml["server_credential_file"] == "/etc/ext-proc/secrets/server-credential"


def _envoy_accepts(text: str, tmp_path: Path) -> None:
    (tmp_path / "envoy.yaml").write_text(text)
    result = subprocess.run([str(find_envoy()), "--mode", "validate", "-c", str(tmp_path / "envoy.yaml")],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def _envoy(docs: list[Doc]) -> str:
    return str(find(docs, "ConfigMap", "ext-proc-credentials-envoy")["data"]["envoy.yaml"])


@pytest.mark.parametrize(
    "values",
    [{}, {"litellm": {"host": "litellm.ai.svc.cluster.local", "port": 4400},
          "gateway": {"ports": {"http": 18080, "egress": 11000, "probe": 19902}}}],
)  # fmt: skip
def test_the_embedded_envoy_config_is_the_builders_output_for_these_values(
    values: dict[str, Any], tmp_path: Path
) -> None:
    merged = sdk().Chart.load(CHART).merge_values(values)
    ports, litellm = merged["gateway"]["ports"], merged["litellm"]
    layout = dataclasses.replace(
        DEPLOYED[GATEWAY], ingress=HostPort("0.0.0.0", ports["http"]), egress=HostPort("0.0.0.0", ports["egress"]),
        probe=HostPort("0.0.0.0", ports["probe"]), litellm=Endpoint("http", litellm["host"], litellm["port"]),
    )  # fmt: skip
    text = _envoy(render_chart(values))
    assert yaml.safe_load(text) == bootstrap(layout)
    _envoy_accepts(text, tmp_path)


def test_the_sidecar_mode_renders_the_sidecar_layout(tmp_path: Path) -> None:
    text = _envoy(render_chart({"mode": "sidecar"}))
    assert text == (ROOT / "deploy" / "helm" / "ext-proc-credentials" / "files" / "sidecar-envoy.yaml").read_text()
    assert yaml.safe_load(text) == bootstrap(DEPLOYED["helm/ext-proc-credentials/files/sidecar-envoy.yaml"])
    _envoy_accepts(text, tmp_path)


def test_the_envoyfilter_is_the_builders_output() -> None:
    docs = render_chart({"mode": "istio", "istio": {"litellmPort": 4400}})
    rendered = find(docs, "EnvoyFilter")
    assert rendered["spec"]["configPatches"] == envoyfilter(inbound_port=4400)["spec"]["configPatches"]
    assert rendered["spec"]["workloadSelector"] == {"labels": {"app.kubernetes.io/name": "litellm"}}
    assert {d["kind"] for d in docs} == {"ConfigMap", "Secret", "EnvoyFilter", "ServiceEntry", "DestinationRule"}


def test_the_prometheus_rule_holds_deploy_monitoring_s_groups() -> None:
    docs = render_chart(MODES["gateway-monitored"])
    alerts = yaml.safe_load((ROOT / "deploy" / "monitoring" / "alerts.yaml").read_text())
    assert find(docs, "PrometheusRule")["spec"] == alerts
    monitor = find(docs, "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"] == find(docs, "Deployment")["spec"]["selector"]["matchLabels"]


# One source: the chart's forms against deploy/k8s's overlays, with the values that name things as kustomize does.
KUSTOMIZE_LIKE = {"litellm": {"podLabels": {"app": "litellm", "app.kubernetes.io/name": None}}}
_HELM_LABELS = ("helm.sh/", "app.kubernetes.io/")


def _normalised(value: Any, names: dict[str, str]) -> Any:
    """Object names mapped to the overlay's, image tags and Helm's own labels and checksums left out."""
    if isinstance(value, dict):
        return {
            k: _normalised(v, names)
            for k, v in value.items()
            if k not in ("image", "imagePullPolicy", "checksum/config") and not k.startswith(_HELM_LABELS)
        }
    if isinstance(value, list):
        return [_normalised(v, names) for v in value]
    if isinstance(value, str):
        return names.get(value, value)
    return value


def _kustomize_names(docs: list[Doc]) -> dict[str, str]:
    envoy = next(d["metadata"]["name"] for d in docs if d["metadata"]["name"].startswith("envoy-config"))
    return {
        "ext-proc-credentials": "ext-proc-secrets",
        "ext-proc-credentials-config": "ext-proc-config",
        "ext-proc-credentials-envoy": envoy,
        "ext-proc-credentials-egress": "ext-proc-egress",
    }


def test_the_gateway_mode_is_the_gateway_overlay() -> None:
    chart, overlay = render_chart(KUSTOMIZE_LIKE), render_overlay("gateway")
    names = _kustomize_names(overlay)
    pod = _normalised(find(chart, "Deployment")["spec"]["template"]["spec"], names)
    expected = _normalised(find(overlay, "Deployment")["spec"]["template"]["spec"], {})
    selector = {"app.kubernetes.io/name": "ext-proc-credentials", "app.kubernetes.io/instance": "ext-proc-credentials"}
    expected["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"] = {}
    pod["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"] = {}
    assert pod == expected
    assert find(chart, "Deployment")["spec"]["selector"]["matchLabels"] == selector
    assert find(chart, "Deployment")["spec"]["replicas"] == find(overlay, "Deployment")["spec"]["replicas"]
    for kind, name, kustomized in [("Service", "ext-proc-credentials", "ext-proc-gateway"),
                                   ("Service", "ext-proc-credentials-egress", "ext-proc-egress"),
                                   ("PodDisruptionBudget", None, None), ("NetworkPolicy", None, None)]:  # fmt: skip
        ours, theirs = find(chart, kind, name)["spec"], find(overlay, kind, kustomized)["spec"]
        for spec in (ours, theirs):
            for key in ("selector", "podSelector"):
                spec.pop(key, None)
        assert ours.pop("type", "ClusterIP") == "ClusterIP"  # Kubernetes' default, which the overlay leaves to it
        assert ours == theirs, kind
    assert _envoy(chart) == find(overlay, "ConfigMap", names["ext-proc-credentials-envoy"])["data"]["envoy.yaml"]
    config = find(chart, "ConfigMap", "ext-proc-credentials-config")["data"]["config.toml"]
    assert tomllib.loads(config) == tomllib.loads(find(overlay, "ConfigMap", "ext-proc-config")["data"]["config.toml"])


def _as_in_litellm_s_pod(container: Doc, pod_security: Doc) -> Doc:
    """A container of an overlay's pod as it stands in LiteLLM's pod: the pod-level user on the container."""
    moved = copy.deepcopy(container)
    user = {k: pod_security[k] for k in ("runAsNonRoot", "runAsUser", "runAsGroup") if k in pod_security}
    moved["securityContext"] = {**user, **moved["securityContext"]}
    for mount in moved.get("volumeMounts", []):
        mount["name"] = {"tmp": "ext-proc-tmp"}.get(mount["name"], mount["name"])
    return moved


def test_the_litellm_chart_sidecar_values_hold_the_sidecar_overlay_s_containers() -> None:
    values = yaml.safe_load((LITELLM_VALUES / "sidecar-values.yaml").read_text())
    overlay = render_overlay("sidecar")
    pod = find(overlay, "Deployment")["spec"]["template"]["spec"]
    expected = [_as_in_litellm_s_pod(c, pod["securityContext"]) for c in pod["initContainers"]]
    # Envoy's ingress port is declared by LiteLLM's container in LiteLLM's chart (`http`, its Service's target).
    expected[1]["ports"] = [p for p in expected[1]["ports"] if p["name"] != "http"]
    assert _normalised(values["extraInitContainers"], {}) == _normalised(expected, {})
    assert values["podSecurityContext"] == {"fsGroup": pod["securityContext"]["fsGroup"]}
    names = _kustomize_names(overlay) | {"ext-proc-tmp": "tmp"}
    volumes = {v["name"]: v for v in _normalised(values["volumes"], names)}
    theirs = {v["name"]: v for v in pod["volumes"]}
    for name, volume in volumes.items():
        if name != "tmp":  # LiteLLM's own tmp is LiteLLM's chart's; the server's is its own
            assert volume == theirs[name], name


def test_the_litellm_chart_istio_values_hold_the_mesh_patch() -> None:
    values = yaml.safe_load((LITELLM_VALUES / "istio-values.yaml").read_text())
    patch = yaml.safe_load((ROOT / "deploy" / "k8s" / "mesh" / "litellm-patch.yaml").read_text())["spec"]["template"]
    assert values["podAnnotations"] == patch["metadata"]["annotations"]
    assert values["podSecurityContext"] == patch["spec"]["securityContext"]
    assert _normalised(values["extraInitContainers"], {}) == _normalised(patch["spec"]["initContainers"], {})
    names = {"ext-proc-credentials-config": "ext-proc-config", "ext-proc-credentials": "ext-proc-secrets"}
    assert _normalised(values["volumes"], names) == patch["spec"]["volumes"]
    env = {e["name"]: e for e in patch["spec"]["containers"][0]["env"]}
    assert values["envVars"] == {"ANTHROPIC_API_BASE": env["ANTHROPIC_API_BASE"]["value"]}
    assert _normalised(values["extraEnvVars"], names) == [env["ANTHROPIC_API_KEY"]]


def test_the_istio_mode_is_the_mesh_overlay() -> None:
    chart, overlay = render_chart({"mode": "istio", **KUSTOMIZE_LIKE}), render_overlay("mesh")
    for kind in ("EnvoyFilter", "ServiceEntry", "DestinationRule"):
        assert find(chart, kind)["spec"] == find(overlay, kind)["spec"], kind
    config = find(chart, "ConfigMap", "ext-proc-credentials-config")["data"]["config.toml"]
    assert tomllib.loads(config) == tomllib.loads(find(overlay, "ConfigMap", "ext-proc-config")["data"]["config.toml"])


def _helm_commands() -> list[list[str]]:
    """Every `helm install|upgrade` command in README and docs/, split as a shell would."""
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text().replace("\\\n", " ")
        found += [shlex.split(line) for line in re.findall(r"^helm (?:install|upgrade) .*$", text, re.MULTILINE)]
    return found


def _parsed(argv: list[str]) -> tuple[str, str, list[str], list[str]]:
    """Release, chart, values files and --set expressions of `helm install|upgrade [--install] RELEASE CHART ...`."""
    words = [w for w in argv[2:] if w not in ("--install", "--wait")]
    positional: list[str] = []
    files: list[str] = []
    sets: list[str] = []
    i = 0
    while i < len(words):
        if words[i] in ("-f", "--values", "--set", "--version", "--namespace", "-n"):
            {"-f": files, "--values": files, "--set": sets}.get(words[i], []).append(words[i + 1])
            i += 2
        else:
            positional.append(words[i])
            i += 1
    return positional[0], positional[1], files, sets


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        merged[key] = (
            _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def test_every_helm_command_in_the_docs_renders() -> None:
    """Ours render with Helm; LiteLLM's (an OCI chart this machine cannot fetch) give a values file of
    deploy/helm/litellm last."""
    commands = [_parsed(argv) for argv in _helm_commands()]
    ours = [c for c in commands if c[1] == "deploy/helm/ext-proc-credentials"]
    theirs = [c for c in commands if c[1] == "oci://ghcr.io/berriai/litellm-helm"]
    assert len(ours) >= 3 and len(theirs) >= 3, commands
    for release, _, files, sets in ours:
        values: dict[str, Any] = {}
        for file in files:
            values = _merge(values, yaml.safe_load((ROOT / file).read_text()))
        for expression in sets:
            values = _merge(values, sdk().parse_set_string(expression))
        assert render_chart(values, release=release)
    for _, _, files, _ in theirs:
        assert (ROOT / files[-1]).parent == LITELLM_VALUES and (ROOT / files[-1]).is_file(), files


def test_the_litellm_chart_gateway_values_point_at_the_chart_s_egress() -> None:
    values = yaml.safe_load((LITELLM_VALUES / "gateway-values.yaml").read_text())
    docs = render_chart()
    egress = find(docs, "Service", "ext-proc-credentials-egress")
    port = egress["spec"]["ports"][0]["port"]
    assert values["envVars"] == {"ANTHROPIC_API_BASE": f"http://{egress['metadata']['name']}:{port}"}
    (token,) = values["extraEnvVars"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "ext-proc-credentials", "key": "egress-token"}
    assert "egress-token" in secret_files(docs)["ext-proc-credentials"]
    # LiteLLM's chart labels its pods app.kubernetes.io/name: litellm: the pods the egress listener admits.
    policy = find(docs, "NetworkPolicy")["spec"]["ingress"][1]
    assert policy["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "litellm"}}}]


@pytest.mark.parametrize("name", ["sidecar-values.yaml", "istio-values.yaml", "gateway-values.yaml"])
def test_litellm_s_pod_with_each_values_file_validates(name: str) -> None:
    """What LiteLLM's chart places from each values file (tests/support/helm_render.py) is a valid pod, its sidecars
    native ones, every mount backed by a volume."""
    deployment, service = litellm_chart_pod(LITELLM_VALUES / name, "ghcr.io/berriai/litellm:main-stable", "litellm")
    for doc in (deployment, service):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    pod = deployment["spec"]["template"]["spec"]
    assert all(c["restartPolicy"] == "Always" for c in pod["initContainers"])
    # Istio's injector adds the volumes its userVolume annotation names (the socket shared with istio-proxy).
    injected = json.loads(
        deployment["spec"]["template"]["metadata"]["annotations"].get("sidecar.istio.io/userVolume", "{}")
    )
    volumes = {v["name"] for v in pod["volumes"]} | set(injected)
    for container in [*pod["initContainers"], *pod["containers"]]:
        assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes, container["name"]


@pytest.mark.parametrize(
    ("layout", "probe", "scheme"),
    [(Layout(), HostPort("0.0.0.0", 61003), "http"),
     (Layout(probe=HostPort("10.0.0.1", 9902), litellm=Endpoint("https", "l", 443)), HostPort("10.0.0.1", 61003),
      "https")],
)  # fmt: skip
def test_the_chart_s_layout_keeps_every_host_and_scheme_and_always_has_a_probe(
    layout: Layout, probe: HostPort, scheme: str
) -> None:
    """The chart's pods are probed over HTTP whatever the layout they came from said; only the values it sets move."""
    sentinels = sentinel_layout(layout)
    assert (sentinels.probe, sentinels.litellm) == (probe, Endpoint(scheme, "litellm.sentinel.invalid", 61004))
    assert (sentinels.ingress, sentinels.egress) == (HostPort(layout.ingress.host, 61001),
                                                     HostPort(layout.egress.host, 61002))  # fmt: skip


@pytest.mark.parametrize(
    ("text", "refusal"),
    [("a: '{{ x }}'\n", "a generated config holds '{{': Helm would take it for a template action"),
     ("port_value: 61001\nport_value: 61001\n", "'port_value: 61001' occurs more than once")],
)  # fmt: skip
def test_a_generated_config_helm_would_misread_is_refused(text: str, refusal: str) -> None:
    with pytest.raises(ValueError) as refused:
        _templated(text)
    assert str(refused.value) == refusal
    assert _templated("port_value: 61001\n") == "port_value: {{ .Values.gateway.ports.http }}\n"


def _exec_probes(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key.endswith("Probe") and isinstance(value, dict) and "exec" in value:
                yield value
            else:
                yield from _exec_probes(value)
    elif isinstance(node, list):
        for item in node:
            yield from _exec_probes(item)


def test_every_shipped_health_probe_outlasts_the_command_s_own_deadline() -> None:
    """Kubernetes' default timeoutSeconds is 1: an `ext-proc health` probe without one (the startup probes had none)
    is killed before the command's own deadline, and a slow start reads as a failed probe."""
    deploy = Path(__file__).resolve().parent.parent / "deploy"
    files = [*(deploy / "k8s").rglob("*.yaml"), *(deploy / "helm" / "litellm").glob("*.yaml")]
    docs = [*render_chart(), *(d for f in files for d in yaml.safe_load_all(f.read_text()))]
    probes = [p for p in _exec_probes(docs) if p["exec"]["command"][:2] == ["ext-proc", "health"]]
    assert len(probes) >= 12 and [p for p in probes if p.get("timeoutSeconds", 1) <= HEALTH_SECONDS] == []
