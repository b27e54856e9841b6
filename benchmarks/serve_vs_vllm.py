"""chimera-serve vs vLLM's own OpenAI server: same model, same load, one run.

Starts each server in turn on a free port (one engine at a time: the machine may be small), drives the
same streaming chat load with an async httpx client (fixed prompts, greedy, `ignore_eos` so every request
makes exactly `--max-tokens` tokens), and stops it. With `--rounds 2` the order is A B B A, so a drift in
the machine's load hits both servers alike. Reports output tokens/s (sum of usage.completion_tokens over
the load's wall time) and TTFT (request sent -> first chunk with a choice: both servers send it when the
first token is out, text or not), then the
issue's criteria: throughput ratio >= 0.97 and median TTFT difference <= 10 ms.

    python benchmarks/serve_vs_vllm.py --model DIR [--requests 64 --concurrency 8 --max-tokens 64 --rounds 2]

Writes benchmarks/results/serve-vs-vllm.json and .md (the command, machine, date and versions included).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
NAME = "bench"
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(kind: str, a: argparse.Namespace, port: int) -> list[str]:
    common = [
        "--model",
        str(a.model),
        "--port",
        str(port),
        "--served-model-name",
        NAME,
        "--max-model-len",
        str(a.max_model_len),
    ]
    if a.enforce_eager:
        common.append("--enforce-eager")
    if a.max_num_seqs:
        common += ["--max-num-seqs", str(a.max_num_seqs)]
    if kind == "chimera-serve":
        return [sys.executable, "-m", "chimera_serve.cli", *common, "--max-queued", str(a.requests)]
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *common, "--reasoning-parser", "deepseek_r1",
            "--disable-uvicorn-access-log"]  # fmt: skip


def prompts(n: int, words: int) -> list[str]:
    """Deterministic, distinct prompts of about `words` words."""
    return [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(words)) + f" #{i}" for i in range(n)]


async def one_request(c: httpx.AsyncClient, prompt: str, max_tokens: int) -> dict[str, float]:
    body = {
        "model": NAME, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
        "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    async with c.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            if ttft is None and chunk.get(
                "choices"
            ):  # both servers send their first chunk on the first token
                ttft = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return {
        "ttft_s": ttft if ttft is not None else float("nan"),
        "e2e_s": time.perf_counter() - t0,
        "tokens": tokens,
    }


async def drive(base_url: str, a: argparse.Namespace) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=a.concurrency * 2)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as c:
        for p in prompts(a.concurrency, a.prompt_words):  # warm-up: compile paths, fill caches
            await one_request(c, p, 8)
        sem = asyncio.Semaphore(a.concurrency)

        async def bounded(p: str) -> dict[str, float]:
            async with sem:
                return await one_request(c, p, a.max_tokens)

        t0 = time.perf_counter()
        results = await asyncio.gather(*(bounded(p) for p in prompts(a.requests, a.prompt_words)))
        wall = time.perf_counter() - t0
    ttfts = sorted(r["ttft_s"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    return {
        "requests": len(results),
        "output_tokens": tokens,
        "wall_s": wall,
        "output_tokens_per_s": tokens / wall,
        "ttft_median_ms": 1000 * statistics.median(ttfts),
        "ttft_p90_ms": 1000 * ttfts[int(0.9 * (len(ttfts) - 1))],
        "e2e_median_s": statistics.median(r["e2e_s"] for r in results),
    }


def run_server(kind: str, a: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    port = free_port()
    cmd = server_command(kind, a, port)
    log = log_dir / f"{kind}-{port}.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{kind} exited with {proc.returncode}; see {log}")
            try:
                if httpx.get(f"{base}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() - t0 > a.start_timeout_s:
                raise SystemExit(f"{kind} not up after {a.start_timeout_s} s; see {log}")
            time.sleep(1)
        print(f"{kind}: up in {time.monotonic() - t0:.0f} s, driving load", file=sys.stderr)
        return {"server": kind, "command": " ".join(cmd), **asyncio.run(drive(base, a))}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def pooled(kind: str) -> dict[str, float]:
        rs = [r for r in runs if r["server"] == kind]
        return {
            "output_tokens_per_s": sum(r["output_tokens"] for r in rs) / sum(r["wall_s"] for r in rs),
            "ttft_median_ms": statistics.median(r["ttft_median_ms"] for r in rs),
        }

    ours, ref = pooled("chimera-serve"), pooled("vllm")
    ratio = ours["output_tokens_per_s"] / ref["output_tokens_per_s"]
    diff = ours["ttft_median_ms"] - ref["ttft_median_ms"]
    return {
        "chimera_serve": ours,
        "vllm": ref,
        "throughput_ratio": ratio,
        "ttft_median_diff_ms": diff,
        "pass_throughput": ratio >= 0.97,
        "pass_ttft": diff <= 10.0,
    }


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        )
    import vllm

    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "vllm": vllm.__version__, "gpu": None}  # fmt: skip


def write_markdown(path: Path, result: dict[str, Any]) -> None:
    s, m = result["summary"], result["machine"]
    rows = "\n".join(
        f"| {r['server']} | {r['output_tokens_per_s']:.1f} | {r['ttft_median_ms']:.1f} | {r['ttft_p90_ms']:.1f} | "
        f"{r['e2e_median_s']:.3f} | {r['output_tokens']} |"
        for r in result["runs"]
    )
    path.write_text(
        f"# chimera-serve vs vLLM's OpenAI server\n\n"
        f"Date: {result['date']}  \nMachine: {m['cpu']}, {m['cores']} cores, {m['platform']}, vLLM {m['vllm']}, "
        f"no GPU  \nModel: `{result['model']}` {result.get('model_desc', '')}  \nLoad: {result['load']}\n\n"
        f"Command:\n\n```\n{result['command']}\n```\n\n"
        f"| server (run order) | output tok/s | TTFT median ms | TTFT p90 ms | e2e median s | tokens |\n"
        f"|---|---|---|---|---|---|\n{rows}\n\n"
        f"**Throughput ratio** (chimera-serve / vLLM): {s['throughput_ratio']:.3f} "
        f"({'pass' if s['pass_throughput'] else 'FAIL'}, criterion >= 0.97)  \n"
        f"**Median TTFT difference**: {s['ttft_median_diff_ms']:+.1f} ms "
        f"({'pass' if s['pass_ttft'] else 'FAIL'}, criterion <= 10 ms)\n"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--model-desc", default="", help="how the model was made, for the report")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt-words", type=int, default=40)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--max-num-seqs", type=int, default=None)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--rounds", type=int, default=1, help="1: A B; 2: A B B A")
    p.add_argument("--start-timeout-s", type=float, default=600)
    p.add_argument("--log-dir", type=Path, default=Path("/tmp/serve-vs-vllm-logs"), help="servers' logs")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/serve-vs-vllm")
    a = p.parse_args()

    order = ["chimera-serve", "vllm"]
    if a.rounds >= 2:
        order += order[::-1]
    log_dir = a.log_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    runs = [run_server(kind, a, log_dir) for kind in order]
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python "
        + " ".join(
            [
                str(Path(sys.argv[0]).relative_to(REPO) if Path(sys.argv[0]).is_absolute() else sys.argv[0]),
                *sys.argv[1:],
            ]
        ),
        "machine": machine(),
        "model": str(a.model),
        "model_desc": a.model_desc,
        "load": f"{a.requests} streaming chat requests, concurrency {a.concurrency}, {a.max_tokens} output tokens each "
        f"(greedy, ignore_eos), prompts of ~{a.prompt_words} words",
        "runs": runs,
        "summary": summarize(runs),
    }
    a.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(a.out.with_suffix(".md"), result)
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
