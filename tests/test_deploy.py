"""deploy/envoy.yaml is the generator's output with defaults, and the real Envoy accepts it."""

from __future__ import annotations

import ast
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from ext_proc.chart import CHART
from ext_proc.deployed import DEPLOYED, MESH_FILTER, write_all
from ext_proc.envoy import bootstrap, find_envoy, render
from ext_proc.istio import render_envoyfilter
from tests.e2e.matrix import ROUTES
from tests.support.processes import BIN, bare_env

ROOT = Path(__file__).resolve().parent.parent


def test_every_shipped_envoy_config_is_current(tmp_path: Path) -> None:
    """One source for every form: the Istio patches come from the same filter and cluster builders."""
    shipped = {relative: render(layout) for relative, layout in DEPLOYED.items()} | {MESH_FILTER: render_envoyfilter()}
    # Every Envoy bootstrap under deploy/ has its layout in the table (the chart's templated copy is its own).
    bootstraps = {p.relative_to(ROOT / "deploy").as_posix() for p in (ROOT / "deploy").rglob("*.yaml")
                  if "static_resources:" in p.read_text().splitlines()}  # fmt: skip
    assert bootstraps - {f"{CHART}/files/envoy.yaml"} == set(DEPLOYED)
    for relative, text in shipped.items():
        assert (ROOT / "deploy" / relative).read_text() == text, (
            f"deploy/{relative} is stale: run `ext-proc envoy-config --all deploy/`"
        )
    # The Helm chart's generated files too: `--all` over a copy of deploy/ changes nothing in it.
    copy = tmp_path / "deploy"
    shutil.copytree(ROOT / "deploy", copy)
    written = write_all(copy)
    expected = {*shipped, f"{CHART}/values.schema.json", f"{CHART}/files/alerts.yaml"}
    assert {p.relative_to(copy).as_posix() for p in written} >= expected
    for generated in written:
        path = generated.relative_to(copy)
        assert generated.read_text() == (ROOT / "deploy" / path).read_text(), (
            f"deploy/{path} is stale: run `ext-proc envoy-config --all deploy/`"
        )


def test_all_written_into_a_directory_that_does_not_exist_yet(tmp_path: Path) -> None:
    """`ext-proc envoy-config --all DIR` makes DIR and every directory under it; without deploy/'s alert rules there
    is no chart copy of them."""
    root = tmp_path / "new" / "deploy"
    written = write_all(root)
    expected = {*DEPLOYED, MESH_FILTER, f"{CHART}/files/envoy.yaml", f"{CHART}/files/envoyfilter-patches.yaml",
                f"{CHART}/values.schema.json"}  # fmt: skip
    assert {p.relative_to(root).as_posix() for p in written} == expected and len(written) == len(expected)
    for path in written:
        assert path.read_text() == (ROOT / "deploy" / path.relative_to(root)).read_text()


def test_shipped_configs_have_no_admin_on_tcp() -> None:
    """Envoy's admin API can stop Envoy and raise its log level: never on a port in a shipped config."""
    for relative, layout in DEPLOYED.items():
        admin = bootstrap(layout).get("admin")
        assert admin is None or admin["address"]["pipe"]["mode"] == 0o600, relative


def test_envoy_validates_deploy_config() -> None:
    result = subprocess.run(
        [str(find_envoy()), "--mode", "validate", "-c", str(ROOT / "deploy" / "envoy.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr


def test_regeneration_commands_in_the_docs_write_what_is_shipped() -> None:
    """Each `ext-proc envoy-config ... > deploy/...` in docs/ produces exactly the file it names."""
    found = 0
    for doc in sorted((ROOT / "docs").glob("*.md")):
        text = doc.read_text().replace("\\\n", " ")
        for command, target in re.findall(
            r"^(ext-proc envoy-config --ingress-listen[^>\n]*)> (\S+)$", text, re.MULTILINE
        ):
            result = subprocess.run(
                [str(BIN / "ext-proc"), *shlex.split(command)[1:]],
                capture_output=True,
                text=True,
                timeout=60,
                env=bare_env(),
            )
            assert result.returncode == 0, result.stderr
            assert result.stdout == (ROOT / target).read_text(), f"{doc.name}: {command.strip()} != {target}"
            found += 1
    assert found >= 2


def test_writing_envoy_configs_imports_neither_grpc_nor_the_server() -> None:
    """Writing configs needs no gRPC: the names Envoy's config shares with the transport live in ext_proc/names.py,
    which imports nothing of ours."""
    probe = "import sys, ext_proc.deployed; print(sorted(m for m in sys.modules if m in ('grpc', 'ext_proc.server')))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_the_readme_s_headline_numbers_are_the_measured_tables() -> None:
    """The README's "before and after" sentence states what docs/before-after.md (checked against every run) holds."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    headings = re.findall(
        r"^#### LiteLLM (\S+) (alone|behind the gateway), [^:]+: (\d+) of (\d+) requests break a rule "
        r"\((\d+) wrong[^,]*, (\d+) leak the LiteLLM key\)$",
        (ROOT / "docs" / "before-after.md").read_text(),
        re.MULTILINE,
    )
    before = [int(h[2]) for h in headings if h[1] == "alone"]
    totals = {int(h[3]) for h in headings}
    routes = len(ROUTES)
    assert len(headings) == 8 and len(totals) == 1 and all(int(h[2]) == 0 for h in headings if h[1] != "alone")
    (total,) = totals
    assert (
        f"({routes} routes and streaming variants \N{MULTIPLICATION SIGN} {total // routes} client credential "
        "setups): alone, "
        f"{min(before)} to {max(before)} of the {total} requests per setup break a rule" in readme
    )
    leaks = {h[5] for h in headings if h[0] == "1.81.14" and h[1] == "alone"}
    assert leaks == {"20"} and "on 1.81.14, 20 of them send LiteLLM's own key to Anthropic" in readme


def test_the_rules_import_only_their_leaf_modules() -> None:
    """decide() is a pure function of headers and a RuleContext: it reads no setting and no secret itself (the
    context is built from both in reload.py)."""
    probe = "import sys, ext_proc.rules; print(sorted(m for m in sys.modules if m.startswith('ext_proc.')))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == str(
        ["ext_proc.credentials", "ext_proc.headers", "ext_proc.names", "ext_proc.routes", "ext_proc.rules",
         "ext_proc.seal"]
    )  # fmt: skip


def test_the_shared_harness_stands_alone_and_no_module_name_means_two_things() -> None:
    """tests/support/ is what the tests and bench/ share: it imports no test module; and a module name of the harness
    or the benchmark is never also one of ext_proc/ (`rules` is the decision, nowhere else)."""
    for path in (ROOT / "tests" / "support").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tests"):
                assert node.module.startswith("tests.support"), f"{path.name} imports {node.module}"
    ours = {p.stem for p in (ROOT / "ext_proc").glob("*.py")} - {"__init__"}
    shared = {p.stem for d in ("tests/support", "bench") for p in (ROOT / d).iterdir() if p.suffix in (".py", ".lua")}
    assert not ours & (shared - {"__init__"})


def test_check_imports_neither_the_supervisor_nor_the_server(tmp_path: Path) -> None:
    """`ext-proc check --litellm-config` judges files; it starts nothing, so it loads nothing that does."""
    probe = (
        "import sys; from ext_proc import cli; code = cli.main(['check', '--litellm-config', sys.argv[1]]); "
        "print(code, sorted(m for m in sys.modules if m in ('ext_proc.up', 'ext_proc.supervise', "
        "'ext_proc.envoy_process', 'ext_proc.server', 'grpc')))"
    )
    result = subprocess.run([sys.executable, "-c", probe, str(ROOT / "examples" / "litellm.yaml")],
                            capture_output=True, text=True, timeout=60, env=bare_env(HOME=str(tmp_path)))  # fmt: skip
    assert result.stdout.strip().splitlines()[-1] == "0 []", result.stdout + result.stderr
