"""Is chimera-load's client the bottleneck? Its streams against a canned-token endpoint, one core each.

    python -m benchmarks.load.generator_bench [--streams 500,1000] [--itl-ms 20] [--tokens 200] [--rounds 2]

The fake endpoint (benchmarks/load/fake_server.py, on uvloop when installed) runs pinned to core 1 and emits one
token per open stream every `--itl-ms` (500 streams at 20 ms offer 25,000 tokens/s); this process, pinned to
core 0, runs `run_load` at fixed concurrency = streams, two waves of requests, on each event loop it has
(asyncio, uvloop), alternating in `--rounds` rounds so machine drift hits both alike. Per run it records:
  streamed tok/s   completion tokens received / wall (and in the steady window)
  client CPU       utime + stime of this process over the run, as a share of its one core
  us per token     client CPU per streamed token; 1e6 / it = what one core could read if it had nothing else
  events per read  stream events per socket read: 1 when the client keeps up with the server's ticks
  ITL p50 / p99    against the endpoint's --itl-ms (the client's lag shows here)
  peak streams     streams the endpoint saw open at once
On a shared machine the cores are not ours alone: the report gives the load average and the CPU others took.
Writes benchmarks/results/load-generator.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks._common import markdown_table, write_results
from benchmarks.load import Concurrency, Fixed, LoadConfig, SyntheticWorkload, run_load
from benchmarks.load.runner import loop_factory
from benchmarks.load.servers import fake_server

TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def run_delay_s(pid: int) -> float:
    """Seconds the process's threads have waited for a CPU while runnable (/proc/PID/task/*/schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def machine_busy_s() -> float:
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) * TICK_S  # all but idle and iowait


def self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def peak_streams(base: str) -> int:
    text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    return int(re.search(r"^fake_peak_streams (\d+)", text, re.M).group(1))


def one_run(
    base: str, server_pid: int, streams: int, tokens: int, loop: str, itl_ms: float
) -> dict[str, Any]:
    cfg = LoadConfig(
        url=base, shape=Concurrency(concurrency=streams), max_requests=2 * streams, warmup_requests=0,
        workload=SyntheticWorkload(input_len=Fixed(value=8), output_len=Fixed(value=tokens)),
        crosscheck=False, event_loop=loop, max_duration_s=300,
    )  # fmt: skip
    c0, s0, m0, t0 = self_cpu_s(), proc_cpu_s(server_pid), machine_busy_s(), time.perf_counter()
    w0, sw0 = run_delay_s(os.getpid()), run_delay_s(server_pid)
    res = run_load(cfg)
    c1, s1, m1, t1 = self_cpu_s(), proc_cpu_s(server_pid), machine_busy_s(), time.perf_counter()
    w1, sw1 = run_delay_s(os.getpid()), run_delay_s(server_pid)
    s = res.levels[0]
    reads = sum(r.reads for r in res.runs[0].results)
    events = sum(r.chunks for r in res.runs[0].results)
    client, server, wall = c1 - c0, s1 - s0, t1 - t0
    return {
        "streams": streams, "event_loop": loop, "itl_ms": itl_ms, "tokens_per_stream": tokens,
        "ok": s["ok"], "errors": s["errors"], "wall_s": s["wall_s"],
        "tok_s": s["output_tok_s"], "steady_tok_s": s["steady_output_tok_s"],
        "offered_tok_s": streams * 1000 / itl_ms,
        "client_cpu_s": client, "client_core_share": client / wall,
        "client_us_per_token": 1e6 * client / s["completion_tokens"],
        "one_core_tok_s": s["completion_tokens"] / client,
        "events_per_read": events / reads if reads else None,
        "client_waited_share": (w1 - w0) / wall, "server_waited_share": (sw1 - sw0) / wall,
        "server_cpu_s": server, "server_core_share": server / wall,
        "others_cpu_s": (m1 - m0) - client - server,
        "itl_p50_ms": 1000 * s["itl_s"]["p50"], "itl_p99_ms": 1000 * s["itl_s"]["p99"],
        "ttft_p99_ms": 1000 * s["ttft_s"]["p99"],
        "peak_streams": peak_streams(base),
        "loadavg_1": os.getloadavg()[0],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.load.generator_bench", description=__doc__.split("\n")[0]
    )
    p.add_argument("--streams", default="500,1000", help="concurrent streams per run")
    p.add_argument("--itl-ms", type=float, default=20.0)
    p.add_argument("--tokens", type=int, default=200, help="tokens per response")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="results dir (default benchmarks/results)")
    a = p.parse_args(argv)
    if (os.cpu_count() or 1) < 2:
        sys.exit("error: needs 2 cores (client on core 0, endpoint on core 1)")
    os.sched_setaffinity(0, {0})
    loops = ["asyncio"] + (["uvloop"] if loop_factory("auto")[1] == "uvloop" else [])
    server_args = ["--itl-ms", str(a.itl_ms), "--cpu", "1"] + (["--uvloop"] if "uvloop" in loops else [])
    runs = []
    with fake_server(*server_args) as srv:
        for rnd in range(a.rounds):
            for streams in (int(x) for x in a.streams.split(",")):
                for loop in loops if rnd % 2 == 0 else loops[::-1]:
                    r = one_run(srv.base_url, srv.proc.pid, streams, a.tokens, loop, a.itl_ms)
                    r["round"] = rnd
                    runs.append(r)
                    print(f"round {rnd} {streams} streams {loop}: {r['tok_s']:.0f} tok/s (offered "
                          f"{r['offered_tok_s']:.0f}), client {r['client_core_share']:.0%} of a core, "
                          f"{r['client_us_per_token']:.1f} us/token, {r['events_per_read']:.2f} events/read, "
                          f"ITL p99 {r['itl_p99_ms']:.0f} ms, load {r['loadavg_1']:.1f}", flush=True)  # fmt: skip
    summary = summarize(runs)
    kw = {"results_dir": a.out} if a.out else {}
    write_results("load-generator", {"runs": runs, "summary": summary}, report(runs, summary, a), **kw)
    print(report(runs, summary, a))
    return 0


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (streams, loop): the best and median achieved tok/s and the median client cost."""
    out = {}
    for key in sorted({(r["streams"], r["event_loop"]) for r in runs}):
        rs = sorted((r for r in runs if (r["streams"], r["event_loop"]) == key), key=lambda r: r["tok_s"])
        med = rs[len(rs) // 2]
        out[f"{key[0]} streams, {key[1]}"] = {
            "max_tok_s": rs[-1]["tok_s"], "median_tok_s": med["tok_s"],
            "median_us_per_token": sorted(r["client_us_per_token"] for r in rs)[len(rs) // 2],
            "min_one_core_tok_s": min(r["one_core_tok_s"] for r in rs),
            "peak_streams": max(r["peak_streams"] for r in rs), "errors": sum(r["errors"] for r in rs),
        }  # fmt: skip
    best = max(runs, key=lambda r: r["tok_s"])
    out["criterion"] = {
        "streams_ge_500": max(r["peak_streams"] for r in runs) >= 500,
        "tok_s_ge_20000_on_one_core": best["tok_s"] >= 20_000,
        "best_run": f"{best['streams']} streams on {best['event_loop']}: {best['tok_s']:.0f} tok/s",
    }
    return out


HEADERS = [
    "round", "streams", "client loop", "offered tok/s", "streamed tok/s", "steady tok/s", "client CPU (share of wall)",
    "client waited for a CPU", "client us/token", "tok/s per client CPU-second", "events/read", "ITL p50 / p99 ms",
    "peak streams", "endpoint CPU", "endpoint waited", "others' cores busy", "load avg", "errors",
]  # fmt: skip


def report(runs: list[dict[str, Any]], summary: dict[str, Any], a: argparse.Namespace) -> str:
    rows = [
        [r["round"], r["streams"], r["event_loop"], f"{r['offered_tok_s']:.0f}", f"{r['tok_s']:.0f}",
         f"{r['steady_tok_s']:.0f}" if r["steady_tok_s"] else "-", f"{r['client_core_share']:.0%}",
         f"{r['client_waited_share']:.0%}", f"{r['client_us_per_token']:.1f}", f"{r['one_core_tok_s']:.0f}",
         f"{r['events_per_read']:.2f}", f"{r['itl_p50_ms']:.1f} / {r['itl_p99_ms']:.0f}", r["peak_streams"],
         f"{r['server_core_share']:.0%}", f"{r['server_waited_share']:.0%}",
         f"{r['others_cpu_s'] / r['wall_s']:.2f}", f"{r['loadavg_1']:.1f}", r["errors"]]
        for r in runs
    ]  # fmt: skip
    c = summary["criterion"]
    return (
        f"Client pinned to core 0, canned-token endpoint (benchmarks/load/fake_server.py) pinned to core 1, one "
        f"token per stream every {a.itl_ms:g} ms, {a.tokens} tokens per response, two waves of requests per run "
        f"(concurrency = streams).\n\n"
        f"**>= 500 concurrent streams: {'yes' if c['streams_ge_500'] else 'NO'}; >= 20,000 streamed tokens/s with "
        f"the client on one core: {'yes' if c['tok_s_ge_20000_on_one_core'] else 'NO'}** (best: {c['best_run']}).\n\n"
        + markdown_table(HEADERS, rows)
        + "\n\n'tok/s per client CPU-second' is what the client would read with a core to itself at that "
        "batching (events per read: 1 when it keeps up with the endpoint's ticks, more when it or the endpoint "
        "fell behind); 'waited for a CPU' is the time its threads were runnable but not running "
        "(/proc/PID/task/*/schedstat), i.e. taken by other processes pinned or scheduled on the same core; "
        "'others' cores busy' is the CPU other processes on the machine took during the run, in cores.\n"
    )


if __name__ == "__main__":
    raise SystemExit(main())
