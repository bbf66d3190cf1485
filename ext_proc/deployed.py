"""Every Envoy config the repository ships under deploy/, from one table (and the Istio patch, and the Helm chart's
templated copies of both).

`ext-proc envoy-config --all deploy/` writes them; tests check they are current and run them.
"""

from __future__ import annotations

from pathlib import Path

from ext_proc import chart
from ext_proc.envoy import Endpoint, HostPort, Layout, render
from ext_proc.istio import render_envoyfilter

# By path under deploy/: one source for each deployed layout.
POD_ADMIN = "unix:/var/run/ext-proc/envoy-admin.sock"
DEPLOYED: dict[str, Layout] = {
    "envoy.yaml": Layout(),
    "k8s/sidecar/envoy.yaml": Layout(
        egress=HostPort("127.0.0.1", 10000), litellm=Endpoint.parse("http://127.0.0.1:4000", "deployed"),
        admin=POD_ADMIN, probe=HostPort("0.0.0.0", 9902),
    ),
    "k8s/gateway/envoy.yaml": Layout(
        egress=HostPort("0.0.0.0", 10000), litellm=Endpoint.parse("http://litellm:4000", "deployed"),
        admin=POD_ADMIN, probe=HostPort("0.0.0.0", 9902),
    ),
    # The sidecar form in LiteLLM's own chart (deploy/helm/litellm/sidecar-values.yaml): Envoy takes the port the
    # chart gives LiteLLM's Service and probes (4000), LiteLLM moves to loopback 4001.
    "helm/ext-proc-credentials/files/sidecar-envoy.yaml": Layout(
        ingress=HostPort("0.0.0.0", 4000), egress=HostPort("127.0.0.1", 10000),
        litellm=Endpoint.parse("http://127.0.0.1:4001", "deployed"), admin=POD_ADMIN, probe=HostPort("0.0.0.0", 9902),
    ),
}  # fmt: skip


MESH_FILTER = "k8s/mesh/envoyfilter.yaml"
GATEWAY = "k8s/gateway/envoy.yaml"


def write_all(root: Path) -> list[Path]:
    """Write every shipped Envoy config under ``root`` (the repository's deploy/ directory)."""
    files = {root / relative: render(layout) for relative, layout in DEPLOYED.items()}
    files[root / MESH_FILTER] = render_envoyfilter()
    files |= chart.files(root, DEPLOYED[GATEWAY])
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return list(files)
