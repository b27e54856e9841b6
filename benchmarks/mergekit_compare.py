"""chimera-merge vs mergekit on the one merge both can do: a bf16 linear merge of two Llama parents.

Both tools run as subprocesses in one session, alternating which goes first, each repetition on a cold
page cache (where dropping it is permitted): wall time and peak RSS per run. mergekit lives in its own venv
(its pins are not ours): `python3 -m venv /tmp/mk-venv && /tmp/mk-venv/bin/pip install torch==2.13.0 mergekit`.
mergekit is set to `dtype: float32, out_dtype: bfloat16, normalize: false`, so both compute
sum_i w_i * float32(W_i) and round once to bf16; every tensor is compared, and where they differ the
script recomputes candidate formulas to say which one each tool followed.

    .venv/bin/python -m benchmarks.mergekit_compare --reps 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from benchmarks._common import Measured, drop_caches, gib, markdown_table, run_measured, write_results

WEIGHTS = {"a": 0.3, "b": 0.7}  # not dyadic on purpose: products round in float32
EXACT = "f64 exact, rounded once to bf16"


def llama_config(hidden: int, layers: int, intermediate: int, vocab: int) -> dict[str, Any]:
    heads = hidden // 128
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 4),
        "head_dim": 128,
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def llama_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, h),
            p + "post_attention_layernorm.weight": (h,),
            p + "mlp.gate_proj.weight": (i, h),
            p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
        }
    return shapes | {"model.norm.weight": (h,), "lm_head.weight": (v, h)}


def write_llama_parent(out: Path, cfg: dict[str, Any], seed: int, shard_bytes: int = 400 * 2**20) -> None:
    """Random bf16 Llama checkpoint (std 0.02; norms near 1) in shards of ~shard_bytes with an index."""
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, shape in llama_shapes(cfg).items():
        t = torch.randn(shape, generator=gen) * 0.02
        if "norm" in name:
            t += 1.0
        t = t.to(torch.bfloat16)
        if size and size + t.nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.nbytes
    weight_map, total = {}, 0
    for k, tensors in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, out / fname, metadata={"format": "pt"})
        weight_map |= {name: fname for name in tensors}
        total += sum(t.nbytes for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (out / "config.json").write_text(json.dumps(cfg, indent=2))


def tensors_of(ckpt: Path) -> dict[str, Path]:
    """tensor name -> shard file, for a checkpoint directory (index or bare shards)."""
    out: dict[str, Path] = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            out |= {k: f for k in h.keys()}  # noqa: SIM118  (safe_open has no __iter__)
    return out


def candidates(ts: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Plausible ways to compute the bf16 child from bf16 parents, for explaining any difference."""
    wa, wb = WEIGHTS["a"], WEIGHTS["b"]
    a32, b32 = ts[0].float(), ts[1].float()
    w = torch.tensor([wa, wb], dtype=torch.float32)
    addcmul = torch.zeros_like(a32)
    for t, c in zip((a32, b32), w.unbind(0), strict=True):
        addcmul.addcmul_(t, c)
    return {
        "f32 zeros.addcmul_(W_i, w_i) (mergekit 0.1.5 linear)": addcmul,
        "f32 products rounded, then summed": a32 * wa + b32 * wb,
        "f32 a*wa then add_(b, alpha=wb)": (a32 * wa).add_(b32, alpha=wb),
        EXACT: ts[0].double() * wa + ts[1].double() * wb,
    }


def compare_outputs(mk: Path, cm: Path, parents: list[Path]) -> dict[str, Any]:
    """Tensor by tensor: bit-identity, max |diff|, elements off the exactly rounded result, and which
    candidate formula (`candidates`) each tool's output equals."""
    tm, tc = tensors_of(mk), tensors_of(cm)
    tp = [tensors_of(p) for p in parents]
    common = sorted(set(tm) & set(tc))
    only = {"only_mergekit": sorted(set(tm) - set(tc)), "only_chimera": sorted(set(tc) - set(tm))}
    identical, max_abs, total, differing = 0, 0.0, 0, []
    off_exact = {"mergekit": 0, "chimera": 0}
    formulas: dict[str, dict[str, int]] = {"mergekit": {}, "chimera": {}}
    for name in common:
        x, y = _load(tm[name], name), _load(tc[name], name)
        cands = {k: c.to(torch.bfloat16) for k, c in candidates([_load(t[name], name) for t in tp]).items()}
        total += x.numel()
        for tool, t in (("mergekit", x), ("chimera", y)):
            off_exact[tool] += int((t != cands[EXACT]).sum())
            for k, c in cands.items():
                formulas[tool][k] = formulas[tool].get(k, 0) + int(torch.equal(c, t))
        if (
            x.dtype == y.dtype
            and x.shape == y.shape
            and torch.equal(x.view(torch.uint8), y.view(torch.uint8))
        ):
            identical += 1
            continue
        d = (x.float() - y.float()).abs().max().item()
        max_abs = max(max_abs, d)
        differing.append(
            {
                "tensor": name,
                "dtypes": [str(x.dtype), str(y.dtype)],
                "elements_differing": int((x != y).sum()),
                "numel": x.numel(),
                "max_abs_diff": d,
                "mergekit_matches": [k for k, c in cands.items() if torch.equal(c, x)],
                "chimera_matches": [k for k, c in cands.items() if torch.equal(c, y)],
            }
        )
    return {
        "tensors_compared": len(common),
        "bit_identical": identical,
        "elements_compared": total,
        "elements_differing": sum(e["elements_differing"] for e in differing),
        "max_abs_diff": max_abs,
        "elements_off_exact": off_exact,
        "tensors_matching_formula": formulas,
        "why": why(differing, formulas, len(common)),
        "differing": differing[:20],
        "differing_count": len(differing),
        **only,
    }


def _load(path: Path, name: str) -> torch.Tensor:
    with safe_open(str(path), framework="pt") as h:
        return h.get_tensor(name)


def why(differing: list[dict[str, Any]], formulas: dict[str, dict[str, int]], n: int) -> str:
    """One sentence from the candidate formulas each tool's output matched."""
    every = {tool: sorted(k for k, c in f.items() if c == n) for tool, f in formulas.items()}
    if not differing:
        return f"all bit-identical; every tensor of both equals: {every['mergekit'] or 'no single candidate'}"
    return (
        f"{len(differing)} tensors differ; mergekit's output equals {every['mergekit'] or 'no single candidate'} "
        f"in every tensor and chimera's {every['chimera'] or 'no single candidate'} (bf16 rounding of float32 "
        "sums that differ in the last bit: a fused multiply-add rounds once, a product then a sum twice)"
    )


def mergekit_cmd(mk_venv: Path, parents: dict[str, Path], cfg_path: Path, out: Path) -> list[str]:
    cfg = {
        "merge_method": "linear",
        "dtype": "float32",
        "out_dtype": "bfloat16",
        "parameters": {"normalize": False},
        "models": [{"model": str(p), "parameters": {"weight": WEIGHTS[k]}} for k, p in parents.items()],
    }
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return [str(mk_venv / "bin" / "mergekit-yaml"), str(cfg_path), str(out), "--no-copy-tokenizer"]


def chimera_cmd(parents: dict[str, Path], recipe_path: Path, out: Path, workers: int | None) -> list[str]:
    recipe = {
        "name": "llama-linear-vs-mergekit",
        "base": "a",
        "parents": {k: str(p) for k, p in parents.items()},
        "rules": [{"pattern": ".*", "weights": WEIGHTS}],
        "output": {"dtype": "bf16", "shard_size": "5GB"},
    }
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    cmd = [
        str(Path(sys.executable).parent / "chimera-merge"),
        "build",
        str(recipe_path),
        "--out",
        str(out),
        "--no-progress",
    ]
    return cmd + (["--workers", str(workers)] if workers else [])


def timed(cmd: list[str], out: Path, cold: bool) -> tuple[Measured, bool]:
    shutil.rmtree(out, ignore_errors=True)
    dropped = drop_caches() if cold else False
    return run_measured(cmd, env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}).check(), dropped


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--work", type=Path, default=Path("/tmp/chimera-bench/mergekit"), help="scratch directory"
    )
    ap.add_argument("--mk-venv", type=Path, default=Path("/tmp/mk-venv"), help="venv holding mergekit")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="chimera-merge --workers (default: its own)")
    ap.add_argument("--hot", action="store_true", help="do not drop the page cache before each run")
    ap.add_argument("--clean", action="store_true", help="remove the generated parents afterwards")
    args = ap.parse_args(argv)

    # 1. Parents (same config, different seeds) and the two tools' configs.
    cfg = llama_config(args.hidden, args.layers, args.intermediate, args.vocab)
    parents = {"a": args.work / "parent-a", "b": args.work / "parent-b"}
    for seed, p in enumerate(parents.values()):
        if not (p / "config.json").exists():
            write_llama_parent(p, cfg, seed)
    parent_bytes = sum(f.stat().st_size for p in parents.values() for f in p.glob("*.safetensors"))
    outs = {"mergekit": args.work / "out-mergekit", "chimera": args.work / "out-chimera"}
    cmds = {
        "mergekit": mergekit_cmd(args.mk_venv, parents, args.work / "mergekit.yaml", outs["mergekit"]),
        "chimera": chimera_cmd(parents, args.work / "recipe.yaml", outs["chimera"], args.workers),
    }

    # 2. Alternate the order each repetition so neither tool always gets the warmer machine.
    runs: dict[str, list[dict[str, Any]]] = {"mergekit": [], "chimera": []}
    cold_ok = True
    for rep in range(args.reps):
        order = ["mergekit", "chimera"] if rep % 2 == 0 else ["chimera", "mergekit"]
        for tool in order:
            m, dropped = timed(cmds[tool], outs[tool], cold=not args.hot)
            cold_ok &= dropped
            runs[tool].append(
                {
                    "rep": rep,
                    "wall_s": round(m.wall_s, 3),
                    "cpu_s": round(m.cpu_s, 3),
                    "peak_rss_bytes": m.peak_rss,
                    "load_1min_before": m.load_before,
                }
            )
            print(
                f"rep {rep} {tool:8s} {m.wall_s:7.2f} s (CPU {m.cpu_s:6.1f} s, load {m.load_before:.1f})  "
                f"peak RSS {gib(m.peak_rss):.2f} GiB",
                flush=True,
            )

    # 3. Tensors of the last outputs, and the summary.
    startup = {  # interpreter + the imports that every build pays (torch included)
        "mergekit": run_measured(
            [str(args.mk_venv / "bin" / "python"), "-c", "import mergekit.merge"]
        ).wall_s,
        "chimera": run_measured([sys.executable, "-c", "import merge.execute"]).wall_s,
    }
    cmp = compare_outputs(outs["mergekit"], outs["chimera"], list(parents.values()))
    summary = {
        tool: {
            "wall_s_median": statistics.median(r["wall_s"] for r in rs),
            "wall_s_min": min(r["wall_s"] for r in rs),
            "cpu_s_median": statistics.median(r["cpu_s"] for r in rs),
            "peak_rss_gib_max": round(gib(max(r["peak_rss_bytes"] for r in rs)), 3),
            "startup_s": round(startup[tool], 2),
        }
        for tool, rs in runs.items()
    }
    mk_version = run_measured([str(args.mk_venv / "bin" / "pip"), "show", "mergekit", "torch"]).stdout
    data = {
        "setup": {
            "llama_config": cfg,
            "weights": WEIGHTS,
            "parent_bytes_total": parent_bytes,
            "page_cache": "dropped before every run"
            if cold_ok
            else "hot (drop_caches not permitted or --hot)",
            "commands": cmds,
            "mergekit_env": [ln for ln in mk_version.splitlines() if ln.startswith(("Name", "Version"))],
        },
        "runs": runs,
        "summary": summary,
        "tensors": cmp,
    }
    rows = [
        [tool, s["wall_s_median"], s["wall_s_min"], s["cpu_s_median"], s["startup_s"], s["peak_rss_gib_max"]]
        for tool, s in summary.items()
    ]
    headers = [
        "tool",
        "wall s (median)",
        "wall s (min)",
        "CPU s (median)",
        "imports s",
        "peak RSS GiB",
    ]
    table = markdown_table(headers, rows)
    verdict = (
        f"tensors: {cmp['bit_identical']}/{cmp['tensors_compared']} bit-identical; elements differing "
        f"{cmp['elements_differing']}/{cmp['elements_compared']}, max |diff| {cmp['max_abs_diff']:.3g}; "
        f"elements off the exactly rounded result: {cmp['elements_off_exact']}. Why: {cmp['why']}"
    )
    md = (
        f"Linear merge (weights {WEIGHTS}) of two bf16 Llama parents ({args.layers} layers, hidden {args.hidden}, "
        f"{gib(parent_bytes):.2f} GiB together), {args.reps} repetitions alternating order; page cache: "
        f"{data['setup']['page_cache']}.\n\n{table}\n\n{verdict}\n"
    )
    write_results("mergekit-compare", data, md, disk_path=args.work)
    for out in outs.values():  # the parents stay cached for the next run; --clean removes them too
        shutil.rmtree(out, ignore_errors=True)
    if args.clean:
        shutil.rmtree(args.work, ignore_errors=True)
    print("\n" + table + "\n" + verdict)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
