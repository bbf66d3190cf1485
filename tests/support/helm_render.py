"""The Helm chart rendered by Helm's own template engine (helm-python-sdk: Helm v4's Go SDK, no helm binary).

Also the sidecar and Istio forms in LiteLLM's own chart, which this machine cannot fetch (it lives in an OCI
registry): `litellm_chart_pod` places the values of deploy/helm/litellm/*.yaml where litellm-helm's deployment
template places them (documented values: args, envVars, extraEnvVars, extraInitContainers, volumes,
podAnnotations, podSecurityContext; the `http` container port is service.port and every probe targets it).
"""

from __future__ import annotations

import base64
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "ext-proc-credentials"
LITELLM_VALUES = ROOT / "deploy" / "helm" / "litellm"
RELEASE = "ext-proc-credentials"
Doc = dict[str, Any]


def sdk() -> ModuleType:
    """helm_python, imported at first use: its import starts Go's runtime, and a process forked after that (mutmut
    forks each mutant's run from one that has collected the tests) lacks the runtime's threads and hangs in it."""
    import helm_python

    return helm_python


def render_chart(values: dict[str, Any] | None = None, release: str = RELEASE) -> list[Doc]:
    """Every object the chart renders for these values (as `helm template RELEASE CHART`)."""
    rendered = sdk().Chart.load(CHART).render(values or {}, name=release, namespace="default", is_install=True)
    return [
        doc
        for path, text in sorted(rendered.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def find(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    (doc,) = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return doc


def secret_files(docs: list[Doc]) -> dict[str, dict[str, str]]:
    """Each rendered Secret's files, decoded, by Secret name (what the kubelet writes into a Secret volume)."""
    return {
        d["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in d["data"].items()}
        for d in docs
        if d["kind"] == "Secret"
    }


def litellm_chart_pod(values_file: Path, image: str, master_key_secret: str) -> list[Doc]:
    """LiteLLM's Deployment and Service as litellm-helm renders them with ``values_file`` given last."""
    values = yaml.safe_load(values_file.read_text())
    env = [
        {"name": "HOST", "value": "0.0.0.0"},
        {"name": "PORT", "value": "4000"},
        {"name": "PROXY_MASTER_KEY", "valueFrom": {"secretKeyRef": {"name": master_key_secret, "key": "masterkey"}}},
        *({"name": k, "value": str(v)} for k, v in values.get("envVars", {}).items()),
        *values.get("extraEnvVars", []),
    ]
    probe = {"httpGet": {"path": "/health/readiness", "port": "http"}}
    litellm = {
        "name": "litellm",
        "image": image,
        "env": env,
        "args": values.get("args", ["--config", "/etc/litellm/config.yaml"]),
        "ports": [{"name": "http", "containerPort": 4000, "protocol": "TCP"}],
        "livenessProbe": {"httpGet": {"path": "/health/liveliness", "port": "http"}},
        "readinessProbe": probe,
        "startupProbe": {**probe, "failureThreshold": 30, "periodSeconds": 10},
        # The chart mounts config.yaml by subPath; the directory holds only that file either way.
        "volumeMounts": [{"name": "litellm-config", "mountPath": "/etc/litellm"}],
    }
    labels = {"app.kubernetes.io/name": "litellm", "app.kubernetes.io/instance": "litellm"}
    pod = {
        "securityContext": values.get("podSecurityContext", {}),
        "initContainers": values.get("extraInitContainers", []),
        "containers": [litellm],
        "volumes": [{"name": "litellm-config", "configMap": {"name": "litellm-config"}}, *values.get("volumes", [])],
    }
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "litellm", "labels": labels},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
             "metadata": {"labels": labels, "annotations": values.get("podAnnotations", {})}, "spec": pod}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "litellm"},
         "spec": {"selector": labels, "ports": [{"name": "http", "port": 4000, "targetPort": "http"}]}},
    ]  # fmt: skip
