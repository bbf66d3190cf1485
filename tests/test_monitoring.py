"""The operators' kit in deploy/monitoring/ against what the gateway really exports (docs/operations.md).

The alert rules pass `promtool check rules` and their unit tests (`promtool test rules`); the PrometheusRule holds
the same groups; every dashboard query parses as PromQL; and every metric that a dashboard panel or an alert
queries, with every label it filters or groups on, is exported by a running `ext-proc up` (the server's /metrics)
or its Envoy (GET /stats/prometheus on the probe listener, as the PodMonitor scrapes it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from ext_proc.envoy import HostPort
from ext_proc.names import LEGS, POLICIES
from ext_proc.rules import Source
from ext_proc.seal import SealFailure
from tests.support.http import get_text, send
from tests.support.processes import Proc, free_port, wait_for
from tests.support.recorder import Recorder
from tests.support.up_command import TOKEN, running_up

MONITORING = Path(__file__).resolve().parents[1] / "deploy" / "monitoring"
PROMTOOL = shutil.which("promtool")
# Grafana's variables, as a query would run with "All" selected.
VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$job": ".*"}
SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?\s*(\[[^\]]*\])?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
# Labels Prometheus adds at scrape time.
TARGET_LABELS = {"job", "instance"}
# The closed sets the server's labels come from: an alert on a value outside them could never fire.
CLOSED = {
    "leg": set(LEGS),
    "policy": set(POLICIES),
    "source": {s.value for s in Source} | {"sealed"},
    "result": {"ok", "rejected"},
    "file": {"seal_key_file", "server_credential_file", "egress_token_file"},
}


def promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    if PROMTOOL is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: scripts/test.sh installs Debian's prometheus package as root")
        pytest.skip("promtool is not installed (Debian's prometheus package)")
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
    return found


def alert_queries() -> list[tuple[str, str]]:
    groups = yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


def substituted(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """Each metric selector in a PromQL expression: its name and its label matchers."""
    found = []
    for name, braces, window in SELECTOR.findall(expr):
        if braces or window:
            found.append((name, MATCHER.findall(braces)))
    return found


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    checked = promtool("check", "rules", "alerts.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts.test.yaml")
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    tests = yaml.safe_load((MONITORING / "alerts.test.yaml").read_text())["tests"]
    fired = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case["exp_alerts"]}
    silent = {case["alertname"] for t in tests for case in t["alert_rule_test"] if not case["exp_alerts"]}
    alerts = {name for name, _ in alert_queries()}
    assert alerts <= fired, f"alerts never shown firing: {sorted(alerts - fired)}"
    assert len(silent) >= len(alerts) // 2, "most alerts are also shown staying silent"


def test_the_prometheusrule_holds_the_same_groups_as_the_rules_file() -> None:
    plain = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    operator = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert operator["kind"] == "PrometheusRule" and operator["apiVersion"] == "monitoring.coreos.com/v1"
    assert operator["spec"]["groups"] == plain["groups"]


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 15
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": substituted(expr)} for i, (_, expr) in enumerate(queries)
    ]}]}  # fmt: skip
    (tmp_path / "dashboard-rules.yaml").write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", "dashboard-rules.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for _, expr in queries:
        assert not re.search(r"\$\w+", substituted(expr)), f"a variable the test does not know: {expr}"


def test_the_dashboard_is_importable_as_is() -> None:
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    assert "id" not in dashboard and dashboard["uid"] == "ext-proc-credentials"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["description"], f"{panel['title']}: every panel says what it shows"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    configmap = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())["configMapGenerator"][0]
    assert configmap["files"] == ["dashboard.json"] and configmap["options"]["labels"] == {"grafana_dashboard": "1"}


def _exported(text: str) -> dict[str, set[str]]:
    """Every sample name in a Prometheus text exposition, as Prometheus stores it, with the label names it carries.

    A family declared but with no sample yet (a labelled counter never incremented) counts by its declared type.
    Parsed here rather than with prometheus_client's parser, which renames counters that lack ``_total``.
    """
    suffixes = {"histogram": ["_bucket", "_sum", "_count"]}
    names: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            for suffix in suffixes.get(kind, [""]):
                names.setdefault(family + suffix, set())
        elif line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            labels = set(re.findall(r'(\w+)="', rest.rpartition("}")[0])) if rest else set()
            names.setdefault(name.split()[0], set()).update(labels)
    return names


@contextmanager
def scraped_up(tmp_path: Path) -> Iterator[tuple[HostPort, HostPort, int, int]]:
    """`up` with both scrape endpoints (the server's /metrics, Envoy's stats on the probe listener) and forwarded
    decisions already counted: sealed on the ingress, with the server credential on the egress, and a client's
    token Anthropic refuses.
    Yields the ingress, the egress, the metrics port and the probe port."""
    probe, metrics = free_port(), free_port()
    with (
        Recorder() as recorder,
        running_up(tmp_path, recorder, "--probe-listen", f"127.0.0.1:{probe}",
                   "--metrics-listen", f"127.0.0.1:{metrics}") as (_, ingress, egress),
    ):  # fmt: skip
        send(ingress, "POST", "/v1/messages", [("authorization", "Bearer sk-ant-oat01-SCRAPED")], b"{}")
        send(egress, "POST", "/v1/messages", [("x-api-key", TOKEN)], b"{}")
        # A client's own token Anthropic refuses: its answer is marked for LiteLLM's router (E9).
        recorder.refuse("sk-ant-oat01-REVOKED", 401)
        send(ingress, "POST", "/v1/messages", [("authorization", "Bearer sk-ant-oat01-REVOKED"), ("x-api-key", TOKEN)],
             b"{}")  # fmt: skip
        yield ingress, egress, metrics, probe


def test_every_metric_and_label_queried_is_exported_by_a_running_gateway(tmp_path: Path) -> None:
    with scraped_up(tmp_path) as (ingress, egress, metrics, probe):
        # Beside the two forwarded decisions, traffic that touches each other family: a refusal, a seal failure, and
        # a secret file change that cannot be used (a rejected reload).
        send(ingress, "POST", "/v1/messages", [("x-app", "sk-ant-api03-MISPLACED")], b"{}")
        send(egress, "POST", "/v1/messages", [("x-api-key", TOKEN), ("x-credential-handoff", "v1.AAAA.BBBB")], b"{}")
        (tmp_path / "server-key").write_text("not a credential\n")
        server_url = f"http://127.0.0.1:{metrics}/metrics"
        wait_for(lambda: 'result="rejected"' in get_text(server_url), "a rejected reload in the server's metrics")
        exported = _exported(get_text(server_url))
        envoy = get_text(f"http://127.0.0.1:{probe}/stats/prometheus")
        assert "envoy_http_ext_proc_streams_started" in envoy
        exported |= _exported(envoy)
        clusters = set(re.findall(r'envoy_cluster_name="([^"]+)"', envoy))

    # Families with no sample cannot show their labels; only this one may stay empty after the traffic above
    # (nothing the shipped Envoy config does sends the server anything but request headers).
    unsampled = {name for name, labels in exported.items() if name.startswith("ext_proc_") and not labels}
    unsampled -= {"ext_proc_body_bytes_total", "ext_proc_body_bytes_created"}
    assert unsampled == {"ext_proc_unexpected_messages_total"}
    problems = []
    for where, expr in [*dashboard_queries(), *alert_queries()]:
        found = selectors(substituted(expr))
        if not found:
            problems.append(f"{where}: no metric in {expr}")
        for name, matchers in found:
            if name not in exported:
                problems.append(f"{where}: {name} is not exported")
                continue
            for label, op, value in matchers:
                if label in TARGET_LABELS:
                    continue
                if exported[name] and label not in exported[name]:
                    problems.append(f"{where}: {name} has no label {label}")
                values = set(value.split("|")) if op in ("=", "=~") and re.fullmatch(r"[\w|.-]+", value) else set()
                if label in CLOSED and not values <= CLOSED[label]:
                    problems.append(f"{where}: {label} is never {sorted(values - CLOSED[label])}")
                if label == "envoy_cluster_name":
                    # The mesh form's cluster name is allowed beside the one this Envoy runs.
                    missing = values - clusters - {"ext_proc_credentials"}
                    if missing:
                        problems.append(f"{where}: no Envoy cluster {sorted(missing)}")
        carried = set().union(*(exported.get(name, set()) for name, _ in found)) if found else set()
        if any(name in unsampled for name, _ in found):
            continue  # its labels are unknown until it has a sample
        for grouping in re.findall(r"by \(([^)]*)\)", expr):
            for label in (g.strip() for g in grouping.split(",")):
                if label not in TARGET_LABELS | {"le"} and label not in carried:
                    problems.append(f"{where}: grouped by {label}, which no metric it queries carries")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("reason", [f.value for f in SealFailure])
def test_every_seal_failure_reason_is_alerted_on(reason: str) -> None:
    """Each way a handoff fails to open is covered by one of the seal alerts (a new reason needs an alert)."""
    patterns: list[str] = []
    for _, expr in alert_queries():
        for name, matchers in selectors(expr):
            if name == "ext_proc_seal_failures_total":
                patterns += [v for label, _, v in matchers if label == "reason"]
    assert any(re.fullmatch(p, reason) for p in patterns)


def test_the_probe_listener_serves_only_ready_and_envoy_s_stats(tmp_path: Path) -> None:
    """Prometheus scrapes Envoy through the probe listener; nothing else of the admin API is reachable there."""
    probe = free_port()
    with Recorder() as recorder, running_up(tmp_path, recorder, "--probe-listen", f"127.0.0.1:{probe}") as (up, _, _):
        at = HostPort("127.0.0.1", probe)
        assert send(at, "GET", "/ready", [], b"")[0] == 200
        status, body, _ = send(at, "GET", "/stats/prometheus", [], b"")
        assert status == 200 and b"# TYPE envoy_http_ext_proc_streams_started counter" in body
        for method, path in [
            ("POST", "/stats/prometheus"), ("GET", "/stats"), ("GET", "/config_dump"), ("POST", "/quitquitquit"),
            ("POST", "/logging?level=trace"), ("GET", "/stats/prometheus/../config_dump"),
            ("GET", "/STATS/PROMETHEUS"), ("GET", "/stats/prometheus/"), ("POST", "/healthcheck/fail"),
        ]:  # fmt: skip
            assert send(at, method, path, [], b"")[0] == 404, (method, path)
        assert send(at, "GET", "/ready", [], b"")[0] == 200, "Envoy still live and not draining"
        assert up.poll() is None


def test_a_real_prometheus_scrapes_both_endpoints_and_evaluates_every_rule(tmp_path: Path) -> None:
    """Debian's Prometheus scraping `up` as the PodMonitor describes (the server's /metrics, Envoy's stats on the
    probe listener), with alerts.yaml loaded: both targets up, the series there, every rule evaluated without error."""
    binary = shutil.which("prometheus")
    if binary is None:
        promtool("--version")  # the same skip or failure as the promtool tests
        pytest.skip("prometheus is not installed")
    web = free_port()
    with scraped_up(tmp_path) as (_, _, metrics, probe):
        _scrape_with_prometheus(binary, tmp_path, metrics, probe, web)


def _scrape_with_prometheus(binary: str, tmp_path: Path, metrics: int, probe: int, web: int) -> None:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(MONITORING / "alerts.yaml")],
        "scrape_configs": [
            {"job_name": "gateway", "static_configs": [{"targets": [f"127.0.0.1:{metrics}"]}]},
            {"job_name": "gateway-envoy", "metrics_path": "/stats/prometheus",
             "static_configs": [{"targets": [f"127.0.0.1:{probe}"]}]},
        ],
    }  # fmt: skip
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    api = f"http://127.0.0.1:{web}/api/v1"
    prometheus = Proc([binary, f"--config.file={tmp_path}/prometheus.yml", f"--storage.tsdb.path={tmp_path}/tsdb",
                       f"--web.listen-address=127.0.0.1:{web}"])  # fmt: skip
    try:

        def targets_up() -> bool:
            try:
                active = json.loads(get_text(f"{api}/targets"))["data"]["activeTargets"]
            except OSError:
                return False
            return len(active) == 2 and all(t["health"] == "up" for t in active)

        wait_for(targets_up, "both scrape targets up in Prometheus")

        def evaluated() -> list[dict[str, Any]]:
            groups = json.loads(get_text(f"{api}/rules"))["data"]["groups"]
            return [r for g in groups for r in g["rules"]]

        wait_for(lambda: all(str(r.get("lastEvaluation", "0001")).startswith("2") for r in evaluated()),
                 "every rule evaluated once")  # fmt: skip
        rules = evaluated()
        assert len(rules) == len(alert_queries())
        assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
        for query in ('ext_proc_requests_total{leg="egress",source="server"}',
                      'envoy_http_ext_proc_streams_started{envoy_http_conn_manager_prefix="egress"}',
                      'envoy_cluster_membership_healthy{envoy_cluster_name="ext_proc"}'):  # fmt: skip
            result = json.loads(get_text(f"{api}/query?{urllib.parse.urlencode({'query': query})}"))
            assert result["data"]["result"], f"{query}: no series in Prometheus"
    finally:
        prometheus.stop()
