"""PROJECTION, not a measurement: R1T2 (DeepSeek-V3 architecture, 61 layers + MTP, FP8) on one 8xH200 node, from
what one H200 measured in `serve_throughput.py`.

Issue 20 (3c). Every number that is not read from the measured results file is an assumption with a name in
`Assumptions` (printed and written with the result); change one with `--set name=value`.

Model of one forward step (all GPUs of a replica in lockstep):
    step(B) = max(bytes_touched_per_gpu(B) / bw_eff, FLOPs(B) / (8 x flops_eff))
              + layers x overhead_per_layer x overhead_factor + communication(B)
- bytes touched per GPU: the weights the step reads (a MoE layer reads its attention, shared expert and router,
  plus every routed expert at least one of its tokens chose: E(n) = 256 x (1 - (1 - 8/256)^n) for n tokens under
  uniform routing) and the KV cache of the batch (MLA: (kv_lora 512 + rope 64) x 2 bytes per token and layer).
- bw_eff and overhead_per_layer are calibrated on the measured model: bytes it touched per decode step at each
  measured concurrency over its TPOT p50 gives the time per byte; TPOT at concurrency 1 less its bytes' time gives
  the per-layer overhead (kernel launches; the measured run was eager, so this overhead is pessimistic).
- TP8: every weight split 8 ways, the MLA latent cache replicated on every rank (vLLM's MLA under TP);
  two all-reduces of B x 7168 bf16 per layer, ring: 2 x 7/8 x bytes / nvlink_busbw + allreduce_latency_s.
- DP8+EP: attention, dense layers and shared experts replicated (each GPU its own B/8 sequences), routed experts
  split 32 per GPU; per MoE layer a dispatch (FP8 hidden) and a combine (bf16) all-to-all of each token to its
  8 experts, 7/8 of them remote, at nvlink_a2a_bw plus a2a_latency_s; expert load imbalance ep_imbalance.
- Prefill: FLOP-bound, 2 x active parameters per token at prefill_flops_eff per GPU (one prompt on all 8 GPUs
  under TP8, on its own GPU under DP8+EP); it shares the GPUs with decoding:
  out tok/s = B / (step(B) / (1 - prefill share)); TTFT p99 = ttft_tail x (prefill of one prompt's chunks + one
  step), and the largest batch whose TTFT p99 <= 2 s and whose KV fits is reported.
- MTP (one extra layer drafting one token): each step yields 1 + mtp_acceptance tokens per sequence for the
  cost of one more MoE layer's weights.

    python benchmarks/gpu/project_r1t2.py benchmarks/results/gpu-serve-throughput.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, fields, replace
from functools import cache
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]

import dsv3  # noqa: E402 - beside this script, after the path

GB = 1e9
PUBLISHED = {
    "vLLM TP8, 8xH200, R1-0528, 1000 concurrent ShareGPT (GPUStack performance lab)": 2621.0,
    "DeepSeek's own service, per H800 node, wide EP, decode nodes (DeepSeek inference system overview)": 14800.0,
}


@dataclass(frozen=True)
class Assumptions:
    gpus: int = 8
    gpu_mem_bytes: float = 141e9  # H200 SXM
    mem_util: float = 0.9  # share of GPU memory vLLM may take
    activation_reserve_bytes: float = 10e9  # per GPU: activations, workspaces, CUDA graphs
    nvlink_busbw: float = (
        360e9  # B/s per GPU, NCCL ring all-reduce bus bandwidth on NVLink 4 (900 GB/s bidir.)
    )
    allreduce_latency_s: float = 15e-6  # one small all-reduce across 8 GPUs
    nvlink_a2a_bw: float = 300e9  # B/s per GPU for all-to-all
    a2a_latency_s: float = 30e-6  # one dispatch or combine
    ep_imbalance: float = 1.2  # busiest GPU's routed-expert work over the mean
    prefill_flops_eff: float = 0.35 * 1979e12  # FP8 dense peak 1979 TFLOP/s at 35% MFU
    active_params: float = (
        37.6e9  # R1's activated parameters per token (DeepSeek-V3 report: 37B + embeddings)
    )
    prompt_tokens: int = 220  # ShareGPT mean input (assumed)
    output_tokens: int = 200  # ShareGPT mean output (assumed)
    chunk_tokens: int = 8192  # max_num_batched_tokens
    ttft_tail: float = 3.0  # p99 / single-prompt TTFT under Poisson arrivals
    ttft_slo_s: float = 2.0
    kv_dtype_bytes: int = 2  # bf16 cache; 1 with --kv-cache-dtype fp8
    mtp_acceptance: float = 0.8  # share of MTP draft tokens accepted (DeepSeek reports 85-90% for V3)
    max_batch: int = 4096  # largest batch considered per replica
    overhead_factor: float = (
        1.0  # per-layer launch overhead vs the measured run's (eager: CUDA graphs cut it)
    )


def experts_touched(tokens: float, experts: int = 256, top_k: int = 8) -> float:
    """Expected distinct experts chosen by `tokens` tokens under uniform routing."""
    return experts * (1.0 - (1.0 - top_k / experts) ** tokens)


@dataclass(frozen=True)
class Shape:
    """Byte sizes of one layer's parts (FP8 weights as the merge stage writes them)."""

    attn_shared: float  # attention + shared expert + router + norms of a MoE layer
    expert: float  # one routed expert (gate, up, down + scales)
    dense: float  # a whole dense layer
    head: float  # embedding + final norm + lm_head
    kv_token_layer: float  # MLA latent + rope key per token per layer, bf16

    @classmethod
    def dsv3(cls, vocab: int = dsv3.VOCAB_REAL) -> Shape:
        per = dsv3.layer_bytes("dsv3", vocab, True)
        w = dsv3.DSV3_WIDTHS
        expert = 3 * w["moe_intermediate_size"] * w["hidden_size"] + 3 * 16 * 56 * 4  # FP8 + 3 scale grids
        return cls(per["moe"] - w["n_routed_experts"] * expert, expert, per["dense"], per["fixed"],
                   dsv3.kv_bytes_per_token_layer(w))  # fmt: skip

    def moe_bytes(self, tokens: float) -> float:
        return self.attn_shared + experts_touched(tokens) * self.expert


def calibrate(measured: dict[str, Any], shape: Shape) -> dict[str, Any]:
    """bw_eff per measured concurrency and the per-layer overhead, from the single-GPU run's TPOT p50."""
    plan, levels = measured["plan"], measured["chimera"]["levels"]
    ctx = measured["prompt_tokens"] + measured["output_tokens"] / 2
    rows = []
    for name, lv in levels.items():
        if not name.startswith("c") or lv.get("tpot_p50") is None:
            continue
        c = int(name[1:])
        touched = (plan["moe"] * shape.moe_bytes(c) + plan["dense"] * shape.dense + shape.head
                   + c * ctx * shape.kv_token_layer * plan["layers"])  # fmt: skip
        rows.append({"c": c, "tpot_s": lv["tpot_p50"], "bytes": touched})
    if not rows:
        raise SystemExit("the results file has no concurrency level with a TPOT p50")
    rows.sort(key=lambda r: r["c"])
    big = rows[-1]  # the most memory-bound step measured: its bytes over its time is the usable bandwidth
    bw = big["bytes"] / big["tpot_s"]
    overhead = max(0.0, (rows[0]["tpot_s"] - rows[0]["bytes"] / bw) / plan["layers"])
    for r in rows:
        r["bw_eff"] = r["bytes"] / r["tpot_s"]
    return {"bw_eff": bw, "overhead_per_layer_s": overhead, "levels": rows,
            "ttft_c1_s": levels.get("c1", {}).get("ttft_p50"), "measured_layers": plan["layers"]}  # fmt: skip


def step_time(mode: str, batch: int, ctx: float, cal: dict[str, Any], a: Assumptions, shape: Shape,
              layers: int = 61, dense: int = 3, mtp: bool = False) -> dict[str, float]:  # fmt: skip
    """One decode step of a replica with `batch` sequences (the whole node's batch)."""
    moe = layers - dense + (1 if mtp else 0)
    n_layers = layers + (1 if mtp else 0)
    if mode == "tp8":
        weights = (moe * shape.moe_bytes(batch) + dense * shape.dense + shape.head) / a.gpus
        kv = batch * ctx * shape.kv_token_layer * n_layers  # latent cache replicated on every rank
        msg = batch * 7168 * 2
        comm = 2 * n_layers * (a.allreduce_latency_s + 2 * (a.gpus - 1) / a.gpus * msg / a.nvlink_busbw)
    elif mode == "dp8ep":
        local = batch / a.gpus
        routed = experts_touched(batch) * shape.expert / a.gpus * a.ep_imbalance  # this GPU's 32 experts
        weights = moe * (shape.attn_shared + routed) + dense * shape.dense + shape.head
        kv = local * ctx * shape.kv_token_layer * n_layers
        per_token = 8 * (a.gpus - 1) / a.gpus * (7168 + 2 * 7168)  # FP8 dispatch + bf16 combine
        comm = moe * (2 * a.a2a_latency_s + local * per_token / a.nvlink_a2a_bw)
    else:
        raise ValueError(f"mode {mode!r}: tp8 or dp8ep")
    mem = (weights + kv) / cal["bw_eff"]
    compute = 2 * a.active_params * batch / (a.gpus * a.prefill_flops_eff)  # the node's FLOPs, spread evenly
    overhead = n_layers * cal["overhead_per_layer_s"] * a.overhead_factor
    return {"step_s": max(mem, compute) + overhead + comm, "memory_s": mem, "compute_s": compute,
            "overhead_s": overhead, "comm_s": comm}  # fmt: skip


@cache
def r1t2_bytes(layers: int = 61) -> int:
    """FP8 checkpoint bytes of the whole model with its MTP layer (688.6 GB for DeepSeek-V3's 61 layers), from
    one-layer configs (the full plan has 92k tensors)."""
    per = dsv3.layer_bytes("dsv3", dsv3.VOCAB_REAL, True)
    one = dsv3.config("dsv3", 1, dense=0)
    mtp = dsv3.checkpoint_bytes({**one, "num_nextn_predict_layers": 1}, True) - dsv3.checkpoint_bytes(
        one, True
    )
    return per["fixed"] + dsv3.DENSE_REAL * per["dense"] + (layers - dsv3.DENSE_REAL) * per["moe"] + mtp


def capacity_tokens(mode: str, a: Assumptions, shape: Shape, layers: int = 61) -> float:
    """KV tokens the node holds: TP8 replicates the latent cache, DP8+EP splits sequences across GPUs."""
    total = r1t2_bytes(layers)
    if mode == "tp8":
        weights = total / a.gpus
    else:
        routed = (layers - 3 + 1) * 256 * shape.expert
        weights = total - routed + routed / a.gpus
    free = a.gpu_mem_bytes * a.mem_util - weights - a.activation_reserve_bytes
    per_token = (layers + 1) * shape.kv_token_layer * a.kv_dtype_bytes / 2
    return max(0.0, free / per_token) * (1 if mode == "tp8" else a.gpus)


def project(mode: str, cal: dict[str, Any], a: Assumptions, shape: Shape, mtp: bool) -> dict[str, Any]:
    """The largest batch meeting the TTFT SLO and the KV capacity; output tokens/s and tokens/day there."""
    ctx = a.prompt_tokens + a.output_tokens / 2
    cap = capacity_tokens(mode, a, shape)
    replicas_flops = a.gpus * a.prefill_flops_eff
    prefill_1 = (
        2 * a.active_params * a.prompt_tokens / (replicas_flops if mode == "tp8" else a.prefill_flops_eff)
    )
    best: dict[str, Any] | None = None
    batch = 1
    while batch <= a.max_batch:
        st = step_time(mode, batch, ctx, cal, a, shape, mtp=mtp)
        decode_tok_s = batch * (1 + (a.mtp_acceptance if mtp else 0.0)) / st["step_s"]  # GPUs decoding only
        # Each output token brings prompt_tokens / output_tokens prompt tokens to prefill: k GPU-seconds per
        # output token. Sustained output r solves r = decode_tok_s x (1 - k r).
        k = 2 * a.active_params * a.prompt_tokens / a.output_tokens / replicas_flops
        out_tok_s = decode_tok_s / (1 + k * decode_tok_s)
        prefill_share = k * out_tok_s
        chunks = math.ceil(a.prompt_tokens / a.chunk_tokens)
        ttft = a.ttft_tail * (prefill_1 + chunks * st["step_s"] / (1 - prefill_share))
        fits = batch * ctx <= cap
        if ttft <= a.ttft_slo_s and fits:
            best = {"batch": batch, "output_tok_s": out_tok_s, "tokens_per_day": out_tok_s * 86400,
                    "ttft_p99_s": ttft, "tpot_s": batch / out_tok_s, "prefill_share": prefill_share, **st}  # fmt: skip
        elif best is not None:
            break
        batch = int(batch * 1.25) + 1
    return {"mode": mode, "mtp": mtp, "kv_capacity_tokens": cap, "best": best}


def markdown(result: dict[str, Any]) -> str:
    from benchmarks._common import markdown_table

    rows = []
    for p in result["projections"]:
        b = p["best"] or {}
        rows.append([p["mode"] + (" + MTP" if p["mtp"] else ""), b.get("batch", "-"), round(b.get("output_tok_s", 0)),
                     f"{b.get('tokens_per_day', 0) / 1e9:.2f}", round(b.get("ttft_p99_s", 0), 2),
                     round(1000 * b.get("tpot_s", 0), 1), f"{p['kv_capacity_tokens'] / 1e6:.2f}"])  # fmt: skip
    best = {p["mode"] + ("+mtp" if p["mtp"] else ""): (p["best"] or {}).get("output_tok_s", 0.0)
            for p in result["projections"]}  # fmt: skip
    tp8, ep = max(best["tp8"], best["tp8+mtp"]), max(best["dp8ep"], best["dp8ep+mtp"])
    pub = "\n".join(
        f"- {k}: {v:,.0f} output tok/s (this projection's best {'TP8' if 'TP8' in k else 'DP8+EP'}: "
        f"{(tp8 if 'TP8' in k else ep) / v:.2f}x)"
        for k, v in PUBLISHED.items()
    )
    cal = result["calibration"]
    return "\n".join([
        "**PROJECTION** (not measured on 8 GPUs): R1T2, 61 layers + MTP, FP8, one 8xH200 node, TTFT p99 <= 2 s.",
        f"Calibrated on one H200 ({result['measured_from']}): usable bandwidth {cal['bw_eff'] / 1e12:.2f} TB/s, "
        f"overhead {1e6 * cal['overhead_per_layer_s']:.0f} us per layer and step.",
        "", markdown_table(["setup", "batch", "output tok/s", "tokens/day (B)", "TTFT p99 s", "TPOT ms",
                            "KV capacity (M tokens)"], rows), "",
        "Published, for comparison:", pub, "",
        "Assumptions: " + ", ".join(f"{k}={v:g}" for k, v in result["assumptions"].items()),
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("measured", type=Path, help="gpu-serve-throughput.json from serve_throughput.py")
    ap.add_argument("--set", action="append", default=[], help="override an assumption: name=value")
    ap.add_argument("--results", type=Path, default=None)
    ap.add_argument("--stem", default="gpu-r1t2-projection")
    a = ap.parse_args(argv)
    measured = json.loads(a.measured.read_text())
    if measured.get("widths", "dsv3") != "dsv3":
        raise SystemExit(
            f"{a.measured} measured {measured['widths']} widths; calibrating R1T2 needs DeepSeek-V3's"
        )
    names = {f.name: f.type for f in fields(Assumptions)}
    over: dict[str, Any] = {}
    for item in a.set:
        k, _, v = item.partition("=")
        if k not in names:
            raise SystemExit(f"unknown assumption {k!r}; one of {', '.join(names)}")
        over[k] = int(float(v)) if names[k] in (int, "int") else float(v)
    asm = replace(Assumptions(), **over)
    shape = Shape.dsv3()  # R1T2: the real vocabulary
    cal = calibrate(measured, Shape.dsv3(measured.get("vocab", dsv3.VOCAB_REAL)))
    projections = [project(m, cal, asm, shape, mtp) for m in ("tp8", "dp8ep") for mtp in (False, True)]
    result = {"label": "PROJECTION", "measured_from": f"{a.measured.name} ({measured.get('device', '?')}, "
              f"{measured['plan']['layers']} layers)", "assumptions": asdict(asm), "calibration": cal,
              "projections": projections, "published": PUBLISHED}  # fmt: skip
    md = markdown(result)
    print(md)
    from benchmarks._common import RESULTS_DIR, write_results

    write_results(a.stem, result, md, results_dir=a.results or RESULTS_DIR)


if __name__ == "__main__":
    main()
