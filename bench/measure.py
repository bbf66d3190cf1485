"""Load and accounting: wrk for requests and latency, /proc for the CPU and memory of each process tree.

CPU is counted per process tree (a process and all its descendants, every thread), before and after each slice,
and divided by the requests the slice completed: what one request costs, idle time included.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import Proc

TICKS = os.sysconf("SC_CLK_TCK")


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
    # CPU µs per request by role (envoy, server, litellm), over all slices.
    cpu_us: dict[str, float] = field(default_factory=dict)
    # Per slice: CPU µs per request, all roles together; and the gateway's roles alone (envoy and server).
    slices_cpu_us: list[float] = field(default_factory=list)
    slices_gateway_us: list[float] = field(default_factory=list)
    slices_p50_us: list[float] = field(default_factory=list)

    @property
    def cpu_per_request_us(self) -> float:
        return sum(self.cpu_us.values())


@dataclass
class Variant:
    """Something to load: a URL, the header set and body sent to it, and the processes whose CPU it costs."""

    name: str
    url: str
    headers: list[tuple[str, str]]
    processes: dict[str, Proc]
    body: str


GATEWAY_ROLES = ("envoy", "server")


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
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "--latency",
               "-s", str(script), url]  # fmt: skip
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
    request is the total over all of them; the per-slice figures are kept for the spread.
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
                   statistics.median(r.p50_us for r in runs), statistics.median(r.p99_us for r in runs),
                   sum(r.errors for r in runs), cpu, [r.cpu_per_request_us for r in runs],
                   [sum(r.cpu_us.get(role, 0.0) for role in GATEWAY_ROLES) for r in runs], [r.p50_us for r in runs])
        )  # fmt: skip
    return combined


def stream_once(url: str, expected_bytes: int) -> float:
    """MB/s for one large SSE response, read by curl (a Python reader is slower than Envoy and adds its noise)."""
    base = url.rsplit("/v1/", 1)[0]
    out = subprocess.run(
        ["curl", "--silent", "--fail", "--output", "/dev/null", "--header", "x-api-key: sk-ant-api03-BENCH",
         "--write-out", "%{size_download} %{speed_download}", f"{base}/stream"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    size, speed = out.split()
    assert int(size) == expected_bytes, size
    return float(speed) / (1 << 20)


def stream_throughputs(urls: dict[str, str], expected_bytes: int, rounds: int = 5) -> dict[str, float]:
    """Best MB/s per variant over `rounds`, the variants taking turns (one stream is noisy on a shared machine)."""
    best = dict.fromkeys(urls, 0.0)
    for _ in range(rounds):
        for name, url in urls.items():
            best[name] = max(best[name], stream_once(url, expected_bytes))
    return best


def soak(variant: Variant, total: int, work: Path) -> list[tuple[int, float]]:
    """Requests through `variant` at c=16 until `total`, with the server's RSS after each batch."""
    server = variant.processes["server"]
    samples = [(0, rss_mb(server.pid))]
    done = 0
    while done < total:
        result = measure(variant, 16, 20, work)
        done += result.requests
        samples.append((done, rss_mb(server.pid)))
        print(f"  soak: {done} requests, server RSS {samples[-1][1]:.1f} MB", flush=True)
    return samples
