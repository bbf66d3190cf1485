"""The report: a table of every point, the ratios in one run, and what the gateway adds next to LiteLLM."""

from __future__ import annotations

import statistics

from bench.measure import GATEWAY_ROLES, Result
from bench.variants import GATEWAY_PAIRS, RATIOS


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})" if values else "-"


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
        for top, bottom in RATIOS:
            if (top, c) in by and (bottom, c) in by:
                t, b = by[(top, c)], by[(bottom, c)]
                cpu = t.cpu_per_request_us / b.cpu_per_request_us
                ratios.append(f"{top}/{bottom} p50 {t.p50_us / b.p50_us:.2f} CPU {cpu:.2f}")
        lines.append(f"c={c}: " + "; ".join(ratios))
    gateway = gateway_table(by)
    if gateway:
        lines += ["", *gateway]
    if streams:
        a, shipped = streams.get("a", 0.0), streams.get("c", 0.0)
        lines.append(f"50 MB SSE: a {a:.0f} MB/s, c {shipped:.0f} MB/s, c/a {shipped / a if a else 0:.3f}; "
                     f"body bytes seen by the server: {body_bytes:.0f}")  # fmt: skip
    return "\n".join(lines)


def gateway_table(by: dict[tuple[str, int], Result]) -> list[str]:
    """What users pay: the gateway's CPU per request (its Envoy and server) against LiteLLM's own in the same
    chain, and the p50 it adds over LiteLLM alone; medians of the interleaved slices, with their range."""
    lines = [
        "| header set | c | gateway CPU µs/req | LiteLLM CPU µs/req (in d) | gateway/LiteLLM | p50 added µs |",
        "|---|---|---|---|---|---|",
    ]
    for chain, alone, label in GATEWAY_PAIRS:
        for c in sorted({c for (v, c) in by if v == chain}):
            if (alone, c) not in by:
                continue
            d, e = by[(chain, c)], by[(alone, c)]
            gateway = sum(d.cpu_us.get(role, 0.0) for role in GATEWAY_ROLES)
            litellm = d.cpu_us.get("litellm", 0.0)
            shares = [g / (total - g) for g, total in zip(d.slices_gateway_us, d.slices_cpu_us, strict=True)
                      if total > g]  # fmt: skip
            added = [p - q for p, q in zip(d.slices_p50_us, e.slices_p50_us, strict=True)]
            share = f"{gateway / litellm:.1%}" if litellm else "-"
            if shares:
                share += f" ({min(shares):.1%}-{max(shares):.1%})"
            lines.append(f"| {label} | {c} | {_spread(d.slices_gateway_us)} | {litellm:.0f} | {share} | "
                         f"{_spread(added)} |")  # fmt: skip
    return lines if len(lines) > 2 else []
