"""Mutation testing of what mutmut never mutates: module-level and class-level statements, and decorated functions.

mutmut 3 mutates the bodies of top-level functions and of methods (undecorated, or @staticmethod/@classmethod). The
route table, the header patterns, the prefixes, a dataclass's defaults, an Enum's values and the body of a
@property or an @lru_cache function are outside that. This step mutates them one at a time, in a copy of the
repository per worker, and runs the tests that import the module (directly or through another module of ext_proc/)
with ``-x``; a mutant that no test fails survives. The operators:

- a string or bytes constant loses its last character (a short one made of punctuation and whitespace loses each
  character in turn: ``b" \\t\\r\\n"`` without the tab);
- a regular expression given to ``re.compile`` loses each element of each character class in turn, and its
  ``(?i)`` flag;
- a number gains 1; a boolean flips;
- a tuple, list, set or dict literal loses each element in turn (the route table without ``/models``);
- an Envoy processing mode turns into another (``SEND`` and ``SKIP``, ``NONE`` into ``STREAMED``): the ext_proc
  filter's settings, whose functions (``FILTER_SETTINGS``) this step mutates although mutmut could, since the tests
  that pin them run a real Envoy (too slow for mutmut's per-mutant runs of the unit suite);
- the body and the defaults of a function run at import (``IMPORT_TIME``: ``config.setting``, each setting's
  field), which mutmut's forked runs never execute under a mutant (``# pragma: no mutate start``/``end`` for mutmut);
- the function bodies of code that runs only in a command a test starts (``RUN_AS_COMMAND``: the ``up``
  supervisor's modules, ``serve``, the server's lifecycle), where mutmut's trampolines are never active: the
  operators here, and each call made as a statement is dropped (a kill, a wait, a chmod); they run the tests that
  import the module and those that start the command (through tests/support/processes.py). Its log lines
  (``log.info(...)``) are left alone: what an operator reads, not what the gateway does;
- a comparison, ``and``/``or`` or arithmetic operator turns into its counterpart (``==`` and ``!=``, ``<`` and
  ``<=``, ``in`` and ``not in``, ``+`` and ``-``...), and a ``not`` is dropped: the operators of a decorated
  function's body (a @property, an @lru_cache function), which mutmut leaves alone, and of the code above.

Not mutated, each for a reason a reader can check: docstrings, text given as ``help=`` (argparse's and a setting's
help, what a reader sees), a logger's name, parts of an f-string, type annotations and a subscript's parameters
(``Callable[[...], ...]``: types, which mypy checks), a class's decorators (``@dataclass(frozen=True, slots=True)``:
how Python builds the class; a write to a frozen instance is refused by mypy before a test runs), ``__all__`` and
``__slots__``, a script's ``if __name__ == "__main__"``, and a line marked ``# pragma: no mutate`` (mutmut's
marker, with the same meaning).

Usage: ``python scripts/mutate_constants.py [FILE ...] [--list] [--jobs N] [--results PATH] [--match REGEX]
[--deselect TEST] [--first TEST_FILE] [--resume] [--litellm]``. The results go to ``.mutation-constants.txt`` as
lines ``NAME: killed|survived|timeout  (what changed)  [by the first test that failed]``, each as its mutant
finishes, which ``scripts/mutation_score.py`` reads next to mutmut's. ``--resume`` keeps the results already in the
file and runs the other mutants: a run cut short (a session's end, Ctrl-C) goes on where it stopped;
scripts/mutation.sh passes it only when nothing the run reads has changed since the results were written.
``--litellm`` mutates only what runs in ``up --litellm-config`` (``WITH_LITELLM``), against the tests that start a
command with the ``litellm``-marked ones, one mutant at a time.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import copy
import os
import re
import shutil
import string
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "ext_proc"
SKIP_KEYWORDS = frozenset({"help"})
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv*", ".cache", "mutants", "__pycache__", ".mypy_cache", ".ruff_cache", ".hypothesis", "*.egg-info"
)
PYTEST = ["-p", "no:cacheprovider", "-q", "-x", "--hypothesis-seed=0", "-m", "not litellm"]
_CHARSET = frozenset(string.punctuation + string.whitespace)
# The functions that build the ext_proc filter's settings (fail closed, headers only, mutation refused, timeouts).
FILTER_SETTINGS = frozenset({("ext_proc.envoy", "ext_proc_filter"), ("ext_proc.envoy", "_answer_processor")})
# Functions run while their module is imported (a dataclass field's factory): mutmut's runs fork after the import,
# so its mutants of them never run; each sits between ``# pragma: no mutate start`` and ``end`` for mutmut, and is
# mutated here.
IMPORT_TIME = frozenset({("ext_proc.config", "setting")})
# Code that runs until a signal, tested by starting the command as a child process (`ext-proc up` supervising
# Envoy and the server, `serve`, the server's lifecycle): mutmut's trampolines are active only in its own test
# process (such functions in its modules sit in a `no mutate` block; the supervisor's are not given to it at all),
# so this step mutates these function bodies, in the copy the child imports from (PYTHONPATH), and also drops each
# call made as a statement (a kill, a wait).
# Modules, or functions and classes by qualified name.
RUN_AS_COMMAND = frozenset({
    "ext_proc.supervise", "ext_proc.envoy_process", "ext_proc.up", "ext_proc.cli._start", "ext_proc.cli._serve",
    "ext_proc.cli._run", "ext_proc.server.Server", "ext_proc.server._private_socket_dir",
})  # fmt: skip
# Code that runs only in `up --litellm-config` (it starts LiteLLM): the tests that reach it are mostly the
# `litellm`-marked ones that start `up` (tests/e2e/), which the other runs deselect. Mutated only with ``--litellm``,
# as code run as a command, against the same tests as such code with the `litellm`-marked ones.
WITH_LITELLM = frozenset({"ext_proc.litellm.Plan.start"})


# The helper through which tests start the command: its tests run against that code too.
COMMAND_HELPER = "tests.support.processes"


def _run_as_command(qualified: str, commands: frozenset[str] = RUN_AS_COMMAND) -> bool:
    return any(qualified == name or qualified.startswith(name + ".") for name in commands)


def _is_log_call(call: ast.Call) -> bool:
    """``log.info(...)`` and its kin on a module's logger (each module names it ``log``)."""
    func = call.func
    return (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and func.value.id == "log"
        and (func.attr in ("debug", "info", "warning", "error", "exception", "critical"))
    )


_MODES = {"SEND": "SKIP", "SKIP": "SEND", "NONE": "STREAMED"}


@dataclass(frozen=True)
class Mutant:
    """One change to one module's source: ``text[start:end]`` becomes ``replacement``."""

    name: str
    path: Path
    start: int
    end: int
    replacement: str
    description: str

    def apply(self, source: str) -> str:
        return source[: self.start] + self.replacement + source[self.end :]


class _Offsets:
    """Character offsets from ast's (line, UTF-8 byte column) positions."""

    def __init__(self, source: str) -> None:
        self.lines = source.splitlines(keepends=True)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))

    def at(self, line: int, byte_col: int) -> int:
        text = self.lines[line - 1]
        return self.starts[line - 1] + len(text.encode()[:byte_col].decode())

    def span(self, node: ast.AST) -> tuple[int, int]:
        return self.at(node.lineno, node.col_offset), self.at(node.end_lineno or node.lineno, node.end_col_offset or 0)  # type: ignore[attr-defined]


def _reached_by_mutmut(node: ast.AST, depth: int) -> bool:
    """Whether mutmut 3 mutates this function: top level or a method of a top-level class, undecorated or with
    exactly one @staticmethod/@classmethod, and not one of the names it never mutates."""
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or depth > 1:
        return False
    if node.name in ("__getattribute__", "__setattr__", "__new__"):
        return False
    if not node.decorator_list:
        return True
    only = node.decorator_list[0]
    return len(node.decorator_list) == 1 and isinstance(only, ast.Name) and only.id in ("staticmethod", "classmethod")


def _regex_elements(pattern: str) -> Iterator[tuple[int, int, str]]:
    """(start, end, text) of each element of each character class in a pattern: a character, an escape or a range."""
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if char != "[":
            i += 1
            continue
        i += 1
        if i < len(pattern) and pattern[i] == "^":
            i += 1
        while i < len(pattern) and pattern[i] != "]":
            start = i
            i += 2 if pattern[i] == "\\" else 1
            if i + 1 < len(pattern) and pattern[i] == "-" and pattern[i + 1] != "]":
                i += 3 if pattern[i + 1] == "\\" else 2
            yield start, i, pattern[start:i]
        i += 1


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _literal(like: str | bytes, text: str) -> str:
    """``text`` as a Python literal of ``like``'s type."""
    return repr(text.encode("latin-1")) if isinstance(like, bytes) else repr(text)


_SWAPS: dict[type[ast.AST], type[Any]] = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.And: ast.Or,
    ast.Or: ast.And,
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
}


class _Collector(ast.NodeVisitor):
    """Every mutant of one module, named ``module.TARGET@n`` (the target: the assignment or function it sits in)."""

    def __init__(self, path: Path, source: str, commands: frozenset[str]) -> None:
        self.path = path
        self.commands = commands
        self.module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        self.source = source
        self.offsets = _Offsets(source)
        self.skipped_lines = {n for n, line in enumerate(source.splitlines(), 1) if "pragma: no mutate" in line}
        self.mutants: list[Mutant] = []
        self.counts: dict[str, int] = defaultdict(int)
        self.scope: list[str] = []
        self.target = ""
        self.depth = 0

    def add(self, node: ast.AST, replacement: str, description: str) -> None:
        start, end = self.offsets.span(node)
        self.counts[self.target] += 1
        name = f"{self.module}.{self.target}@{self.counts[self.target]}"
        self.mutants.append(Mutant(name, self.path, start, end, replacement, description))

    def _segment(self, node: ast.AST) -> str:
        start, end = self.offsets.span(node)
        return self.source[start:end]

    # Scopes: what mutmut reaches is left to it; docstrings and annotations are skipped.
    def visit_Module(self, node: ast.Module) -> None:
        self._body(node.body)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.depth += 1
        self._body(node.body)
        self.depth -= 1
        self.scope.pop()

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        qualified = ".".join([self.module, *self.scope, node.name])
        mutated_here = (self.module, node.name) in FILTER_SETTINGS | IMPORT_TIME or _run_as_command(
            qualified, self.commands
        )
        if _reached_by_mutmut(node, self.depth) and not mutated_here:
            return
        self.scope.append(node.name)
        self.depth += 1
        target = ".".join(self.scope)
        if (self.module, node.name) in IMPORT_TIME:  # its defaults too: mutmut leaves the signature to its own runs
            for default in (*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)):
                self._in_target(target, default)
        self._body(node.body, target=target)
        self.depth -= 1
        self.scope.pop()

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def _body(self, body: list[ast.stmt], target: str | None = None) -> None:
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # the docstring
        for statement in body:
            if isinstance(statement, ast.If) and ast.unparse(statement.test) == "__name__ == '__main__'":
                continue  # the script's entry, run only as a script
            if isinstance(statement, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                self.visit(statement)
            elif isinstance(statement, ast.Import | ast.ImportFrom):
                continue
            else:
                self._in_target(target or self._statement_target(statement), statement)

    def _statement_target(self, statement: ast.stmt) -> str:
        names: list[str] = []
        targets = (
            statement.targets
            if isinstance(statement, ast.Assign)
            else [statement.target]
            if isinstance(statement, ast.AnnAssign | ast.AugAssign)
            else []
        )
        for target in targets:
            names.extend(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        return ".".join([*self.scope, names[0] if names else f"line{statement.lineno}"])

    def _in_target(self, target: str, node: ast.AST) -> None:
        if isinstance(node, ast.Assign | ast.AnnAssign) and any(
            isinstance(t, ast.Name) and t.id in ("__all__", "__slots__")
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        ):
            return
        saved, self.target = self.target, target
        self._mutate(node)
        self.target = saved

    # Operators.
    def _mutate(self, node: ast.AST) -> None:
        if getattr(node, "lineno", None) in self.skipped_lines:
            return
        if isinstance(node, ast.AnnAssign):
            if node.value is not None:
                self._mutate(node.value)
            return
        if isinstance(node, ast.arg):
            return
        if isinstance(node, ast.JoinedStr | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                self.visit(node)
            return
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return  # a string statement: a docstring or a comment
        command_code = _run_as_command(f"{self.module}.{self.target}", self.commands)
        if command_code and isinstance(node, ast.Call) and _is_log_call(node):
            return  # a log line of the command's code: what an operator reads, not what the gateway does
        if command_code and isinstance(node, ast.Expr):
            call = node.value.value if isinstance(node.value, ast.Await) else node.value
            if isinstance(call, ast.Call) and not _is_log_call(call):
                self.add(node, "pass", f"call dropped: {self._segment(call).splitlines()[0][:60]}")
        if isinstance(node, ast.Subscript):
            self._mutate(node.value)  # the index of a subscript at this level is a type's parameters
            return
        if isinstance(node, ast.Call):
            self._call(node)
            return
        if isinstance(node, ast.Constant):
            self._constant(node)
            return
        if isinstance(node, ast.Tuple | ast.List | ast.Set | ast.Dict) and not isinstance(
            getattr(node, "ctx", None), ast.Store
        ):  # an assignment's targets (`a, b = ...`) are no collection
            self._collection(node)
        if isinstance(node, ast.Compare | ast.BoolOp | ast.BinOp | ast.UnaryOp):
            self._operator(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and child in node.decorator_list:
                continue
            self._mutate(child)

    def _call(self, node: ast.Call) -> None:
        regex = (
            isinstance(node.func, ast.Attribute)
            and node.func.attr in ("compile", "match", "fullmatch", "search", "sub")
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "re"
        )
        logger = isinstance(node.func, ast.Attribute) and node.func.attr == "getLogger"
        self._mutate(node.func)
        if logger:
            return
        for index, arg in enumerate(node.args):
            if regex and index == 0 and isinstance(arg, ast.Constant) and isinstance(arg.value, str | bytes):
                self._regex(arg)
            else:
                self._mutate(arg)
        for keyword in node.keywords:
            if keyword.arg not in SKIP_KEYWORDS:
                self._mutate(keyword.value)

    def _constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, bool):
            self.add(node, repr(not value), f"{value!r} -> {not value!r}")
        elif isinstance(value, int | float):
            self.add(node, repr(value + 1), f"{value!r} -> {value + 1!r}")
        elif isinstance(value, str) and value in _MODES:
            self.add(node, repr(_MODES[value]), f"{value!r} -> {_MODES[value]!r}")
        elif isinstance(value, str | bytes) and value:
            text = _text(value)
            if 1 < len(text) <= 6 and set(text) <= _CHARSET:
                for i in range(len(text)):
                    self.add(node, _literal(value, text[:i] + text[i + 1 :]), f"{value!r} without {text[i]!r}")
            else:
                self.add(node, _literal(value, text[:-1]), f"{value!r} -> {_literal(value, text[:-1])}")

    def _regex(self, node: ast.Constant) -> None:
        value = node.value
        assert isinstance(value, str | bytes)
        pattern = _text(value)
        if pattern.startswith("(?i)"):
            self.add(node, _literal(value, pattern[4:]), f"{value!r} without (?i)")
        for start, end, element in _regex_elements(pattern):
            narrowed = pattern[:start] + pattern[end:]
            try:
                re.compile(narrowed)
            except re.error:
                continue
            self.add(node, _literal(value, narrowed), f"{value!r}: class without {element!r}")

    def _operator(self, node: ast.Compare | ast.BoolOp | ast.BinOp | ast.UnaryOp) -> None:
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                self.add(node, f"({self._segment(node.operand)})", "not dropped")
            return
        ops = node.ops if isinstance(node, ast.Compare) else [node.op]
        for index, op in enumerate(ops):
            swapped = _SWAPS.get(type(op))
            if swapped is None:
                continue
            changed = copy.deepcopy(node)
            if isinstance(changed, ast.Compare):
                changed.ops[index] = swapped()
            else:
                changed.op = swapped()
            self.add(node, f"({ast.unparse(changed)})", f"{type(op).__name__} -> {swapped.__name__}")

    def _collection(self, node: ast.Tuple | ast.List | ast.Set | ast.Dict) -> None:
        if isinstance(node, ast.Dict):
            items = [
                f"**{self._segment(v)}" if k is None else f"{self._segment(k)}: {self._segment(v)}"
                for k, v in zip(node.keys, node.values, strict=True)
            ]
            open_, close = "{", "}"
        else:
            items = [self._segment(e) for e in node.elts]
            open_, close = {ast.Tuple: ("(", ")"), ast.List: ("[", "]"), ast.Set: ("{", "}")}[type(node)]
        for i, item in enumerate(items):
            rest = items[:i] + items[i + 1 :]
            if isinstance(node, ast.Set) and not rest:
                text = "set()"
            else:
                text = open_ + ", ".join(rest) + ("," if isinstance(node, ast.Tuple) and len(rest) == 1 else "") + close
            self.add(node, text, f"without {item.splitlines()[0][:60]}")


def collect(path: Path, commands: frozenset[str] = RUN_AS_COMMAND) -> list[Mutant]:
    source = path.read_text()
    collector = _Collector(path, source, commands)
    collector.visit(ast.parse(source))
    return collector.mutants


def _imports(path: Path) -> set[str]:
    """The modules of ext_proc/ a file imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == PACKAGE:
                found.update(f"{PACKAGE}.{a.name}" for a in node.names)
            elif node.module.startswith(f"{PACKAGE}."):
                found.add(node.module)
            elif node.level and path.parent.name == PACKAGE:
                found.add(f"{PACKAGE}.{node.module}")
        elif isinstance(node, ast.ImportFrom) and node.level and path.parent.name == PACKAGE:
            found.update(f"{PACKAGE}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(f"{PACKAGE}."))
    return found


def _support_imports(text: str) -> set[str]:
    return {f"tests.support.{m}" for m in re.findall(r"from tests\.support\.(\w+) import", text)}


def test_files(module: str) -> list[str]:
    """Test files that import ``module``, directly or through another module of ext_proc/ or tests/support/."""
    graph: dict[str, set[str]] = {}
    for path in [*(ROOT / PACKAGE).glob("*.py"), *(ROOT / "tests" / "support").glob("*.py")]:
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        graph[name] = _imports(path) | _support_imports(path.read_text())
    reaching = {module}
    changed = True
    while changed:
        changed = False
        for name, imported in graph.items():
            if name not in reaching and imported & reaching:
                reaching.add(name)
                changed = True
    selected = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        text = path.read_text()
        imported = _imports(path) | {
            f"tests.support.{m}" for m in re.findall(r"from tests\.support\.(\w+) import", text)
        }
        if imported & reaching:
            selected.append(str(path.relative_to(ROOT)))
    return selected


# A failed test's id in pytest's summary line ("FAILED tests/x.py::test[an id] - AssertionError"): up to the
# message, since a parameter's id may hold spaces (cut at the first one, the rerun alone would not find the test and
# fail, making a kill of a flake). An id holding " - " itself is cut there: give such a test ids of its own.
_FAILED = r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$"


def _pytest(copy: Path, tests: list[str], timeout: float) -> subprocess.CompletedProcess[str] | None:
    """The tests against the copy as it is now; None when they outlast ``timeout``."""
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", *PYTEST, *tests]
    try:
        return subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def _run(copy: Path, mutant: Mutant, tests: list[str], timeout: float) -> str:
    """A kill counts when the failing test fails again alone: a test that only timed out under this step's load (the
    1 s message-timeout tests, with every CPU busy) passes alone, and the whole selection is run once more."""
    target = copy / mutant.path.relative_to(ROOT)
    original = target.read_text()  # the copy's: the offsets are of the source as it was copied
    target.write_text(mutant.apply(original))
    try:
        flaked: list[str] = []
        while len(flaked) < 2:
            result = _pytest(copy, tests, timeout)
            if result is None:
                return "timeout"
            if result.returncode == 0:
                return "survived" + "".join(f"  [{test} failed under load, passed alone]" for test in flaked)
            failed = re.search(_FAILED, result.stdout, re.MULTILINE)
            if failed is None:
                return "killed  [by the test run]"
            alone = _pytest(copy, [failed.group(1)], timeout)
            if alone is None or alone.returncode != 0:
                return f"killed  [by {failed.group(1)}]"
            flaked.append(failed.group(1))
        return f"killed  [by {flaked[-1]}, twice, which passes alone: suspect]"
    finally:
        target.write_text(original)


def _baseline(copy: Path, tests: list[str]) -> dict[str, float] | None:
    """Each test file's time on the unmutated copy (the runs put the fastest first, so a kill comes early), or None
    when a test fails there: a mutant run against a red suite would count as killed."""
    report = copy / ".baseline.xml"
    env = {**os.environ, "PYTHONPATH": str(copy)}
    pytest = [sys.executable, "-m", "pytest", *[a for a in PYTEST if a != "-x"], f"--junitxml={report}", *tests]
    result = subprocess.run(pytest, cwd=copy, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        failed = re.findall(_FAILED, result.stdout, re.MULTILINE)
        alone = _pytest(copy, failed, timeout=600) if failed else None
        if alone is None or alone.returncode != 0:
            print(f"the unmutated suite fails; fix it first:\n{result.stdout[-3000:]}", file=sys.stderr)
            return None
        print(f"failed under load, passed alone (not counted against the suite): {' '.join(failed)}", file=sys.stderr)
    seconds: dict[str, float] = defaultdict(float)
    for case in ElementTree.parse(report).iter("testcase"):  # noqa: S314 (our own pytest's report)
        module = case.get("classname", "").split(".")
        for depth in range(len(module), 0, -1):
            candidate = "/".join(module[:depth]) + ".py"
            if candidate in tests:
                seconds[candidate] += float(case.get("time", 0))
                break
    return {test: seconds[test] for test in tests}


class Kills:
    """Which test files killed the mutants of each function and module so far: the next mutant of the same function
    runs them first, then those of its module.

    Most mutants of one function or module die by the same test file, which the static order (the likeliest file
    given, then the fastest) may put last: a setting's mutants ran the LiteLLM-config and chart tests before
    tests/test_config.py. Only the order changes, never the selection or a verdict.
    """

    def __init__(self) -> None:
        self._counts: dict[str, Counter[str]] = defaultdict(Counter)

    def record(self, mutant: Mutant, by: str) -> None:
        """``by``: a result's "[by tests/test_x.py::test_y]" (nothing for a survivor)."""
        killer = re.match(r"\[by ([^:\]]+\.py)", by)
        if killer:
            for scope in _scopes(mutant):
                self._counts[scope][killer.group(1)] += 1

    def ordered(self, mutant: Mutant, tests: list[str]) -> list[str]:
        function, module = (self._counts[scope] for scope in _scopes(mutant))
        return sorted(tests, key=lambda test: (-function[test], -module[test]))  # stable: ties keep the given order


def _scopes(mutant: Mutant) -> tuple[str, str]:
    """The mutant's function (or statement) and its module: ``ext_proc.config.Config.x@3`` is in ``ext_proc.config``."""
    return mutant.name.partition("@")[0], ".".join(mutant.path.relative_to(ROOT).with_suffix("").parts)


def finished(results: Path, names: set[str]) -> list[str]:
    """The result lines of ``results`` for mutants still planned (a name the code no longer has is dropped; each
    mutant's last line counts)."""
    if not results.exists():
        return []
    by_name: dict[str, str] = {}
    for line in results.read_text().splitlines():
        name = line.partition(":")[0]
        if name in names and line.partition(": ")[2].split("  ")[0] in ("killed", "survived", "timeout"):
            by_name[name] = line
    return list(by_name.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--list", action="store_true", help="list the mutants and their tests, run nothing")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--results", type=Path, default=ROOT / ".mutation-constants.txt")
    parser.add_argument("--match", default="", help="only the mutants whose 'NAME: what changed' this regex finds")
    parser.add_argument("--deselect", action="append", default=[], help="a test id left out (pytest's --deselect)")
    parser.add_argument(
        "--first", action="append", default=[], help="a test file run before the others (the likeliest to kill)"
    )
    parser.add_argument("--resume", action="store_true", help="keep the results in --results, run the other mutants")
    parser.add_argument(
        "--litellm",
        action="store_true",
        help="only the code run in `up --litellm-config` (WITH_LITELLM), against its tests with the litellm-marked "
        "ones, one job",
    )
    args = parser.parse_args()
    PYTEST.extend(f"--deselect={test}" for test in args.deselect)
    commands = RUN_AS_COMMAND
    if args.litellm:  # the litellm-marked tests too; they start `up` on the README's fixed port: one at a time
        del PYTEST[PYTEST.index("-m") : PYTEST.index("not litellm") + 1]
        commands, args.jobs = RUN_AS_COMMAND | WITH_LITELLM, 1
    files = [p.resolve() for p in args.files] or sorted((ROOT / PACKAGE).glob("*.py"))
    plan: list[tuple[Mutant, list[str]]] = []
    for path in files:
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        tests = test_files(module)
        with_command = sorted({*tests, *test_files(COMMAND_HELPER)})
        plan.extend(
            (mutant, with_command if _run_as_command(mutant.name.partition("@")[0], commands) else tests)
            for mutant in collect(path, commands)
            if re.search(args.match, f"{mutant.name}: {mutant.description}")
            and _run_as_command(mutant.name.partition("@")[0], WITH_LITELLM) == args.litellm
        )
    if args.list:
        for mutant, tests in plan:
            print(f"{mutant.name}: {mutant.description}  [{len(tests)} test files]")
        print(f"{len(plan)} mutants")
        return 0
    kept = finished(args.results, {mutant.name for mutant, _ in plan}) if args.resume else []
    done_before = {line.partition(":")[0] for line in kept}
    plan = [(mutant, tests) for mutant, tests in plan if mutant.name not in done_before]
    if kept:
        print(f"resuming: {len(kept)} results kept, {len(plan)} mutants to run", file=sys.stderr, flush=True)
    args.results.write_text("".join(line + "\n" for line in kept))
    if not plan:
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="mutate-constants-"))
    copies = []
    for n in range(args.jobs):
        copy = workdir / f"w{n}"
        shutil.copytree(ROOT, copy, ignore=COPY_IGNORE)
        if (ROOT / ".cache").is_dir():  # the LiteLLM releases and Claude Code the e2e tests install once
            (copy / ".cache").symlink_to(ROOT / ".cache")
        copies.append(copy)
    order = _baseline(copies[0], sorted({t for _, tests in plan for t in tests}))
    if order is None:
        return 1
    # A survivor runs the whole selection: a fixed bound would make a slow selection's survivors timeouts (kills).
    timeout = max(600.0, 3 * sum(order.values()))
    kills = Kills()
    free = list(copies)
    began = time.monotonic()

    def one(item: tuple[Mutant, list[str]]) -> str:
        mutant, tests = item
        tests = kills.ordered(mutant, sorted(tests, key=lambda test: (test not in args.first, order[test])))
        copy = free.pop()
        try:
            status = _run(copy, mutant, tests, timeout) if tests else "survived"
        finally:
            free.append(copy)
        status, _, by = status.partition("  ")
        kills.record(mutant, by)
        return f"{mutant.name}: {status}  ({mutant.description}){'  ' + by if by else ''}"

    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool, args.results.open("a") as results:
        running = [pool.submit(one, item) for item in plan]
        try:
            for done, future in enumerate(concurrent.futures.as_completed(running), 1):
                line = future.result()
                results.write(line + "\n")
                results.flush()
                if "survived" in line.split("  (")[0]:
                    print(line, flush=True)
                if done % 25 == 0:
                    print(f"{done}/{len(plan)} in {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
        except BaseException:  # Ctrl-C: what finished is written; the queued mutants are not started
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
