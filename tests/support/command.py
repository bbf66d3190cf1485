"""`ext-proc COMMAND` in this process, so that mutation testing sees ext_proc/cli.py run.

For the commands that answer and exit (refusals, `check`, `envoy-config`, `keygen`): each has one test that runs the
installed command too, comparing both.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from unittest.mock import patch

from ext_proc.cli import main


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def run_cli(argv: Sequence[str], env: Mapping[str, str]) -> Ran:
    """cli.main with ``env`` as the whole environment (as `subprocess.run(..., env=env)` gives the command), its
    output captured; argparse's exit is its return code."""
    out, err = io.StringIO(), io.StringIO()
    with patch.dict(os.environ, dict(env), clear=True), redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return Ran(code, out.getvalue(), err.getvalue())
