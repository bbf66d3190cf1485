"""The benchmark: every variant side by side in one run, on loopback, with ratios against plain Envoy and LiteLLM.

Variants (bench/variants.py `Name`; docs/performance.md):
  a  Envoy, no filter                          b  Envoy + the same header rules as a Lua filter
  f  Envoy + ext_proc to a null grpc.aio server (the transport's floor)
  g  the same null server on the transport as shipped (uvloop, one answer per stream): the floor pushed down
  c  Envoy + the egress leg as shipped (ext-proc serve, seal opened on every request)
  c+trace  the same with tracing on (spans exported to a local collector)
  c-answer  c without the answer filter (rule E9): c against it is what that filter's stream per answer costs
  d  client -> ingress -> LiteLLM -> egress -> stand-in    e  client -> LiteLLM -> stand-in (Claude Code, OAuth)
  d-key, e-key  the same two for a client that brings only a LiteLLM key (the server credential goes)

    python -m bench.run                 # full run (about 10 minutes)
    python -m bench.run --smoke         # seconds: proves the command works (CI)
    python -m bench.run --soak 1000000  # server RSS over that many requests through (c)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from bench.measure import measure_interleaved, soak, stream_throughputs
from bench.report import report
from bench.variants import DEFAULT, SEAL_KEY, STREAM_BYTES, Name, started
from ext_proc.seal import Keyring


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="1 s per point, c=1 only: proves the command works")
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each point")
    parser.add_argument("--slices", type=int, default=4, help="each point is measured in this many interleaved slices")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--variants", default=",".join(DEFAULT), help="comma-separated names (bench/variants.py)")
    parser.add_argument("--soak", type=int, default=0, help="then send this many requests through (c), tracking RSS")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("wrk", "curl") if shutil.which(tool) is None]
    if missing:
        print(f"bench: {' and '.join(missing)} needed (apt-get install wrk curl)", file=sys.stderr)
        return 2
    seconds = 1.0 if args.smoke else args.seconds
    args.slices = 1 if args.smoke else max(1, args.slices)
    levels = [1] if args.smoke else [int(c) for c in args.concurrency.split(",")]
    try:
        wanted = [Name(v) for v in args.variants.split(",")]
    except ValueError as exc:
        print(f"bench: {exc}; known: {', '.join(Name)}", file=sys.stderr)
        return 2
    keyring = Keyring([SEAL_KEY], 600)
    with tempfile.TemporaryDirectory(prefix="ext-proc-bench-") as tmp:
        work = Path(tmp)
        with started(work, keyring, set(wanted)) as found:
            results = []
            for c in levels:
                chosen = [found[name] for name in wanted if name in found]
                for result in measure_interleaved(chosen, c, seconds, args.slices, work):
                    results.append(result)
                    print(f"  {result.variant} c={c}: {result.rps:.0f} req/s, p50 {result.p50_us:.0f} µs", flush=True)
            urls: dict[str, str] = {n: found[n].url for n in (Name.PLAIN, Name.EGRESS) if n in found}
            streams = stream_throughputs(urls, STREAM_BYTES, 1 if args.smoke else 5)
            body_bytes = found[Name.EGRESS].processes["server"].metrics_value("ext_proc_body_bytes_total") or 0.0
            text = report(results, streams, body_bytes)
            print(text)
            soaked = soak(found[Name.EGRESS], args.soak, work) if args.soak else []
            if soaked:
                peak = max(s[1] for s in soaked)
                print(
                    f"soak: RSS {soaked[0][1]:.1f} MB at start, {soaked[1][1]:.1f} MB after the first batch, "
                    f"{peak:.1f} MB max, {soaked[-1][1]:.1f} MB after {soaked[-1][0]} requests"
                )
            if args.json:
                doc = {"results": [r.__dict__ for r in results], "streams": streams, "body_bytes": body_bytes}
                args.json.write_text(json.dumps(doc | {"soak": soaked}, indent=1))
            failed = [r for r in results if r.errors]
            if failed:
                print(f"bench: {len(failed)} points had errors", file=sys.stderr)
                return 1
            return 0 if body_bytes == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
