"""The benchmark: every variant side by side in one run, on loopback, with ratios against plain Envoy.

Variants (docs/performance.md):
  a  Envoy, no filter                          b  Envoy + the same header rules as a Lua filter
  f  Envoy + ext_proc to a null grpc.aio server (the transport's floor, as issue 6 defines it)
  g  the same null server on the transport as shipped (uvloop, one answer per stream): the floor pushed down
  c  Envoy + the egress leg as shipped (ext-proc serve, seal opened on every request)
  d  client -> ingress -> LiteLLM -> egress -> stand-in    e  client -> LiteLLM -> stand-in
Each Envoy runs one worker; the stand-in upstream is a direct-response Envoy in its own process, left out of the
CPU accounting. Load comes from wrk with Claude Code's header set.

    python -m bench.run                 # full run (about 5 minutes)
    python -m bench.run --smoke         # seconds: proves the command works (CI)
    python -m bench.run --soak 1000000  # server RSS over that many requests through (c)
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ext_proc.envoy import HostPort, Layout, Upstream, bootstrap, find_envoy
from ext_proc.seal import Keyring
from tests.support import fixtures, litellm
from tests.support.processes import BIN, Proc, free_port, wait_for

LOOPBACK = "127.0.0.1"
ADMIN = HostPort(LOOPBACK, 0)
TICKS = os.sysconf("SC_CLK_TCK")
SEAL_KEY = bytes(range(7, 39))
STREAM_BYTES = 50 * 1024 * 1024
MESSAGE = json.dumps(
    {"id": "msg_bench", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
     "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn", "stop_sequence": None,
     "usage": {"input_tokens": 7, "output_tokens": 1}}
)  # fmt: skip
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
BUFFER = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"


def body(model: str = litellm.MODEL) -> str:
    return json.dumps({"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "say ok"}]})


@dataclass
class Result:
    variant: str
    concurrency: int
    requests: int
    seconds: float
    rps: float
    p50_us: float
    p99_us: float
    errors: int
    cpu_us: dict[str, float] = field(default_factory=dict)

    @property
    def cpu_per_request_us(self) -> float:
        return sum(self.cpu_us.values())


def descendants(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found += descendants(int(child))
    return found


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in descendants(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _us(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    value, unit = match.groups()
    return float(value) * {"us": 1, "ms": 1e3, "s": 1e6, "m": 6e7}[unit]


def wrk(
    url: str, headers: list[tuple[str, str]], payload: str, concurrency: int, seconds: float, work: Path
) -> dict[str, float]:
    script = work / "wrk.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(payload)}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers]
    script.write_text("\n".join(lines) + "\n")
    command = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    if "50%" not in out:
        raise RuntimeError(f"wrk gave no latency distribution:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "requests": requests,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": _us(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        "p99": _us(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        "errors": (int(errors.group(1)) if errors else 0)
        + (sum(map(int, socket_errors.groups())) if socket_errors else 0),
    }


def start_envoy(document: dict[str, Any], work: Path, name: str) -> Proc:
    config = work / f"{name}.yaml"
    config.write_text(yaml.safe_dump(document))
    admin = work / f"{name}.admin"
    proc = Proc(
        [str(find_envoy()), "-c", str(config), "--concurrency", "1", "--log-level", "error", "--disable-hot-restart",
         "--admin-address-path", str(admin)],
    )  # fmt: skip

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"envoy {name} exited:\n{proc.output}")
        try:
            url = f"http://{admin.read_text().strip()}/ready"
            with urllib.request.urlopen(url, timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    wait_for(ready, f"envoy {name}")
    return proc


def stand_in(port: int, stream_file: Path) -> dict[str, Any]:
    """A direct-response Envoy: an Anthropic message for every request, 50 MB of SSE on /stream."""
    routes = [
        {"match": {"prefix": "/stream"}, "direct_response": {"status": 200, "body": {"filename": str(stream_file)}},
         "response_headers_to_add": [{"header": {"key": "content-type", "value": "text/event-stream"}}]},
        {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": MESSAGE}},
         "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"}}]},
    ]  # fmt: skip
    router = {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}
    # Like Anthropic, answer once the whole request has arrived. A direct response sent on the request headers
    # alone leaves the body in flight, and the proxy in front then cannot reuse the connection: every request
    # would pay a new upstream connection.
    read_body = {
        "name": "envoy.filters.http.buffer",
        "typed_config": {"@type": BUFFER, "max_request_bytes": 1 << 20},
    }
    hcm = {
        "@type": HCM,
        "stat_prefix": "stand_in",
        "route_config": {
            "max_direct_response_body_size_bytes": STREAM_BYTES + 1024,
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [read_body, router],
    }
    listener = {
        "name": "stand_in",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [listener]},
    }


def egress_document(layout: Layout, filter_kind: str) -> dict[str, Any]:
    """The shipped bootstrap's egress listener alone, with its ext_proc filter kept, removed or swapped for Lua."""
    document = bootstrap(layout)
    listeners = document["static_resources"]["listeners"]
    egress = next(item for item in listeners if item["name"] == "egress")
    document["static_resources"]["listeners"] = [egress]
    document["static_resources"]["clusters"] = [
        c for c in document["static_resources"]["clusters"] if c["name"] != "litellm"
    ]
    hcm = egress["filter_chains"][0]["filters"][0]["typed_config"]
    if filter_kind == "none":
        hcm["http_filters"] = hcm["http_filters"][1:]
    elif filter_kind == "lua":
        hcm["http_filters"][0] = {
            "name": "envoy.filters.http.lua",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"inline_string": (Path(__file__).parent / "rules.lua").read_text()},
                # As ext_proc does by default: the route chosen before the rules ran stays.
                "clear_route_cache": False,
            },
        }
    if filter_kind != "ext_proc":
        document["static_resources"]["clusters"] = [
            c for c in document["static_resources"]["clusters"] if c["name"] != "ext_proc"
        ]
    return document


# wrk sends one header set over and over, so variant c opens one handoff for the whole run: the bound on opens
# (and the lifetime) is lifted for the bench; counting an open costs the same either way.
REPLAYED_HANDOFF = {"EXT_PROC_SEAL_MAX_OPENS": str(10**12), "EXT_PROC_SEAL_TTL_SECONDS": "86400"}


def egress_headers(keyring: Keyring) -> list[tuple[str, str]]:
    """What LiteLLM sends the egress leg for a Claude Code OAuth request: its headers, the seal, the egress token."""
    recorded = fixtures.load(fixtures.CLAUDE_CODE_OAUTH)
    handoff = keyring.seal([("authorization", b"sk-ant-oat01-BENCH")], time.time())
    kept = recorded.without("authorization", "host", "content-length", "connection")
    return [*kept, ("x-credential-handoff", handoff), ("x-api-key", litellm.EGRESS_TOKEN)]


def client_headers() -> list[tuple[str, str]]:
    recorded = fixtures.load(fixtures.CLAUDE_CODE_OAUTH)
    return [
        (k, litellm.MASTER_KEY if k.lower() == "x-litellm-api-key" else v)
        for k, v in recorded.without("host", "content-length", "connection")
    ]


@dataclass
class Variant:
    name: str
    url: str
    headers: list[tuple[str, str]]
    processes: dict[str, Proc]
    body: str = field(default_factory=body)


@contextmanager
def variants(work: Path, keyring: Keyring, with_litellm: bool) -> Iterator[dict[str, Variant]]:
    stream_file = work / "stream.sse"
    line = b"event: content_block_delta\ndata: " + b"x" * 1000 + b"\n\n"
    stream_file.write_bytes((line * (STREAM_BYTES // len(line) + 1))[:STREAM_BYTES])
    keys = work / "seal-keys"
    keys.write_text(base64.urlsafe_b64encode(SEAL_KEY).decode() + "\n")
    token = work / "egress-token"
    token.write_text(litellm.EGRESS_TOKEN + "\n")
    with ExitStack() as stack:
        upstream_port = free_port()
        upstream = start_envoy(stand_in(upstream_port, stream_file), work, "stand_in")
        stack.callback(upstream.stop)
        anthropic = Upstream("http", "127.0.0.1", upstream_port)
        found: dict[str, Variant] = {}
        sockets = {"f": work / "null.sock", "g": work / "null-shipped.sock", "c": work / "ext-proc.sock"}
        nulls = {}
        for name, extra in (("f", []), ("g", ["--shipped"])):
            nulls[name] = Proc([sys.executable, "-m", "bench.null_server", f"unix:{sockets[name]}", *extra])
            nulls[name].wait_line("serving ext_proc on")
            stack.callback(nulls[name].stop)
        server = Proc([str(BIN / "ext-proc"), "serve", "--listen", f"unix:{sockets['c']}", "--seal-key-file", str(keys),
                       "--egress-token-file", str(token), "--metrics-listen", f"127.0.0.1:{free_port()}"],
                      REPLAYED_HANDOFF)  # fmt: skip
        server.ready_line = server.wait_line("serving ext_proc on")
        stack.callback(server.stop)
        for name, kind, proc in (
            ("a", "none", None),
            ("b", "lua", None),
            ("f", "ext_proc", nulls["f"]),
            ("g", "ext_proc", nulls["g"]),
            ("c", "ext_proc", server),
        ):
            port = free_port()
            socket_path = sockets.get(name, sockets["c"])
            layout = Layout(
                egress=HostPort(LOOPBACK, port), anthropic=anthropic, ext_proc=f"unix:{socket_path}", admin=ADMIN
            )
            envoy = start_envoy(egress_document(layout, kind), work, name)
            stack.callback(envoy.stop)
            processes = {"envoy": envoy} | ({"server": proc} if proc else {})
            found[name] = Variant(name, f"http://127.0.0.1:{port}/v1/messages", egress_headers(keyring), processes)
        if with_litellm:
            ingress, egress, litellm_port = free_port(), free_port(), free_port()
            layout = Layout(
                ingress=HostPort(LOOPBACK, ingress),
                egress=HostPort(LOOPBACK, egress),
                litellm=Upstream("http", LOOPBACK, litellm_port),
                anthropic=anthropic,
                ext_proc=f"unix:{sockets['c']}",
                admin=ADMIN,
            )
            gateway = start_envoy(bootstrap(layout), work, "d")
            stack.callback(gateway.stop)
            # One LiteLLM process for d and e: its model routes through the egress leg, the same model under a
            # second name goes straight to the stand-in, so both compare the same warmed-up process.
            setup = litellm.Setup(
                litellm.RELEASES[-1],
                f"http://{LOOPBACK}:{egress}",
                litellm.EGRESS_TOKEN,
                direct_base=f"http://{anthropic.host}:{anthropic.port}",
            )
            proxy = litellm.start(setup, work / "litellm", litellm_port)
            stack.callback(proxy.stop)
            chain = {"envoy": gateway, "server": server, "litellm": proxy.proc}
            found["d"] = Variant("d", f"http://{LOOPBACK}:{ingress}/v1/messages", client_headers(), chain)
            found["e"] = Variant(
                "e", f"{proxy.url}/v1/messages", client_headers(), {"litellm": proxy.proc}, body(litellm.DIRECT_MODEL)
            )
        yield found


def measure(variant: Variant, concurrency: int, seconds: float, work: Path) -> Result:
    before = {role: cpu_seconds(p.pid) for role, p in variant.processes.items()}
    started = time.monotonic()
    stats = wrk(variant.url, variant.headers, variant.body, concurrency, seconds, work)
    elapsed = time.monotonic() - started
    after = {role: cpu_seconds(p.pid) for role, p in variant.processes.items()}
    count = max(1, int(stats["requests"]))
    cpu = {role: (after[role] - before[role]) / count * 1e6 for role in before}
    return Result(variant.name, concurrency, count, elapsed, stats["rps"], stats["p50"], stats["p99"],
                  int(stats["errors"]), cpu)  # fmt: skip


def measure_interleaved(
    chosen: list[Variant], concurrency: int, seconds: float, slices: int, work: Path
) -> list[Result]:
    """Each variant for `seconds` in total, in `slices` turns taken round-robin with the others.

    Machines drift (LiteLLM's own speed moves by a third over tens of seconds), so variants compared in a ratio
    are measured under the same conditions. A point's p50 and p99 are the medians over its slices; its CPU per
    request is the total over all of them.
    """
    for variant in chosen:
        measure(variant, concurrency, 1, work)  # warm up: connections, caches
    parts: dict[str, list[Result]] = {v.name: [] for v in chosen}
    for _ in range(slices):
        for variant in chosen:
            parts[variant.name].append(measure(variant, concurrency, seconds / slices, work))
    combined = []
    for name, runs in parts.items():
        requests = sum(r.requests for r in runs)
        elapsed = sum(r.seconds for r in runs)
        cpu = {role: sum(r.cpu_us[role] * r.requests for r in runs) / requests for role in runs[0].cpu_us}
        combined.append(
            Result(name, concurrency, requests, elapsed, statistics.mean(r.rps for r in runs),
                   statistics.median(r.p50_us for r in runs),
                   statistics.median(r.p99_us for r in runs), sum(r.errors for r in runs), cpu)
        )  # fmt: skip
    return combined


def stream_once(url: str) -> float:
    """MB/s for one 50 MB SSE response, read by curl (a Python reader is slower than Envoy and adds its noise)."""
    base = url.rsplit("/v1/", 1)[0]
    out = subprocess.run(
        ["curl", "--silent", "--fail", "--output", "/dev/null", "--header", "x-api-key: sk-ant-api03-BENCH",
         "--write-out", "%{size_download} %{speed_download}", f"{base}/stream"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    size, speed = out.split()
    assert int(size) == STREAM_BYTES, size
    return float(speed) / (1 << 20)


def stream_throughputs(urls: dict[str, str], rounds: int = 5) -> dict[str, float]:
    """Best MB/s per variant over `rounds`, the variants taking turns (one stream is noisy on a shared machine)."""
    best = dict.fromkeys(urls, 0.0)
    for _ in range(rounds):
        for name, url in urls.items():
            best[name] = max(best[name], stream_once(url))
    return best


def scrape(server: Proc, metric: str) -> float:
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:  # noqa: S310
        for line in response.read().decode().splitlines():
            if line.startswith(metric + " "):
                return float(line.split()[1])
    return 0.0


def soak(variant: Variant, total: int, work: Path) -> list[tuple[int, float]]:
    server = variant.processes["server"]
    samples = [(0, rss_mb(server.pid))]
    done = 0
    while done < total:
        result = measure(variant, 16, 20, work)
        done += result.requests
        samples.append((done, rss_mb(server.pid)))
        print(f"  soak: {done} requests, server RSS {samples[-1][1]:.1f} MB", flush=True)
    return samples


def report(results: list[Result], streams: dict[str, float], body_bytes: float) -> str:
    lines = [
        "| variant | c | req/s | p50 µs | p99 µs | CPU µs/req | split | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        split = ", ".join(f"{k} {v:.0f}" for k, v in r.cpu_us.items())
        lines.append(f"| {r.variant} | {r.concurrency} | {r.rps:.0f} | {r.p50_us:.0f} | {r.p99_us:.0f} | "
                     f"{r.cpu_per_request_us:.0f} | {split} | {r.errors} |")  # fmt: skip
    by = {(r.variant, r.concurrency): r for r in results}
    lines.append("")
    for c in sorted({r.concurrency for r in results}):
        ratios = []
        for top, bottom in (("c", "f"), ("c", "g"), ("g", "f"), ("c", "a"), ("f", "a"), ("b", "a"), ("d", "e")):
            if (top, c) in by and (bottom, c) in by:
                t, b = by[(top, c)], by[(bottom, c)]
                cpu = t.cpu_per_request_us / b.cpu_per_request_us
                ratios.append(f"{top}/{bottom} p50 {t.p50_us / b.p50_us:.2f} CPU {cpu:.2f}")
        lines.append(f"c={c}: " + "; ".join(ratios))
    if streams:
        a, shipped = streams.get("a", 0.0), streams.get("c", 0.0)
        lines.append(f"50 MB SSE: a {a:.0f} MB/s, c {shipped:.0f} MB/s, c/a {shipped / a if a else 0:.3f}; "
                     f"body bytes seen by the server: {body_bytes:.0f}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="1 s per point, c=1 only: proves the command works")
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each point")
    parser.add_argument("--slices", type=int, default=4, help="each point is measured in this many interleaved slices")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--variants", default="a,b,f,g,c,d,e")
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
    wanted = args.variants.split(",")
    keyring = Keyring([SEAL_KEY], 600)
    with tempfile.TemporaryDirectory(prefix="ext-proc-bench-") as tmp:
        work = Path(tmp)
        with variants(work, keyring, with_litellm=bool({"d", "e"} & set(wanted))) as found:
            results = []
            for c in levels:
                chosen = [found[name] for name in wanted if name in found]
                for result in measure_interleaved(chosen, c, seconds, args.slices, work):
                    results.append(result)
                    print(f"  {result.variant} c={c}: {result.rps:.0f} req/s, p50 {result.p50_us:.0f} µs", flush=True)
            streams = stream_throughputs({n: found[n].url for n in ("a", "c") if n in found}, 1 if args.smoke else 5)
            body_bytes = scrape(found["c"].processes["server"], "ext_proc_body_bytes_total") if "c" in found else 0.0
            text = report(results, streams, body_bytes)
            print(text)
            soaked = soak(found["c"], args.soak, work) if args.soak else []
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
