#!/usr/bin/env bash
# Mutation testing (tests/README.md), two steps over the same files: the pinned mutmut, in a virtualenv of its own,
# over function bodies (the files of [tool.mutmut] only_mutate, against its test selection), then
# scripts/mutate_constants.py over what mutmut never reaches (module and class level, decorated functions, code that
# runs only in a command the tests start), against the tests that import each module or start the command. Arguments narrow the files mutated (e.g. ext_proc/seal.py); none: the files of
# only_mutate, and for the second step also the ext_proc filter's settings in ext_proc/envoy.py (tests/README.md
# lists the modules left out and why). The last line is the score over both.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-mutation
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
stamp="$VENV/.installed-$(cat pyproject.toml constraints.txt scripts/mutation-constraints.txt | sha256sum | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -c constraints.txt -c scripts/mutation-constraints.txt -e '.[test]' mutmut
  rm -f "$VENV"/.installed-* && touch "$stamp"
fi
rm -rf mutants
# Files given (ext_proc/seal.py) become mutmut's name patterns (ext_proc.seal.*).
patterns=()
for file in "$@"; do
  module="${file%.py}"
  patterns+=("${module//\//.}.*")
done
"$VENV/bin/mutmut" run --max-children "$(nproc)" "${patterns[@]}" > .mutation-run.log 2>&1 || { tail -40 .mutation-run.log; exit 1; }
"$VENV/bin/mutmut" results --all true > .mutation-results.txt 2>/dev/null || "$VENV/bin/mutmut" results > .mutation-results.txt
results=(.mutation-results.txt .mutation-constants.txt)
if [ $# -gt 0 ]; then
  "$VENV/bin/python" scripts/mutate_constants.py --results .mutation-constants.txt "$@"
else
  mapfile -t files < <("$VENV/bin/python" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["tool"]["mutmut"]["only_mutate"]))')
  "$VENV/bin/python" scripts/mutate_constants.py --results .mutation-constants.txt "${files[@]}"
  "$VENV/bin/python" scripts/mutate_constants.py --results .mutation-filter.txt ext_proc/envoy.py \
    --match '^ext_proc\.envoy\.(ext_proc_filter|_answer_processor)@'
  # The `up` supervisor's modules run only in the child process a test starts: the second step alone mutates them,
  # with the tests of `up` first (the likeliest to fail).
  "$VENV/bin/python" scripts/mutate_constants.py --results .mutation-supervisor.txt --first tests/test_up.py \
    ext_proc/supervise.py ext_proc/envoy_process.py ext_proc/up.py
  results+=(.mutation-filter.txt .mutation-supervisor.txt)
fi
exec "$VENV/bin/python" scripts/mutation_score.py "${results[@]}" tests/mutation-equivalent.txt
