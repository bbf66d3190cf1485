"""A pod run as the kubelet would run it, without a cluster: the manifests' own commands, files, env and probes.

What is the manifest's, as written: each container's command/args/env (secretKeyRef resolved from the test's
Secrets), the files its volumes hold (ConfigMaps and Secrets written at the paths the mounts name, under a
temporary root: only that path prefix is rewritten, in arguments, env and file contents alike), the native-sidecar
order (init containers with `restartPolicy: Always` first, in order, each past its startup probe before the next
starts), and every probe (exec, httpGet and tcpSocket on the container's own named ports, grpc) polled at its
period until it passes or its failureThreshold is spent.

What stands in for the cluster: images are the binaries the image recipe installs (`ext-proc` and `envoy` from
this virtualenv, LiteLLM's image from a pinned LiteLLM environment); Envoy's upstream clusters that name a DNS
host (api.anthropic.com, a Service) are pointed at local processes, since there is no network here; a probe's
target must listen on a wildcard address, since the kubelet reaches the pod IP, not loopback.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.processes import BIN, Proc

Doc = dict[str, Any]


K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def render_overlay(name: str) -> list[dict[str, Any]]:
    """The rendered objects of one overlay under deploy/k8s (or of any kustomization directory)."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with kustomize) is needed to render deploy/k8s; this machine image ships it"
    result = subprocess.run([kubectl, "kustomize", str(K8S / name)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


class ProbeFailed(AssertionError):
    pass


@dataclass
class Pod:
    """A Deployment's pod template from rendered manifests, laid out under ``root``."""

    docs: list[Doc]
    deployment: str
    secrets: Mapping[str, Mapping[str, str]]
    images: Mapping[str, Callable[[], str]]
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pod-", dir="/tmp")))
    # Extra environment for every container, the test machine's own needs (no network), named in the test.
    machine_env: Mapping[str, str] = field(default_factory=dict)
    # Envoy config rewrites: cluster name -> (host, port) on this machine, and whether to drop TLS.
    clusters: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    running: list[Proc] = field(default_factory=list)

    @property
    def spec(self) -> Doc:
        (deployment,) = [d for d in self.docs if d["kind"] == "Deployment" and d["metadata"]["name"] == self.deployment]
        return dict(deployment["spec"]["template"]["spec"])

    def _object(self, kind: str, name: str) -> Doc:
        (doc,) = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name]
        return doc

    def _mounts(self) -> list[str]:
        """Every mount path in the pod, longest first, for prefix rewriting."""
        containers = [*self.spec.get("initContainers", []), *self.spec["containers"]]
        paths = {m["mountPath"] for c in containers for m in c.get("volumeMounts", [])}
        return sorted(paths, key=len, reverse=True)

    def local(self, text: str) -> str:
        """Every path under a mount, moved under the root (one pass: a rewritten path is not rewritten again)."""
        alternatives = "|".join(re.escape(m) for m in self._mounts())
        pattern = rf"(?<![\w./-])(?:{alternatives})(?=/|[^\w.-]|$)"
        return re.sub(pattern, lambda m: str(self.root) + m.group(0), text)

    def lay_out(self) -> None:
        """Each volume's files, at every path a container mounts it (one shared directory per volume)."""
        volumes = {v["name"]: v for v in self.spec["volumes"]}
        containers = [*self.spec.get("initContainers", []), *self.spec["containers"]]
        for mount in sorted({(m["name"], m["mountPath"]) for c in containers for m in c.get("volumeMounts", [])},
                            key=lambda m: len(m[1])):  # fmt: skip
            name, path = mount
            source = self.root / ".volumes" / name
            if not source.exists():
                source.mkdir(parents=True)
                self._fill(source, volumes[name])
            target = Path(str(self.root) + path)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.symlink_to(source)

    def _fill(self, directory: Path, volume: Doc) -> None:
        if "configMap" in volume:
            data = self._object("ConfigMap", volume["configMap"]["name"])["data"]
        elif "secret" in volume:
            data = self.secrets[volume["secret"]["secretName"]]
        else:
            return  # emptyDir
        # As the kubelet writes them: a Secret's files get the volume's defaultMode (0644 when unset).
        mode = volume["secret"].get("defaultMode", 0o644) if "secret" in volume else 0o644
        for key, value in data.items():
            text = self.local(value)
            if key.endswith(".yaml") and "static_resources" in value:
                text = self._envoy(text)
            (directory / key).write_text(text)
            (directory / key).chmod(mode)

    def _envoy(self, text: str) -> str:
        doc = yaml.safe_load(text)
        for cluster in doc["static_resources"]["clusters"]:
            if cluster["name"] in self.clusters:
                host, port = self.clusters[cluster["name"]]
                endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                endpoint["address"] = {"socket_address": {"address": host, "port_value": port}}
                cluster.pop("transport_socket", None)
        return str(yaml.safe_dump(doc, sort_keys=False))

    def env(self, container: Doc) -> dict[str, str]:
        env = {"PATH": f"{BIN}:{os.environ.get('PATH', '')}", **self.machine_env}
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = self.local(str(item["value"]))
            else:
                ref = item["valueFrom"]["secretKeyRef"]
                env[item["name"]] = self.secrets[ref["name"]][ref["key"]]
        return env

    def argv(self, container: Doc) -> list[str]:
        image = container["image"]
        entry = next((run for prefix, run in self.images.items() if image.startswith(prefix)), None)
        assert entry is not None, f"no stand-in binary for image {image}"
        # The manifest's words move under the root; the image's entrypoint is a binary of this machine as it is.
        command = [self.local(a) for a in container["command"]] if "command" in container else [entry()]
        return [*command, *(self.local(a) for a in container.get("args", []))]

    def start(self, container: Doc) -> Proc:
        proc = Proc(self.argv(container), self.env(container), unset=tuple(os.environ))
        self.running.append(proc)
        return proc

    def probe(self, container: Doc, kind: str) -> None:
        """Poll one declared probe until it passes, or fail once its failureThreshold is spent."""
        spec = container.get(kind)
        if spec is None:
            return
        period = spec.get("periodSeconds", 10)
        threshold = spec.get("failureThreshold", 3)
        time.sleep(spec.get("initialDelaySeconds", 0))
        failures = []
        for _ in range(threshold):
            started = time.monotonic()
            outcome = self._probe_once(container, spec)
            if outcome is None:
                return
            failures.append(outcome)
            time.sleep(max(0.0, period - (time.monotonic() - started)))
        raise ProbeFailed(f"{container['name']} {kind} failed {threshold} times: {failures[-1]}")

    def _probe_once(self, container: Doc, spec: Doc) -> str | None:
        timeout = spec.get("timeoutSeconds", 1)
        try:
            if "exec" in spec:
                command = [self.local(a) for a in spec["exec"]["command"]]
                result = subprocess.run(command, env=self.env(container), capture_output=True, text=True,
                                        timeout=timeout + 5, check=False)  # fmt: skip
                return None if result.returncode == 0 else f"exit {result.returncode}: {result.stderr.strip()}"
            if "httpGet" in spec or "tcpSocket" in spec:
                action = spec.get("httpGet") or spec["tcpSocket"]
                port = self._port(container, action["port"])
                wildcard = listens_on_wildcard(port)
                if wildcard is not True:
                    return f"port {port}: {'nothing listens' if wildcard is None else 'bound to loopback only'}"
                if "tcpSocket" in spec:
                    socket.create_connection(("127.0.0.1", port), timeout=timeout).close()
                    return None
                url = f"http://127.0.0.1:{port}{action.get('path', '/')}"
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    return None if 200 <= response.status < 400 else f"HTTP {response.status}"
            if "grpc" in spec:
                port = spec["grpc"]["port"]
                with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
                return None if status.status == health_pb2.HealthCheckResponse.SERVING else "NOT_SERVING"
        except (OSError, subprocess.TimeoutExpired, grpc.RpcError) as exc:
            return repr(exc)
        raise AssertionError(f"unknown probe {spec}")

    @staticmethod
    def _port(container: Doc, port: int | str) -> int:
        """A named port is looked up among this container's own ports, as the kubelet does."""
        if isinstance(port, int):
            return port
        named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
        if port not in named:
            raise OSError(f"container {container['name']} has no port named {port!r}")
        return int(named[port])

    @contextmanager
    def running_pod(self) -> Iterator[Pod]:
        """Native sidecars in order (each past its startup probe), then the containers, then every probe."""
        self.lay_out()
        try:
            sidecars = [c for c in self.spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
            assert len(sidecars) == len(self.spec.get("initContainers", [])), "only native sidecars are run here"
            for container in sidecars:
                self.start(container)
                self.probe(container, "startupProbe")
            for container in self.spec["containers"]:
                self.start(container)
                self.probe(container, "startupProbe")
            for container in [*sidecars, *self.spec["containers"]]:
                self.probe(container, "readinessProbe")
                self.probe(container, "livenessProbe")
            yield self
        finally:
            for proc in reversed(self.running):
                proc.stop()
            shutil.rmtree(self.root, ignore_errors=True)

    def service_port(self, service: str) -> int:
        """The container port a Service's first port targets (by name or number)."""
        target = self._object("Service", service)["spec"]["ports"][0]["targetPort"]
        for container in [*self.spec.get("initContainers", []), *self.spec["containers"]]:
            for port in container.get("ports", []):
                if target in (port.get("name"), port["containerPort"]):
                    return int(port["containerPort"])
        raise AssertionError(f"Service {service} targets {target!r}, which no container declares")


def listens_on_wildcard(port: int) -> bool | None:
    """True if some socket listens on 0.0.0.0 or :: at this port, False if only on loopback, None if none."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].rpartition(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:
                found.add(address)
    if not found:
        return None
    return any(set(address) == {"0"} for address in found)
