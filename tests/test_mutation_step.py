"""scripts/mutate_constants.py: what its second step mutates, and against which tests (tests/README.md's table)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scripts import mutate_constants as step

ROOT = Path(__file__).resolve().parents[1]


def _names(module: str) -> dict[str, str]:
    return {m.name: m.description for m in step.collect(ROOT / "ext_proc" / f"{module}.py")}


def test_the_supervisor_is_mutated_in_its_function_bodies_with_its_calls_dropped() -> None:
    up = _names("up")
    assert up, "ext_proc/up.py gets no mutant"
    assert "call dropped: server.start()" in up.values()
    assert all(name.startswith("ext_proc.up.") for name in up)
    assert not [d for d in up.values() if 'log.info("' in d or "signal received" in d], "log lines are left alone"
    assert not [d for d in up.values() if d in ("without config", "without secrets")], "`a, b = ...` is no tuple"
    stops = {d for n, d in _names("supervise").items() if n.startswith("ext_proc.supervise.stop@")}
    assert {"call dropped: child.send_signal(signal.SIGTERM)", "call dropped: child.kill()"} <= stops


def test_only_the_code_run_as_a_command_leaves_mutmut_for_this_step() -> None:
    """cli's and server's other functions stay mutmut's: mutated twice, they would count twice."""
    functions = {name.partition("@")[0].removeprefix("ext_proc.") for name in [*_names("cli"), *_names("server")]}
    assert {"cli._start", "cli._run", "cli._serve", "server.Server.start", "server._private_socket_dir"} <= functions
    assert not functions & {"cli.main", "cli._check", "server.CredentialProcessor.process", "server._sets"}
    assert step._run_as_command("ext_proc.server.Server.stop")
    assert not step._run_as_command("ext_proc.server.ServerConfig")  # a name that only starts alike


def test_code_run_as_a_command_is_tested_by_the_tests_that_start_the_command() -> None:
    starting = step.test_files(step.COMMAND_HELPER)
    assert "tests/test_server.py" in starting  # starts `ext-proc serve` and signals it
    assert "tests/test_up.py" in starting
    assert "tests/test_rules_egress.py" not in starting  # the rules alone


def _copy_with(tmp_path: Path, tests: dict[str, str]) -> tuple[Path, step.Mutant]:
    """A stand-in copy of the repository: one module the mutant changes (to the same text) and the given tests."""
    (tmp_path / "ext_proc").mkdir()
    (tmp_path / "ext_proc" / "stand_in.py").write_text("VALUE = 1\n")
    (tmp_path / "tests").mkdir()
    for name, text in tests.items():
        (tmp_path / "tests" / name).write_text(text)
    mutant = step.Mutant("ext_proc.stand_in.VALUE@1", ROOT / "ext_proc" / "stand_in.py", 8, 9, "1", "1 -> 1")
    return tmp_path, mutant


def test_a_kill_counts_when_the_failing_test_fails_again_alone(tmp_path: Path) -> None:
    """tests/README.md: a test that failed only under the step's load (it passes alone) does not make a kill; the
    selection runs once more and its answer counts."""
    flaky = (
        "from pathlib import Path\n\ndef test_once():\n    marker = Path(__file__).with_suffix('.ran')\n"
        "    first = not marker.exists()\n    marker.touch()\n    assert not first\n"
    )
    spaced = (  # a parameter's id with spaces: the rerun alone must find the same test
        "import pytest\n\n@pytest.mark.parametrize('x', [1], ids=['an id with spaces'])\n"
        "def test_no(x):\n    assert 0\n"
    )
    copy, mutant = _copy_with(
        tmp_path,
        {"test_flaky.py": flaky, "test_fails.py": "def test_no():\n    assert 0\n", "test_spaced.py": spaced},
    )
    assert step._run(copy, mutant, ["tests/test_flaky.py"], 120) == (
        "survived  [tests/test_flaky.py::test_once failed under load, passed alone]"
    )
    assert step._run(copy, mutant, ["tests/test_fails.py"], 120) == "killed  [by tests/test_fails.py::test_no]"
    assert step._run(copy, mutant, ["tests/test_spaced.py"], 120) == (
        "killed  [by tests/test_spaced.py::test_no[an id with spaces]]"
    )


def test_a_resumed_run_keeps_the_finished_results_and_runs_only_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scripts/mutation.sh resumes a run cut short: the results written so far stand (each mutant's last line), a
    line of a mutant the code no longer has or one without a verdict is dropped, and nothing finished runs again."""
    reload_py = ROOT / "ext_proc" / "reload.py"
    (only,) = step.collect(reload_py)  # one mutant: a run with it finished has nothing left to do
    results = tmp_path / "results.txt"
    results.write_text(
        f"{only.name}: survived  (earlier)\n"
        "ext_proc.reload.gone@1: killed  (a mutant of code since removed)\n"
        f"{only.name}: killed  ({only.description})  [by tests/test_reload.py::test_x]\n"
        f"{only.name}: not a verdict\n"
    )
    assert step.finished(results, {only.name}) == [
        f"{only.name}: killed  ({only.description})  [by tests/test_reload.py::test_x]"
    ]
    monkeypatch.setattr("sys.argv", ["mutate_constants.py", str(reload_py), "--resume", "--results", str(results)])
    monkeypatch.setattr(step, "_baseline", lambda *_: pytest.fail("a finished run started the tests again"))
    assert step.main() == 0
    assert results.read_text() == f"{only.name}: killed  ({only.description})  [by tests/test_reload.py::test_x]\n"
    assert step.finished(tmp_path / "none.txt", {only.name}) == []


def test_the_files_that_killed_a_function_s_mutants_run_first_for_its_next_ones() -> None:
    """Only the order changes: the function's killers first, then its module's, then the order given."""

    def mutant(name: str, module: str) -> step.Mutant:
        return step.Mutant(f"ext_proc.{module}.{name}@1", ROOT / "ext_proc" / f"{module}.py", 0, 0, "", "")

    given = ["tests/test_a.py", "tests/test_b.py", "tests/test_c.py"]
    kills = step.Kills()
    assert kills.ordered(mutant("f", "config"), given) == given
    kills.record(mutant("f", "config"), "[by tests/test_c.py::test_x[1]]")
    kills.record(mutant("g", "config"), "[by tests/test_b.py::test_y]")
    kills.record(mutant("g", "config"), "[by tests/test_b.py::test_y]")
    kills.record(mutant("f", "config"), "")  # a survivor
    kills.record(mutant("f", "config"), "[tests/test_a.py::test_z failed under load, passed alone]")
    assert kills.ordered(mutant("f", "config"), given) == ["tests/test_c.py", "tests/test_b.py", "tests/test_a.py"]
    assert kills.ordered(mutant("h", "config"), given) == ["tests/test_b.py", "tests/test_c.py", "tests/test_a.py"]
    assert kills.ordered(mutant("f", "seal"), given) == given


def test_the_code_run_only_with_litellm_is_mutated_by_its_own_run_against_the_litellm_tests(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`Plan.start` runs only in `up --litellm-config`, tested mostly by the litellm-marked tests the other runs
    deselect: left to ``--litellm``, which runs them too."""
    litellm_py = ROOT / "ext_proc" / "litellm.py"
    assert not [m for m in step.collect(litellm_py) if ".Plan.start@" in m.name]
    with_litellm = step.collect(litellm_py, step.RUN_AS_COMMAND | step.WITH_LITELLM)
    assert "call dropped: supervise.stop(child)" in {m.description for m in with_litellm}
    monkeypatch.setattr("sys.argv", ["mutate_constants.py", str(litellm_py), "--litellm", "--list"])
    monkeypatch.setattr(step, "PYTEST", list(step.PYTEST))
    assert step.main() == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[-1] == f"{len(listed) - 1} mutants" and len(listed) > 1
    assert all(line.startswith("ext_proc.litellm.Plan.start@") for line in listed[:-1])
    assert "-m" not in step.PYTEST and "not litellm" not in step.PYTEST  # every test of the selection
    assert "tests/e2e/test_chain.py" in step.test_files(step.COMMAND_HELPER)


def test_the_score_is_100_only_when_every_counted_mutant_is_killed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scripts import mutation_score

    results, equivalent = tmp_path / "results.txt", tmp_path / "equivalent.txt"
    lines = [f"ext_proc.x.f@{n}: killed  (a change)" for n in range(1, 4000)]
    results.write_text("\n".join([*lines, "ext_proc.x.f@4000: survived  (a change)", "ext_proc.x.g@1: survived"]))
    equivalent.write_text("ext_proc.x.g@1  # a reason\n")
    assert mutation_score.main([results], equivalent) == 0
    assert capsys.readouterr().out.splitlines() == [
        "survived: ext_proc.x.f@4000 (survived)",
        "mutation score: 99.9% (killed 3999 of 4000, equivalent 1)",
    ]


def test_a_resumed_run_whose_mutmut_finished_goes_straight_to_the_next_step(tmp_path: Path) -> None:
    """scripts/mutation.sh, in a checkout of its own with a stand-in mutmut and second step: mutmut's results, once
    complete, carry the run (copied to another checkout of the same commit, it resumes without mutmut); without them
    a resumed run starts mutmut again (its own state in mutants/ says where it stopped)."""
    import hashlib
    import shutil
    import subprocess
    import sys

    repo, calls = tmp_path / "repo", tmp_path / "calls.log"
    for name in ("scripts/mutation.sh", "scripts/mutation_score.py", "scripts/mutation-constraints.txt",
                 "pyproject.toml", "constraints.txt", ".gitignore"):  # fmt: skip
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes((ROOT / name).read_bytes())
    (repo / "ext_proc").mkdir()
    (repo / "ext_proc" / "x.py").write_text("X = 1\n")
    (repo / "tests").mkdir()
    (repo / "tests" / "mutation-equivalent.txt").write_text("")
    (repo / "scripts" / "mutate_constants.py").write_text(
        "import sys\nfrom pathlib import Path\n"
        f"Path({str(calls)!r}).open('a').write('step ' + ' '.join(sys.argv[1:]) + '\\n')\n"
        "out = Path(sys.argv[sys.argv.index('--results') + 1])\n"
        "n = ['.mutation-constants.txt', '.mutation-supervisor.txt', '.mutation-litellm.txt'].index(out.name)\n"
        "out.write_text(f'ext_proc.x.X@{n}: killed  (a change)\\n')\n"
    )
    bin_ = repo / ".venv-mutation" / "bin"
    bin_.mkdir(parents=True)
    (bin_ / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (bin_ / "mutmut").write_text(
        f'#!/bin/sh\necho "mutmut $1" >> {calls}\n'
        '[ "$1" = results ] && echo "    ext_proc.x.f__mutmut_1: killed"\nexit 0\n'
    )
    for tool in bin_.iterdir():
        tool.chmod(0o700)
    pinned = ("pyproject.toml", "constraints.txt", "scripts/mutation-constraints.txt")
    pins = b"".join((repo / n).read_bytes() for n in pinned)
    (repo / ".venv-mutation" / f".installed-{hashlib.sha256(pins).hexdigest()[:16]}").touch()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)

    def run(checkout: Path) -> tuple[list[str], str]:
        calls.write_text("")
        done = subprocess.run(["bash", "scripts/mutation.sh"], cwd=checkout, capture_output=True, text=True, check=True)
        return calls.read_text().splitlines(), done.stdout.splitlines()[-1]

    first, score = run(repo)
    steps = [c for c in first if c.startswith("step")]
    assert [c for c in first if c.startswith("mutmut")] == ["mutmut run", "mutmut results"]
    assert score == "mutation score: 100.0% (killed 4 of 4, equivalent 0)"
    assert all("--resume" not in c for c in first)
    elsewhere = tmp_path / "elsewhere"  # a clean checkout of the same commit, with the run's files copied in
    subprocess.run(["git", "clone", "-q", str(repo), str(elsewhere)], check=True)
    shutil.copytree(repo / ".venv-mutation", elsewhere / ".venv-mutation", symlinks=True)
    for state in [repo / ".mutation-version", *repo.glob(".mutation-*.txt")]:
        shutil.copy(state, elsewhere)
    again, score = run(elsewhere)
    assert [c for c in again if c.startswith("step")] == [c.replace("step ", "step --resume ", 1) for c in steps]
    assert not [c for c in again if c.startswith("mutmut")]
    assert score == "mutation score: 100.0% (killed 4 of 4, equivalent 0)"
    (elsewhere / ".mutation-results.txt").unlink()
    cut_short, _ = run(elsewhere)
    assert [c for c in cut_short if c.startswith("mutmut")] == ["mutmut run", "mutmut results"]


STATE = ("version", "results.txt", "constants.txt", "supervisor.txt", "litellm.txt")


def test_a_stored_run_holds_the_files_that_resume_it() -> None:
    """tests/mutation-runs/COMMIT/ (tests/README.md): a run's files under their names without `.mutation-`, the
    fingerprint and result lines the score reads."""
    from scripts import mutation_score

    for run in sorted((ROOT / "tests" / "mutation-runs").glob("*")):
        assert re.fullmatch(r"[0-9a-f]{7,40}", run.name), run
        files = sorted(p.name for p in run.iterdir())
        assert "version" in files and set(files) <= set(STATE), (run, files)
        assert re.fullmatch(r"[0-9a-f]{16}\n", (run / "version").read_text()), run
        for name in set(files) - {"version"}:
            for line in (run / name).read_text().splitlines():
                assert mutation_score.RESULT.match(line), (run / name, line)
