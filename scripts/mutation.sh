#!/usr/bin/env bash
# Mutation testing (tests/README.md), in steps over the same files: the pinned mutmut, in a virtualenv of its own,
# over function bodies (the files of [tool.mutmut] only_mutate, against its test selection), then
# scripts/mutate_constants.py over what mutmut never reaches (module and class level, decorated functions, code that
# runs only in a command the tests start), against the tests that import each module or start the command, and the
# same script once more over what runs only in `up --litellm-config`, with the litellm-marked tests.
# Arguments narrow the files mutated (e.g. ext_proc/seal.py); none: every module of ext_proc/ (tests/README.md says
# what each step leaves out and why). The last line is the score over all of them.
#
# A run cut short (a session's end, Ctrl-C, a kill) goes on where it stopped when started again with the same
# arguments and nothing it reads changed (every file git tracks or would track: code, tests, docs, manifests);
# anything else starts afresh. MUTATION_FRESH=1 starts afresh regardless.
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
# What this run is of: the arguments and the content of every file it could read.
version="$({ printf '%s\n' "$@"; git ls-files -z --cached --others --exclude-standard | sort -z \
  | xargs -0 sha256sum 2>/dev/null; } | sha256sum | cut -c1-16)"
resume=()
if [ "${MUTATION_FRESH:-0}" != 1 ] && [ "$(cat .mutation-version 2>/dev/null)" = "$version" ]; then
  echo "resuming the run of $version (MUTATION_FRESH=1 starts afresh)" >&2
  resume=(--resume)
else
  rm -rf mutants .mutation-results.txt .mutation-results.tmp .mutation-constants.txt .mutation-supervisor.txt .mutation-litellm.txt
  echo "$version" > .mutation-version
fi
# Files given (ext_proc/seal.py) become mutmut's name patterns (ext_proc.seal.*). With patterns, mutmut reruns every
# mutant they name; without, it keeps the verdicts in mutants/ of the functions that did not change.
patterns=()
for file in "$@"; do
  module="${file%.py}"
  patterns+=("${module//\//.}.*")
done
# .mutation-results.txt appears only once mutmut has finished (written aside, then renamed): a resumed run that has it
# goes straight to the next step, so the run's files alone (tests/README.md) carry it to a clean checkout elsewhere.
if [ ${#resume[@]} -eq 0 ] || [ ! -e .mutation-results.txt ]; then
  "$VENV/bin/mutmut" run --max-children "$(nproc)" "${patterns[@]}" > .mutation-run.log 2>&1 || { tail -40 .mutation-run.log; exit 1; }
  "$VENV/bin/mutmut" results --all true > .mutation-results.tmp 2>/dev/null || "$VENV/bin/mutmut" results > .mutation-results.tmp
  mv .mutation-results.tmp .mutation-results.txt
fi
results=(.mutation-results.txt .mutation-constants.txt)
if [ $# -gt 0 ]; then
  "$VENV/bin/python" scripts/mutate_constants.py "${resume[@]}" --results .mutation-constants.txt "$@"
else
  # The `up` supervisor's modules run only in the child process a test starts: the second step alone mutates them,
  # with the tests of `up` first (the likeliest to fail). The other modules: every one of ext_proc/.
  supervisor=(ext_proc/supervise.py ext_proc/envoy_process.py ext_proc/up.py)
  mapfile -t others < <(ls ext_proc/*.py | grep -vxF -f <(printf '%s\n' "${supervisor[@]}"))
  "$VENV/bin/python" scripts/mutate_constants.py "${resume[@]}" --results .mutation-constants.txt "${others[@]}"
  "$VENV/bin/python" scripts/mutate_constants.py "${resume[@]}" --results .mutation-supervisor.txt \
    --first tests/test_up.py "${supervisor[@]}"
  results+=(.mutation-supervisor.txt)
fi
# What runs only in `up --litellm-config` (starting LiteLLM), against the tests that start a command with the
# litellm-marked ones, one mutant at a time (nothing to run when the files given hold none of it).
"$VENV/bin/python" scripts/mutate_constants.py "${resume[@]}" --results .mutation-litellm.txt --litellm \
  --first tests/test_litellm_child.py --first tests/e2e/test_chain.py "$@"
results+=(.mutation-litellm.txt)
exec "$VENV/bin/python" scripts/mutation_score.py "${results[@]}" tests/mutation-equivalent.txt
