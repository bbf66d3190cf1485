"""The mutation score from `mutmut results` and scripts/mutate_constants.py's results, with the listed equivalent
mutants left out (each with its reason). Usage: mutation_score.py RESULTS... EQUIVALENT."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

# A result line: mutmut's ("    ext_proc.x.f__mutmut_3: killed") and scripts/mutate_constants.py's ("ext_proc.x.C@2:
# survived  (what changed)").
RESULT = re.compile(r"\s*([\w.]+(?:__mutmut_\d+|@\d+)): (\w+)")


def main(results: list[Path], equivalent: Path) -> int:
    status: dict[str, str] = {}
    for line in (line for path in results for line in path.read_text().splitlines()):
        match = RESULT.match(line)
        if match and match.group(2) != "not":  # "not checked": outside the files asked for
            status[match.group(1)] = match.group(2)
    listed = {}
    for line in equivalent.read_text().splitlines():
        name, _, reason = line.partition("#")
        if name.strip():
            if not reason.strip():
                print(f"{equivalent}: {name.strip()} needs a one-line reason", file=sys.stderr)
                return 2
            listed[name.strip()] = reason.strip()
    survivors = sorted(n for n, s in status.items() if s not in ("killed", "timeout") and n not in listed)
    for name in survivors:
        print(f"survived: {name} ({status[name]})")
    stale = sorted(n for n in listed if n in status and status[n] not in ("survived", "no"))
    for name in stale:
        print(f"listed as equivalent but not a survivor (drop it): {name}")
    listed = {n: r for n, r in listed.items() if n in status}
    counted = [n for n in status if n not in listed]
    killed = sum(status[n] in ("killed", "timeout") for n in counted)
    # Rounded down: 3 survivors in 7,273 print 99.9 %, never 100.0 %.
    score = math.floor(1000 * killed / len(counted)) / 10 if counted else 0.0
    print(f"mutation score: {score:.1f}% (killed {killed} of {len(counted)}, equivalent {len(listed)})")
    return 0


if __name__ == "__main__":
    sys.exit(main([Path(a) for a in sys.argv[1:-1]], Path(sys.argv[-1])))
