"""chimera-serve vs vLLM's own OpenAI server: same model, same load, one run, decided on many paired rounds.

Method
    The servers start once and stay up side by side (an idle one costs next to nothing: its engine waits on
    its queue; the report shows what the idle ones took). Then come `--cycles` cycles; each drives the same
    streaming chat load (fixed prompts, greedy, `ignore_eos`, so every request makes exactly `--max-tokens`
    tokens) at every server once, in an order rotating through all permutations (A B, B A, ...), so the
    machine's drift hits every server in every position alike. Each cycle gives one throughput ratio and one
    TTFT difference; the criteria are decided on their medians, with the quartiles and a distribution-free
    95% interval of the median beside them. Why: on 2 shared cores one round's throughput varies by +-10-20%
    and drifts by 20% over minutes, so one A B B A run cannot decide a 3% criterion. Short rounds and many
    cycles gave the tightest interval for the time spent (adjacent rounds see the same machine): here 120
    cycles of one-wave rounds (8 requests) bounded the median ratio to +-0.015, 10 cycles of 96 to +-0.11.

Per-token CPU
    Around every round the benchmark reads utime+stime from /proc of each server's API process (the one
    serving HTTP) and of its engine processes: CPU ms per 1000 output tokens, pooled over all rounds. On a
    small machine the API process competes with the engine for the cores, so this figure shows directly
    what a server's HTTP layer costs. (The engine figure includes spinning: vLLM's engine core and worker
    busy-poll their shared-memory queues, so it is not the engine's work alone.)

`--ab-reasoning-config` adds chimera-serve whose engine starts without `reasoning_config` (the thinking-budget
state, chimera_serve/engine.py), to see in the same run whether it costs.

    python benchmarks/serve_vs_vllm.py --model DIR [--requests 8 --concurrency 8 --max-tokens 64 --cycles 120]

Writes benchmarks/results/serve-vs-vllm.json and .md (command, machine, date, versions, git commit); the
previous result there moves into their history table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from benchmarks._common import free_port, stop_process

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
OURS, REF, NO_RC = "chimera-serve", "vllm", "chimera-serve-no-reasoning-config"
TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")

# The A/B arm: chimera-serve, its engine args without `reasoning_config` (patched in this process only; the
# engine core receives the finished config). Anything else is the product's own code path.
_NO_RC_LAUNCHER = """
import vllm.engine.arg_utils as au
from chimera_serve import cli
_args = au.AsyncEngineArgs
def _without_reasoning_config(**kw):
    kw.pop("reasoning_config")
    return _args(**kw)
au.AsyncEngineArgs = _without_reasoning_config
cli.main()
"""


def server_command(kind: str, a: argparse.Namespace, port: int) -> list[str]:
    common = ["--model", str(a.model), "--port", str(port), "--served-model-name", NAME,
              "--max-model-len", str(a.max_model_len)]  # fmt: skip
    if a.enforce_eager:
        common.append("--enforce-eager")
    if a.max_num_seqs:
        common += ["--max-num-seqs", str(a.max_num_seqs)]
    ours = [*common, "--max-queued", str(a.requests)]
    if kind == OURS:
        return [sys.executable, "-m", "chimera_serve.cli", *ours]
    if kind == NO_RC:
        return [sys.executable, "-c", _NO_RC_LAUNCHER, *ours]
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *common, "--reasoning-parser", "deepseek_r1",
            "--disable-uvicorn-access-log"]  # fmt: skip


def prompts(n: int, words: int) -> list[str]:
    """Deterministic, distinct prompts of about `words` words."""
    return [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(words)) + f" #{i}" for i in range(n)]


# -- CPU accounting from /proc ---------------------------------------------------------------------------


def proc_cpu_ms(pid: int) -> float:
    """utime + stime of one process (all its threads), in ms; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * TICK_MS


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (vLLM's engine core and whatever it started)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        found += kids
        frontier = kids
    return found


def machine_busy_ms() -> tuple[float, float]:
    """(busy, steal) CPU ms of the whole machine since boot, from /proc/stat."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    steal = v[7] if len(v) > 7 else 0
    return (sum(v[:8]) - idle - steal) * TICK_MS, steal * TICK_MS


def client_cpu_ms() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return (ru.ru_utime + ru.ru_stime) * 1000


# -- servers and load ------------------------------------------------------------------------------------


@dataclass
class Server:
    kind: str
    proc: subprocess.Popen[bytes]
    base: str
    command: str
    engine_pids: list[int]

    def cpu(self) -> tuple[float, float]:
        """(API process, engine processes) CPU ms so far."""
        return proc_cpu_ms(self.proc.pid), sum(proc_cpu_ms(p) for p in self.engine_pids)

    def stop(self) -> None:
        stop_process(self.proc, grace_s=120)


def start_server(kind: str, a: argparse.Namespace) -> Server:
    port = free_port()
    cmd = server_command(kind, a, port)
    log = a.log_dir / f"{kind}-{port}.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"{kind} exited with {proc.returncode}; see {log}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base}/v1/models", timeout=2).status_code == 200:
                break
        if time.monotonic() - t0 > a.start_timeout_s:
            proc.kill()
            raise SystemExit(f"{kind} not up after {a.start_timeout_s} s; see {log}")
        time.sleep(1)
    print(f"{kind}: up in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    shown = cmd if kind != NO_RC else [cmd[0], "-c", "<launcher without reasoning_config>", *cmd[3:]]
    return Server(kind, proc, base, " ".join(shown), descendants(proc.pid))


async def one_request(c: aiohttp.ClientSession, base: str, prompt: str, max_tokens: int) -> dict[str, float]:
    body = {
        "model": NAME, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
        "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    async with c.post(f"{base}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.content:  # one SSE line at a time
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            if ttft is None and chunk.get("choices"):  # both servers send it on the first token
                ttft = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return {
        "ttft_s": ttft if ttft is not None else math.nan,
        "e2e_s": time.perf_counter() - t0,
        "tokens": tokens,
    }


async def drive(
    base: str, a: argparse.Namespace, n: int, max_tokens: int
) -> tuple[list[dict[str, float]], float]:
    """`n` requests, `a.concurrency` at a time. aiohttp, not httpx: httpx's client took ~130 ms of CPU per 1000
    streamed tokens on the same 2 cores as the servers (aiohttp ~50), which is noise in what is measured."""
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=a.concurrency)
    ) as c:
        sem = asyncio.Semaphore(a.concurrency)

        async def bounded(p: str) -> dict[str, float]:
            async with sem:
                return await one_request(c, base, p, max_tokens)

        t0 = time.perf_counter()
        results = await asyncio.gather(*(bounded(p) for p in prompts(n, a.prompt_words)))
        return results, time.perf_counter() - t0


def run_round(
    srv: Server, servers: list[Server], a: argparse.Namespace, cycle: int, pos: int
) -> dict[str, Any]:
    """One timed load on `srv`; CPU of every process read around it."""
    before = {s.kind: s.cpu() for s in servers}
    busy0, steal0 = machine_busy_ms()
    client0 = client_cpu_ms()
    results, wall = asyncio.run(drive(srv.base, a, a.requests, a.max_tokens))
    client = client_cpu_ms() - client0
    busy1, steal1 = machine_busy_ms()
    after = {s.kind: s.cpu() for s in servers}
    api, engine = (after[srv.kind][i] - before[srv.kind][i] for i in (0, 1))
    idle = sum(sum(after[k]) - sum(before[k]) for k in after if k != srv.kind)
    ttfts = sorted(r["ttft_s"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    return {
        "server": srv.kind, "cycle": cycle, "position": pos, "requests": len(results), "output_tokens": tokens,
        "wall_s": wall, "output_tokens_per_s": tokens / wall,
        "ttft_median_ms": 1000 * statistics.median(ttfts), "ttft_p90_ms": 1000 * ttfts[int(0.9 * (len(ttfts) - 1))],
        "e2e_median_s": statistics.median(r["e2e_s"] for r in results),
        "api_cpu_ms": api, "engine_cpu_ms": engine,
        "api_cpu_ms_per_1k_tokens": 1000 * api / tokens, "engine_cpu_ms_per_1k_tokens": 1000 * engine / tokens,
        "client_cpu_ms": client, "idle_servers_cpu_ms": idle,
        # The machine's busy time not spent by these servers or this client: others' work on shared cores.
        "others_cpu_ms": (busy1 - busy0) - (api + engine + idle + client),
        "steal_pct": 100 * (steal1 - steal0) / (wall * 1000 * (os.cpu_count() or 1)),  # the hypervisor's share
    }  # fmt: skip


def check_reasoning_config(servers: list[Server]) -> dict[str, int]:
    """HTTP status of a request with a thinking budget at each chimera-serve: 200 where the engine has
    `reasoning_config`, an error where it has not (proves the A/B arms differ)."""
    body = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
            "reasoning": {"max_tokens": 4}}  # fmt: skip
    return {
        s.kind: httpx.post(f"{s.base}/v1/chat/completions", json=body, timeout=60).status_code
        for s in servers
        if s.kind != REF
    }


# -- statistics ------------------------------------------------------------------------------------------


def median_ci(xs: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """Distribution-free interval of the median: the k-th smallest and k-th largest value, k the largest
    with P(Binomial(n, 1/2) < k) <= (1 - level) / 2; None when n is too small for `level`."""
    xs, n = sorted(xs), len(xs)
    k, cdf = 0, 0.0
    while k < n and cdf + math.comb(n, k) / 2**n <= (1 - level) / 2:
        cdf += math.comb(n, k) / 2**n
        k += 1
    return (xs[k - 1], xs[n - k]) if k > 0 else None


def spread(xs: list[float]) -> dict[str, Any]:
    q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return {"median": statistics.median(xs), "q1": q[0], "q3": q[2], "min": min(xs), "max": max(xs),
            "ci95_of_median": median_ci(xs), "values": xs}  # fmt: skip


def compare(rounds: list[dict[str, Any]], a_kind: str, b_kind: str) -> dict[str, Any]:
    """Per-cycle throughput ratio a/b and TTFT difference a-b; the ratio of tokens/s pooled over all rounds."""
    by = {(r["cycle"], r["server"]): r for r in rounds}
    cycles = sorted({r["cycle"] for r in rounds})
    ratios = [by[c, a_kind]["output_tokens_per_s"] / by[c, b_kind]["output_tokens_per_s"] for c in cycles]
    diffs = [by[c, a_kind]["ttft_median_ms"] - by[c, b_kind]["ttft_median_ms"] for c in cycles]
    tok_s = {k: 1 / pooled_per_token(rounds, k, "wall_s") for k in (a_kind, b_kind)}
    return {"throughput_ratio": spread(ratios), "ttft_median_diff_ms": spread(diffs),
            "pooled_throughput_ratio": tok_s[a_kind] / tok_s[b_kind]}  # fmt: skip


def pooled_per_token(rounds: list[dict[str, Any]], kind: str, key: str) -> float:
    """Sum of `key` over `kind`'s rounds per output token."""
    rs = [r for r in rounds if r["server"] == kind]
    return sum(r[key] for r in rs) / sum(r["output_tokens"] for r in rs)


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    kinds = list(dict.fromkeys(r["server"] for r in rounds))
    keys = (
        "output_tokens_per_s",
        "ttft_median_ms",
        "api_cpu_ms_per_1k_tokens",
        "engine_cpu_ms_per_1k_tokens",
    )
    per_server = {
        k: {
            **{key: spread([r[key] for r in rounds if r["server"] == k]) for key in keys},
            "api_cpu_ms_per_1k_tokens_pooled": 1000 * pooled_per_token(rounds, k, "api_cpu_ms"),
            "engine_cpu_ms_per_1k_tokens_pooled": 1000 * pooled_per_token(rounds, k, "engine_cpu_ms"),
        }
        for k in kinds
    }
    main = compare(rounds, OURS, REF)
    out = {
        "per_server": per_server,
        f"{OURS}_vs_{REF}": main,
        "throughput_ratio": main["throughput_ratio"]["median"],
        "ttft_median_diff_ms": main["ttft_median_diff_ms"]["median"],
        "pass_throughput": main["throughput_ratio"]["median"] >= 0.97,
        "pass_ttft": main["ttft_median_diff_ms"]["median"] <= 10.0,
    }
    if NO_RC in kinds:
        out[f"{OURS}_vs_{NO_RC}"] = compare(rounds, OURS, NO_RC)
    return out


# -- report ----------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))  # fmt: skip
    import vllm

    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "vllm": vllm.__version__, "gpu": None}  # fmt: skip


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "chimera_serve", "benchmarks/serve_vs_vllm.py")
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if dirty else "")


def history_row(result: dict[str, Any]) -> dict[str, Any]:
    """A finished result, shortened for the history table."""
    s = result["summary"]
    tok_s = {k: v["output_tokens_per_s"]["median"] for k, v in s["per_server"].items()}
    return {
        "date": result["date"], "code": result["code"], "command": result["command"],
        "chimera_serve_tok_s": [tok_s[OURS]], "vllm_tok_s": [tok_s[REF]],
        "ratio": s["throughput_ratio"], "ratio_of": f"median of {len(result['rounds']) // len(tok_s)} per-cycle ratios",
        "ttft_diff_ms": s["ttft_median_diff_ms"],
        "api_cpu_ms_per_1k_tokens": {k: v["api_cpu_ms_per_1k_tokens_pooled"] for k, v in s["per_server"].items()},
    }  # fmt: skip


def fmt_spread(sp: dict[str, Any], f: str) -> str:
    ci = sp["ci95_of_median"]
    ci_txt = f"95% CI of the median {ci[0]:{f}}..{ci[1]:{f}}" if ci else "too few cycles for a 95% CI"
    return f"{sp['median']:{f}} ({ci_txt}; quartiles {sp['q1']:{f}}..{sp['q3']:{f}}; range {sp['min']:{f}}..{sp['max']:{f}})"


def md_tables(result: dict[str, Any]) -> tuple[str, str, str]:
    """(per-server table, every round, history) as markdown rows."""
    s = result["summary"]
    cycles = 1 + max(r["cycle"] for r in result["rounds"])
    halves = [[r for r in result["rounds"] if (r["cycle"] < cycles // 2) == first] for first in (True, False)]

    def api_cpu(k: str) -> str:  # pooled over all rounds, then over each half of the cycles (is it stable?)
        parts = ", ".join(f"{1000 * pooled_per_token(h, k, 'api_cpu_ms'):.1f}" for h in halves if h)
        return f"**{s['per_server'][k]['api_cpu_ms_per_1k_tokens_pooled']:.1f}** (halves: {parts})"

    servers = "\n".join(
        f"| {k} | {v['output_tokens_per_s']['median']:.0f} | {v['ttft_median_ms']['median']:.1f} | {api_cpu(k)} | "
        f"{v['engine_cpu_ms_per_1k_tokens_pooled']:.0f} |"
        for k, v in s["per_server"].items()
    )
    rounds = "\n".join(
        f"| {r['cycle']} | {r['server']} | {r['output_tokens_per_s']:.0f} | {r['ttft_median_ms']:.1f} | "
        f"{r['ttft_p90_ms']:.1f} | {r['api_cpu_ms']:.0f} | {r['engine_cpu_ms']:.0f} | {r['idle_servers_cpu_ms']:.0f} | "
        f"{r['others_cpu_ms']:.0f} |"
        for r in result["rounds"]
    )

    def cpu(h: dict[str, Any]) -> str:
        c = h.get("api_cpu_ms_per_1k_tokens")
        return f"{c[OURS]:.1f} / {c[REF]:.1f}" if c else "not measured"

    history = "\n".join(
        f"| {h['date']} | {h['code']} | {', '.join(f'{x:.1f}' for x in h['chimera_serve_tok_s'])} | "
        f"{', '.join(f'{x:.1f}' for x in h['vllm_tok_s'])} | {h['ratio']:.3f} ({h['ratio_of']}) | "
        f"{h['ttft_diff_ms']:+.1f} ms | {cpu(h)} |"
        for h in result["history"]
    )  # fmt: skip
    return servers, rounds, history


def write_markdown(path: Path, result: dict[str, Any]) -> None:
    s, m = result["summary"], result["machine"]
    main = s[f"{OURS}_vs_{REF}"]
    servers, rounds, history = md_tables(result)
    ab = ""
    if f"{OURS}_vs_{NO_RC}" in s:
        c = s[f"{OURS}_vs_{NO_RC}"]
        ab = (
            f"**reasoning_config A/B** (chimera-serve with it / without it; HTTP status of a request with a "
            f"reasoning budget: {result['reasoning_config_check']}): throughput ratio "
            f"{fmt_spread(c['throughput_ratio'], '.3f')}, pooled {c['pooled_throughput_ratio']:.3f}; "
            f"TTFT difference {fmt_spread(c['ttft_median_diff_ms'], '+.1f')} ms.\n\n"
        )
    path.write_text(
        f"# chimera-serve vs vLLM's OpenAI server\n\n"
        f"Date: {result['date']}  \nCode: {result['code']}  \n"
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}, Python {m['python']}, vLLM {m['vllm']}, no GPU  \n"
        f"Model: `{result['model']}` {result.get('model_desc', '')}  \nLoad: {result['load']}\n\n"
        f"Command:\n\n```\n{result['command']}\n```\n\n"
        f"**Throughput ratio** (chimera-serve / vLLM): {s['throughput_ratio']:.3f} "
        f"({'pass' if s['pass_throughput'] else 'FAIL'}, criterion >= 0.97)  \n"
        f"**Median TTFT difference**: {s['ttft_median_diff_ms']:+.1f} ms "
        f"({'pass' if s['pass_ttft'] else 'FAIL'}, criterion <= 10 ms)\n\n"
        f"Both are medians over {len(main['throughput_ratio']['values'])} cycles (one round per server each, "
        f"orders rotating). Throughput ratio {fmt_spread(main['throughput_ratio'], '.3f')}; of tokens/s pooled over "
        f"all rounds {main['pooled_throughput_ratio']:.3f}. TTFT difference "
        f"{fmt_spread(main['ttft_median_diff_ms'], '+.1f')} ms.\n\n{ab}"
        f"| server | output tok/s (median round) | TTFT ms (median round) | API-process CPU ms per 1000 tokens "
        f"(pooled) | engine CPU ms per 1000 tokens (pooled, spinning included) |\n|---|---|---|---|---|\n{servers}\n\n"
        f"API-process CPU: utime+stime of the process serving HTTP (not its engine processes), read from /proc "
        f"around each round.\n\n"
        f"<details><summary>Every round</summary>\n\n"
        f"| cycle | server | output tok/s | TTFT median ms | TTFT p90 ms | API CPU ms | engine CPU ms | "
        f"idle servers' CPU ms | others' CPU ms |\n|---|---|---|---|---|---|---|---|---|\n{rounds}\n\n</details>\n\n"
        f"## History (earlier code, earlier methods)\n\n"
        f"| run (UTC) | code | chimera-serve tok/s | vLLM tok/s | ratio | median TTFT diff | "
        f"API CPU ms/1k tok (chimera-serve / vLLM) |\n|---|---|---|---|---|---|---|\n{history}\n"
        + "".join(f"\n{n}\n" for n in result.get("history_notes", []))
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--model-desc", default="", help="how the model was made, for the report")
    p.add_argument("--requests", type=int, default=8, help="per round (default: one wave at concurrency 8)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt-words", type=int, default=40)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--max-num-seqs", type=int, default=None)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument(
        "--cycles", type=int, default=120, help="a multiple of the orders (2; 6 with the A/B) balances them"
    )
    p.add_argument(
        "--ab-reasoning-config", action="store_true", help="add chimera-serve without reasoning_config"
    )
    p.add_argument("--start-timeout-s", type=float, default=600)
    p.add_argument("--log-dir", type=Path, default=Path("/tmp/serve-vs-vllm-logs"), help="servers' logs")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/serve-vs-vllm")
    a = p.parse_args()
    a.log_dir.mkdir(parents=True, exist_ok=True)

    kinds = [OURS, REF] + ([NO_RC] if a.ab_reasoning_config else [])
    orders = list(itertools.permutations(kinds))
    servers: list[Server] = []
    try:
        for kind in kinds:  # one at a time: a starting engine would disturb another's rounds
            servers.append(start_server(kind, a))
            asyncio.run(drive(servers[-1].base, a, 2 * a.concurrency, 8))  # warm-up
        check = check_reasoning_config(servers)
        if check[OURS] != 200 or (NO_RC in check and check[NO_RC] == 200):
            raise SystemExit(f"reasoning_config arms are not what they claim: {check}")
        by_kind = {s.kind: s for s in servers}
        rounds = []
        for cycle in range(a.cycles):
            for pos, kind in enumerate(orders[cycle % len(orders)]):
                rounds.append(run_round(by_kind[kind], servers, a, cycle, pos))
                r = rounds[-1]
                print(f"cycle {cycle} {kind}: {r['output_tokens_per_s']:.0f} tok/s, TTFT {r['ttft_median_ms']:.1f} ms, "
                      f"API {r['api_cpu_ms_per_1k_tokens']:.0f} ms/1k tok", file=sys.stderr)  # fmt: skip
    finally:
        for s in servers:
            s.stop()

    previous: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        previous = json.loads(a.out.with_suffix(".json").read_text())
    history = previous.get("history", []) + ([history_row(previous)] if "rounds" in previous else [])
    argv0 = Path(sys.argv[0]).resolve()
    script = argv0.relative_to(REPO) if argv0.is_relative_to(REPO) else argv0
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "code": git_commit(),
        "command": "python " + shlex.join([str(script), *sys.argv[1:]]),
        "machine": machine(),
        "model": str(a.model),
        "model_desc": a.model_desc,
        "load": f"{a.requests} streaming chat requests per round, concurrency {a.concurrency}, {a.max_tokens} output "
        f"tokens each (greedy, ignore_eos), prompts of ~{a.prompt_words} words; {a.cycles} cycles",
        "servers": {s.kind: s.command for s in servers},
        "reasoning_config_check": check,
        "rounds": rounds,
        "summary": summarize(rounds),
        "history": history,
        "history_notes": previous.get("history_notes", []),
    }  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(a.out.with_suffix(".md"), result)
    keys = ("throughput_ratio", "ttft_median_diff_ms", "pass_throughput", "pass_ttft")
    print(json.dumps({k: result["summary"][k] for k in keys}))


if __name__ == "__main__":
    main()
