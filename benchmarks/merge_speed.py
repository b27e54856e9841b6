"""FP8 merge speed against the I/O floor, peak RSS vs depth, and the dequantize -> bf16 -> requantize detour.

Parents: three FP8 checkpoints with full DeepSeek-V3 tensor shapes (hidden 7168, moe_intermediate 2048,
real MLA dims, 128 heads) but few layers, 8 routed experts, no dense layer and a small vocabulary; p1 and p2
are p0 plus noise (like fine-tunes). Made by `merge.synthetic`, cached under --work between runs.

1. Speed (one run, alternating, repeated, page cache dropped before every timed run where permitted):
   - floor: plain sequential I/O: read every parent byte range the merge reads (coalesced, 64 MiB reads)
     and write as many child bytes, in files of the child's shard sizes, synced the way the merge syncs;
   - merge `experts`: routed experts interpolated across the three parents, the rest copied from p0;
   - merge `all`: every tensor interpolated.
   Ratio merge / floor (target <= 1.5). The merges start with numba's cache of the CPU kernels filled (as every
   run after a machine's first); what the first run pays on top, the JIT compile, is timed on its own.
2. Peak RSS of the `experts` merge for 2 vs 8 layers (target ratio <= 1.1).
3. The detour a user would otherwise take: dequantize every parent to bf16 (DeepSeek's fp8_cast_bf16),
   merge in bf16, requantize; time, and error of both children vs a float64 reference.

    .venv/bin/python -m benchmarks.merge_speed            # everything
    .venv/bin/python -m benchmarks.merge_speed --only speed --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks._common import RESULTS_DIR as RESULTS
from benchmarks._common import command_line, drop_caches, gib, markdown_table, run_measured, write_results
from benchmarks.fp8_detour import accuracy, cast_bf16, requantize

PARENTS = ("p0", "p1", "p2")
DEFAULT_LAYERS = 2
WEIGHTS = {"p0": 0.2, "p1": 0.4, "p2": 0.4}
FULL_SHAPES = {  # DeepSeek-V3's real per-tensor dimensions
    "hidden_size": 7168,
    "moe_intermediate_size": 2048,
    "intermediate_size": 18432,
    "num_attention_heads": 128,
    "num_key_value_heads": 128,
    "q_lora_rank": 1536,
    "kv_lora_rank": 512,
    "qk_rope_head_dim": 64,
    "qk_nope_head_dim": 128,
    "v_head_dim": 128,
    "n_shared_experts": 1,
}
PY = sys.executable
BIN = Path(PY).parent


def ds_config(layers: int, experts: int, vocab: int) -> dict[str, Any]:
    from merge.synthetic import synthetic_config

    return synthetic_config(
        **FULL_SHAPES,
        num_hidden_layers=layers,
        n_routed_experts=experts,
        num_experts_per_tok=2,
        first_k_dense_replace=0,
        vocab_size=vocab,
    )


def ensure_parents(root: Path, layers: int, experts: int, vocab: int) -> dict[str, Path]:
    """Three FP8 parents under root/L{layers}-E{experts}-V{vocab}/; config.json is written last = complete."""
    from merge.synthetic import write_synthetic_parent

    cfg = ds_config(layers, experts, vocab)
    base = root / f"L{layers}-E{experts}-V{vocab}"
    paths = {name: base / name for name in PARENTS}
    for i, path in enumerate(paths.values()):
        if (path / "config.json").exists():
            continue
        shutil.rmtree(path, ignore_errors=True)
        t0 = time.perf_counter()
        write_synthetic_parent(path, cfg, seed=i, fp8=True, base=None if i == 0 else paths["p0"])
        print(f"generated {path} in {time.perf_counter() - t0:.0f} s", flush=True)
    return paths


# ---------------------------------------------------------------- recipes and the floor


def write_recipe(path: Path, parents: dict[str, Path], variant: str, dtype: str = "auto") -> Path:
    """`experts`: routed experts interpolated, the rest copied from p0; `all`: every tensor interpolated."""
    rule = {"select": "routed_experts"} if variant == "experts" else {"pattern": ".*"}
    recipe = {
        "name": f"bench-{variant}",
        "base": "p0",
        "parents": {k: str(v) for k, v in parents.items()},
        "rules": [{**rule, "weights": WEIGHTS}],
        "output": {"dtype": dtype, "shard_size": "5GB"},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def floor_spec(recipe_path: Path) -> dict[str, Any]:
    """What the merge of `recipe_path` reads (parent byte ranges, coalesced) and writes (child shard sizes)."""
    from merge.execute import plan_recipe
    from merge.recipe import load_recipe
    from merge.writer import header_bytes

    plan = plan_recipe(load_recipe(recipe_path))
    ranges: dict[str, list[list[int]]] = {}
    for it in plan.items:
        for parent, _ in it.parts():
            st = it.stored[parent]
            for info in [st.weight] + ([st.scale] if st.scale else []):
                ranges.setdefault(str(info.shard), []).append([info.start, info.end])
    for rs in ranges.values():  # coalesce touching ranges into long sequential reads
        rs.sort()
        merged = [rs[0]]
        for a, b in rs[1:]:
            if a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        rs[:] = merged
    writes = [
        len(header_bytes([e for it in s for e in it.out])) + sum(it.write_bytes for it in s)
        for s in plan.shards
    ]
    return {"reads": ranges, "writes": writes, "read_bytes": plan.bytes_to_read(), "write_bytes": sum(writes)}


def floor_io(spec: dict[str, Any], out: Path, chunk: int = 64 << 20) -> None:
    """Plain sequential I/O: read the spec's ranges file by file, then write its shard sizes. No fsync: the
    merge does none either; the caller times a `sync` after both."""
    buf = bytearray(chunk)
    view = memoryview(buf)
    for path, ranges in sorted(spec["reads"].items()):
        with open(path, "rb", buffering=0) as f:
            for a, b in ranges:
                f.seek(a)
                left = b - a
                while left > 0:
                    n = f.readinto(view[: min(chunk, left)])
                    if not n:
                        raise OSError(f"{path}: short read")
                    left -= n
    out.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(spec["writes"]):
        with open(out / f"shard-{i:05d}.bin", "wb", buffering=0) as f:
            left = size
            while left > 0:
                left -= f.write(view[: min(chunk, left)])


# ---------------------------------------------------------------- measuring


def timed(cmd: list[str], out: Path | None, cold: bool, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run cmd (after removing `out` and dropping the page cache); wall, then the `sync` that makes it durable."""
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)
    dropped = drop_caches() if cold else False
    m = run_measured(cmd, env={"HF_HUB_OFFLINE": "1", **(env or {})}).check()
    t0 = time.perf_counter()
    os.sync()
    sync_s = time.perf_counter() - t0
    return {
        "wall_s": round(m.wall_s, 3),
        "sync_s": round(sync_s, 3),
        "durable_s": round(m.wall_s + sync_s, 3),
        "cpu_s": round(m.cpu_s, 3),
        "peak_rss_bytes": m.peak_rss,
        "load_1min_before": m.load_before,
        "cache_dropped": dropped,
    }


def merge_cmd(recipe: Path, out: Path, workers: int | None, device: str = "cpu") -> list[str]:
    # the console script where the project is installed; the module where it only is on PYTHONPATH (GPU machine)
    cli = [str(BIN / "chimera-merge")] if (BIN / "chimera-merge").exists() else [PY, "-m", "merge.cli"]
    return [*cli, "build", str(recipe), "--out", str(out), "--no-progress", "--device", device] + (
        ["--workers", str(workers)] if workers else []
    )


def merge_key(variant: str, device: str) -> str:
    return f"merge {variant}" if device == "cpu" else f"merge {variant} [{device}]"


def compare_children(a: Path, b: Path) -> dict[str, Any]:
    """How two builds of one recipe differ: tensors and bytes not identical, and the largest per-tensor
    r = ||b - a|| / ||a|| (FP8 dequantized, from `chimera-merge diff`)."""
    import numpy as np

    from merge.checkpoint import Checkpoint
    from merge.diff import diff_checkpoints

    ca, cb = Checkpoint.open(a), Checkpoint.open(b)
    differing, nbytes, bad = 0, 0, []
    for name in sorted(ca.tensors):
        x, y = (np.frombuffer(c.read_raw(name), np.uint8) for c in (ca, cb))
        n = int(np.count_nonzero(x != y)) if x.shape == y.shape else x.size
        nbytes += x.size
        if n:
            differing += n
            bad.append(name)
    ca.close()
    cb.close()
    rows = diff_checkpoints(a, b, workers=os.cpu_count() or 1).rows
    return {
        "tensors": len(ca.tensors),
        "differing_tensors": len(bad),
        "differing_bytes": differing,
        "bytes": nbytes,
        "max_r": max((r.r for r in rows), default=0.0),
        "first_differing": bad[:5],
    }


def gpu_chunk_timing(reps: int = 20) -> dict[str, Any]:
    """One routed-expert merge ([2048, 7168], three FP8 parents -> FP8) on the GPU, in process, per chunk size
    of merge.mix's torch path; tensors already on the GPU, so this is the arithmetic alone."""
    import torch

    from merge import fp8, mix

    dev = torch.device("cuda")
    parts = []
    for w in WEIGHTS.values():
        q, sc = fp8.quantize(torch.randn(2048, 7168))
        parts.append((w, q.to(dev), sc.to(dev)))
    out: dict[str, Any] = {}
    saved = mix.GPU_CHUNK_BYTES
    try:
        for label, nbytes in (("4 MiB (the CPU's)", 4 << 20), ("256 MiB (whole tensor)", 256 << 20)):
            mix.GPU_CHUNK_BYTES = nbytes
            ws = mix.Workspace()
            times = []
            for _ in range(reps + 3):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                mix.merge(parts, torch.float8_e4m3fn, ws)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            out[label] = round(statistics.median(times[3:]) * 1e3, 3)
    finally:
        mix.GPU_CHUNK_BYTES = saved
    return {"tensor": [2048, 7168], "median_ms": out, "gpu": torch.cuda.get_device_name(0)}


def me(*args: Any) -> list[str]:
    return [PY, "-m", "benchmarks.merge_speed", *map(str, args)]


def compile_kernels() -> None:
    """Call the CPU kernels with the argument types the speed phase's merges use (three FP8 parts -> FP8,
    three bf16 parts -> bf16, finite checks of FP8, bf16 and float32), so that numba compiles them, or loads
    them from its cache."""
    import torch

    from merge import fp8, mix

    q, s = fp8.quantize(torch.randn(256, 256))
    mix.merge([(w, q, s) for w in WEIGHTS.values()], torch.float8_e4m3fn)
    b, _ = mix.merge([(w, q.to(torch.bfloat16), None) for w in WEIGHTS.values()], torch.bfloat16)
    for t in (q, s, b):
        mix.is_finite(t)


def phase_speed(args: argparse.Namespace) -> dict[str, Any]:
    parents = ensure_parents(args.work / "ds", args.layers, args.experts, args.vocab)
    jobs: dict[str, tuple[list[str], Path | None, dict[str, str] | None]] = {}
    sizes = {}
    for variant in ("experts", "all"):
        recipe = write_recipe(args.work / f"recipe-{variant}.yaml", parents, variant)
        spec = floor_spec(recipe)
        sizes[variant] = {"read_bytes": spec["read_bytes"], "write_bytes": spec["write_bytes"]}
        spec_path = args.work / f"floor-{variant}.json"
        spec_path.write_text(json.dumps(spec))
        jobs[f"floor {variant}"] = (
            me("--floor", spec_path, args.work / "out-floor"),
            args.work / "out-floor",
            None,
        )
        for dev in args.devices:
            out = args.work / f"out-{variant}-{dev}"
            jobs[merge_key(variant, dev)] = (merge_cmd(recipe, out, args.workers, dev), out, None)
    # interpreter + imports (torch): a fixed cost per build that a 2-layer model shows and a 688 GB one hides
    jobs["merge imports"] = ([PY, "-c", "import merge.execute, merge.cli"], None, None)
    # the CPU kernels' JIT compile, paid by a machine's first merge only (numba caches the machine code): the
    # same calls with an empty cache and with the cache the merges use; the difference is the compile
    nocache = args.work / "numba-empty-cache"
    jobs["kernels compile"] = (me("--compile-kernels"), nocache, {"NUMBA_CACHE_DIR": str(nocache)})
    jobs["kernels cached"] = (me("--compile-kernels"), None, None)
    compile_kernels()  # fill the cache the merges use (untimed): they measure every run after the first
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in jobs}
    for rep in range(args.reps):
        order = list(jobs) if rep % 2 == 0 else list(reversed(jobs))
        for key in order:
            r = timed(jobs[key][0], jobs[key][1], cold=not args.hot, env=jobs[key][2])
            runs[key].append(r)
            print(f"rep {rep} {key:14s} wall {r['wall_s']:7.2f} s + sync {r['sync_s']:5.2f} s  CPU {r['cpu_s']:6.1f} s  "
                  f"load {r['load_1min_before']:.1f}  peak RSS {gib(r['peak_rss_bytes']):.2f} GiB", flush=True)  # fmt: skip
    # every build of one recipe must give the same child, whatever the device: the last runs' outputs, compared
    same = {
        f"{v} {dev}": compare_children(args.work / f"out-{v}-cpu", args.work / f"out-{v}-{dev}")
        for v in ("experts", "all")
        for dev in args.devices
        if dev != "cpu"
    }
    for _, out, _ in jobs.values():
        if out is not None:
            shutil.rmtree(out, ignore_errors=True)
    med = {
        k: {m: statistics.median(r[m] for r in rs) for m in ("wall_s", "durable_s", "cpu_s")}
        for k, rs in runs.items()
    }
    start = med["merge imports"]["wall_s"]
    ratios = {
        (v if dev == "cpu" else f"{v} [{dev}]"): {
            m: round(med[merge_key(v, dev)][m] / med[f"floor {v}"][m], 3) for m in ("wall_s", "durable_s")
        }
        | {
            "durable_s_without_imports": round(
                (med[merge_key(v, dev)]["durable_s"] - start) / med[f"floor {v}"]["durable_s"], 3
            )
        }
        for v in ("experts", "all")
        for dev in args.devices
    }
    return {
        "layers": args.layers,
        "workers": args.workers,
        "experts": args.experts,
        "vocab": args.vocab,
        "parent_bytes": {k: _dir_bytes(p) for k, p in parents.items()},
        "sizes": sizes,
        "page_cache": _cache_note(runs),
        "runs": runs,
        "median": med,
        "ratio_merge_over_floor": ratios,
        "devices": args.devices,
        "children_vs_cpu": same,
        **({"gpu_chunk_timing": gpu_chunk_timing()} if "cuda" in args.devices else {}),
    }


def phase_rss(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layers in args.rss_layers:
        parents = ensure_parents(args.work / "ds", layers, args.experts, args.vocab)
        recipe = write_recipe(args.work / f"recipe-rss-{layers}.yaml", parents, "experts")
        r = timed(
            merge_cmd(recipe, args.work / "out-rss", args.workers), args.work / "out-rss", cold=not args.hot
        )
        print(
            f"rss {layers} layers: peak {gib(r['peak_rss_bytes']):.2f} GiB in {r['wall_s']:.1f} s", flush=True
        )
        out[str(layers)] = {**r, "parent_bytes": _dir_bytes(parents["p0"])}
    shutil.rmtree(args.work / "out-rss", ignore_errors=True)
    lo, hi = (out[str(n)]["peak_rss_bytes"] for n in (min(args.rss_layers), max(args.rss_layers)))
    return {"runs": out, "ratio": round(hi / lo, 3), "page_cache": _cache_note({"rss": list(out.values())})}


def phase_detour(args: argparse.Namespace) -> dict[str, Any]:
    parents = ensure_parents(args.work / "ds", args.layers, args.experts, args.vocab)
    w, cold = args.work / "detour", not args.hot
    shutil.rmtree(w, ignore_errors=True)
    steps: dict[str, dict[str, Any]] = {}
    direct = w / "child-direct"
    steps["direct: chimera-merge on FP8"] = timed(
        merge_cmd(write_recipe(w / "direct.yaml", parents, "experts"), direct, args.workers), direct, cold
    )
    bf16 = {k: w / f"{k}-bf16" for k in parents}
    cast = [timed(me("--cast-bf16", parents[k], bf16[k]), bf16[k], cold) for k in parents]
    steps["detour 1: fp8_cast_bf16 x3"] = {
        "wall_s": round(sum(c["wall_s"] for c in cast), 3),
        "durable_s": round(sum(c["durable_s"] for c in cast), 3),
        "peak_rss_bytes": max(c["peak_rss_bytes"] for c in cast),
    }
    child16, detour = w / "child-bf16", w / "child-detour"
    recipe16 = write_recipe(w / "bf16.yaml", bf16, "experts", dtype="bf16")
    steps["detour 2: merge in bf16"] = timed(merge_cmd(recipe16, child16, args.workers), child16, cold)
    steps["detour 3: requantize"] = timed(me("--requantize", child16, parents["p0"], detour), detour, cold)
    total = {
        m: round(sum(steps[k][m] for k in steps if k.startswith("detour")), 3)
        for m in ("wall_s", "durable_s")
    }
    print(
        f"detour total {total['durable_s']:.1f} s vs direct {steps['direct: chimera-merge on FP8']['durable_s']:.1f} s"
    )
    acc = accuracy(parents, {"direct": direct, "detour": detour}, WEIGHTS, args.sample)
    shutil.rmtree(w, ignore_errors=True)
    note = _cache_note({"direct": [steps["direct: chimera-merge on FP8"]], "cast": cast})
    return {"steps": steps, "detour_total": total, "accuracy": acc, "page_cache": note}


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.glob("*.safetensors"))


def _cache_note(runs: dict[str, list[dict[str, Any]]]) -> str:
    if all(r["cache_dropped"] for rs in runs.values() for r in rs):
        return "cold: `sync; echo 3 > /proc/sys/vm/drop_caches` before every timed run"
    return "hot: page cache not dropped (not permitted or --hot)"


# ---------------------------------------------------------------- report


def table(phases: dict[str, Any]) -> str:
    rows: list[list[Any]] = []
    for key in sorted(k for k in phases if k.startswith("speed")):
        s = phases[key]
        for v in ("experts", "all"):
            for dev in s.get("devices", ["cpu"]):
                f, m = s["median"][f"floor {v}"], s["median"][merge_key(v, dev)]
                ratio = s["ratio_merge_over_floor"][v if dev == "cpu" else f"{v} [{dev}]"]
                rows.append([f"{s['layers']} layers: merge `{v}` on {dev} vs floor, s (wall+sync)",
                             f"{m['durable_s']:.1f} vs {f['durable_s']:.1f}", f"{ratio['durable_s']:.2f}x", "<= 1.5x",
                             "ok" if ratio["durable_s"] <= 1.5 else "MISSED"])  # fmt: skip
                lean = ratio["durable_s_without_imports"]
                rows.append([f"  same, less chimera-merge's imports ({s['median']['merge imports']['wall_s']:.1f} s)",
                             "", f"{lean:.2f}x", "<= 1.5x", "ok" if lean <= 1.5 else "MISSED"])  # fmt: skip
        for key, c in s.get("children_vs_cpu", {}).items():
            rows.append([f"child `{key}` vs the CPU-built child: differing tensors, bytes; max r",
                         f"{c['differing_tensors']}/{c['tensors']}, {c['differing_bytes']}/{c['bytes']}; {c['max_r']:.2e}",
                         "", "identical", "ok" if c["differing_bytes"] == 0 else "DIFFERS"])  # fmt: skip
        if g := s.get("gpu_chunk_timing"):
            rows.append([f"GPU arithmetic of one expert merge by chunk size, ms ({g['gpu']})",
                         ", ".join(f"{k}: {v:.2f}" for k, v in g["median_ms"].items()), "", "-", ""])  # fmt: skip
        if "kernels compile" in s["median"]:
            cold, warm = (s["median"][f"kernels {k}"]["wall_s"] for k in ("compile", "cached"))
            rows.append(["CPU kernels, empty vs filled numba cache, s (the JIT compile: a machine's first merge)",
                         f"{cold:.1f} vs {warm:.1f}", "", "-", ""])  # fmt: skip
    if "rss" in phases:
        r = phases["rss"]
        peaks = ", ".join(f"{n} layers {gib(v['peak_rss_bytes']):.2f} GiB" for n, v in r["runs"].items())
        rows.append(
            [
                "peak RSS by depth",
                peaks,
                f"{r['ratio']:.3f}x",
                "<= 1.1x",
                "ok" if r["ratio"] <= 1.1 else "MISSED",
            ]
        )
    if "detour" in phases:
        d = phases["detour"]
        direct = d["steps"]["direct: chimera-merge on FP8"]["durable_s"]
        rows.append(["bf16 detour vs direct, s", f"{d['detour_total']['durable_s']:.1f} vs {direct:.1f}",
                     f"{d['detour_total']['durable_s'] / direct:.2f}x", "-", ""])  # fmt: skip
        e = d["accuracy"]["rel_frobenius"]
        rows.append(["rel. error vs float64 (direct / detour / fp8 of exact)",
                     f"{e['direct']:.3e} / {e['detour']:.3e} / {e['fp8 of exact']:.3e}", "", "-", ""])  # fmt: skip
    return markdown_table(["measure", "value", "ratio", "target", ""], rows)


def setup_notes(phases: dict[str, Any]) -> str:
    """What each phase merged, in words (the JSON has every run)."""
    lines = []
    for key in sorted(k for k in phases if k.startswith("speed")):
        s = phases[key]
        lines.append(
            f"- {key}: three FP8 parents of {s['layers']} layers x {s['experts']} routed experts (full V3 tensor shapes, "
            f"vocab {s['vocab']}), {gib(s['parent_bytes']['p0']):.2f} GiB each; `experts` reads "
            f"{gib(s['sizes']['experts']['read_bytes']):.2f} GiB and writes {gib(s['sizes']['experts']['write_bytes']):.2f} GiB, "
            f"`all` reads {gib(s['sizes']['all']['read_bytes']):.2f} GiB; medians of {len(s['runs']['merge all'])} "
            "alternating runs; the floor and merge times include the `sync` after the run. CPU s = user + system "
            "of the process (on a shared machine, wall - CPU is I/O wait plus time others held the cores): "
            + ", ".join(f"{k} {v['cpu_s']:.1f}" for k, v in s["median"].items())
        )
    if "detour" in phases:
        d = phases["detour"]["steps"]
        lines.append(
            "- detour steps, s (wall+sync): " + ", ".join(f"{k} {v['durable_s']:.1f}" for k, v in d.items())
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--work", type=Path, default=Path("/tmp/chimera-bench"), help="scratch (parents are cached here)"
    )
    ap.add_argument(
        "--only", action="append", choices=["speed", "rss", "detour"], help="phases (default: all)"
    )
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument(
        "--layers", type=int, default=DEFAULT_LAYERS, help="layers of the speed and detour parents"
    )
    ap.add_argument("--rss-layers", type=lambda s: [int(x) for x in s.split(",")], default=[2, 8])
    ap.add_argument("--experts", type=int, default=8, help="routed experts per layer")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--workers", type=int, default=None, help="chimera-merge --workers (default: its own)")
    ap.add_argument(
        "--gpu",
        action="store_true",
        help="speed: also merge with --device cuda, compare its child with the CPU's byte for byte",
    )
    ap.add_argument("--results", default="merge-speed", help="results file stem under benchmarks/results/")
    ap.add_argument("--sample", type=int, default=12, help="expert tensors checked against float64")
    ap.add_argument("--hot", action="store_true", help="do not drop the page cache before timed runs")
    # internal steps, run as measured subprocesses
    ap.add_argument("--floor", nargs=2, type=Path, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--cast-bf16", nargs=2, type=Path, metavar=("SRC", "DST"), help=argparse.SUPPRESS)
    ap.add_argument(
        "--requantize", nargs=3, type=Path, metavar=("SRC", "LIKE", "DST"), help=argparse.SUPPRESS
    )
    ap.add_argument("--compile-kernels", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.devices = ["cpu", "cuda"] if args.gpu else ["cpu"]
    if args.gpu and not _cuda_available():
        ap.error(
            "--gpu: torch sees no CUDA device here; run it on a GPU machine (benchmarks/gpu/run_merge_speed.sh)"
        )
    if args.compile_kernels:
        compile_kernels()
        return 0
    if args.floor:
        floor_io(json.loads(args.floor[0].read_text()), args.floor[1])
        return 0
    if args.cast_bf16:
        cast_bf16(*args.cast_bf16)
        return 0
    if args.requantize:
        requantize(*args.requantize)
        return 0

    stamp = {"command": command_line(),
             "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    run = {"speed": phase_speed, "rss": phase_rss, "detour": phase_detour}
    prev = RESULTS / f"{args.results}.json"
    phases = json.loads(prev.read_text()).get("phases", {}) if prev.exists() else {}
    for name in args.only or list(run):
        # each phase keeps the command and date that made it; speed runs of other depths sit beside the default's
        key = f"speed-L{args.layers}" if name == "speed" and args.layers != DEFAULT_LAYERS else name
        phases[key] = {**stamp, **run[name](args)}
        # saved after every phase: a later failure keeps the earlier figures
        md = save(phases, args.work, args.results)
    print("\n" + md)
    return 0


def save(phases: dict[str, Any], work: Path, stem: str) -> str:
    md = table(phases) + "\n\n" + setup_notes(phases)
    notes = "\n".join(
        f"- {k}: `{v['command']}` at {v['date_utc']}; page cache: {v['page_cache']}"
        for k, v in phases.items()
    )
    write_results(stem, {"setup": {"full_shapes": FULL_SHAPES, "weights": WEIGHTS}, "phases": phases},
                  f"{md}\n\nPhases:\n{notes}\n", disk_path=work)  # fmt: skip
    return md


if __name__ == "__main__":
    raise SystemExit(main())
