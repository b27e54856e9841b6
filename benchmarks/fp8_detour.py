"""The detour a user takes without an FP8-native merge: DeepSeek's fp8_cast_bf16 on every parent, a bf16
merge, a requantize; and how far an FP8 child lies from a float64 merge of its parents.

Run by benchmarks.merge_speed's detour phase (the two conversions as measured subprocesses of that script).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _save_shards(shards: Any, index: bool, dst: Path) -> None:
    """Write (file name, {name: tensor}) pairs one shard at a time (the iterator computes each lazily), then
    the index over all of them when the source had one."""
    from safetensors.torch import save_file

    weight_map, total = {}, 0
    for fname, tensors in shards:
        save_file(tensors, dst / fname, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(tensors, fname)
        total += sum(t.nbytes for t in tensors.values())
    if index:
        idx = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (dst / "model.safetensors.index.json").write_text(json.dumps(idx, indent=2))


def cast_bf16(src: Path, dst: Path) -> None:
    """DeepSeek's fp8_cast_bf16.py on the CPU: shard by shard, every FP8 weight x its block scales -> bf16,
    scales dropped, quantization_config removed from config.json."""
    import torch

    from merge.checkpoint import Checkpoint
    from merge.fp8 import dequantize

    ck = Checkpoint.open(src)
    dst.mkdir(parents=True, exist_ok=True)

    def shards() -> Any:
        for shard in sorted({t.shard for t in ck.tensors.values()}):
            out = {}
            for name, info in ck.tensors.items():
                if info.shard != shard or name.endswith("_scale_inv"):
                    continue
                t = ck.get_tensor(name)
                if t.dtype == torch.float8_e4m3fn:
                    t = dequantize(t, ck.get_tensor(name + "_scale_inv")).to(torch.bfloat16)
                out[name] = t
            yield shard.name, out

    _save_shards(shards(), ck.index is not None, dst)
    config = ck.config()
    config.pop("quantization_config", None)
    (dst / "config.json").write_text(json.dumps(config, indent=2))


def requantize(src: Path, like: Path, dst: Path) -> None:
    """bf16 child -> FP8 wherever the FP8 parent `like` stores FP8 (fresh 128x128 scales = amax / 448)."""
    from merge.checkpoint import Checkpoint
    from merge.fp8 import quantize

    ck, ref = Checkpoint.open(src), Checkpoint.open(like)
    dst.mkdir(parents=True, exist_ok=True)

    def shards() -> Any:
        for shard in sorted({t.shard for t in ck.tensors.values()}):
            out = {}
            for name, info in ck.tensors.items():
                if info.shard != shard:
                    continue
                t = ck.get_tensor(name)
                if ref.tensors[name].dtype == "F8_E4M3":
                    out[name], out[name + "_scale_inv"] = quantize(t)
                else:
                    out[name] = t
            yield shard.name, out

    _save_shards(shards(), ck.index is not None, dst)
    (dst / "config.json").write_text(json.dumps(ref.config(), indent=2))


def accuracy(
    parents: dict[str, Path], children: dict[str, Path], weights: dict[str, float], sample: int
) -> dict[str, Any]:
    """Relative Frobenius and max abs error of each FP8 child's routed experts vs a float64 merge of the parents;
    `fp8 of exact` = quantizing the float64 result itself (the best any FP8 child can do)."""

    from merge.checkpoint import Checkpoint
    from merge.fp8 import dequantize, quantize

    pcs = {k: Checkpoint.open(v) for k, v in parents.items()}
    ccs = {k: Checkpoint.open(v) for k, v in children.items()}
    names = sorted(n for n in pcs["p0"].tensors if ".mlp.experts." in n and n.endswith(".weight"))
    names = names[:: max(1, len(names) // sample)][:sample]
    err2 = dict.fromkeys([*children, "fp8 of exact"], 0.0)
    maxabs = dict.fromkeys(err2, 0.0)
    ref2 = 0.0
    for n in names:
        ref = sum(
            w * dequantize(pcs[p].get_tensor(n), pcs[p].get_tensor(n + "_scale_inv")).double()
            for p, w in weights.items()
        )
        got = {
            k: dequantize(c.get_tensor(n), c.get_tensor(n + "_scale_inv")).double() for k, c in ccs.items()
        }
        got["fp8 of exact"] = dequantize(*quantize(ref.float())).double()
        ref2 += ref.square().sum().item()
        for k, x in got.items():
            d = x - ref
            err2[k] += d.square().sum().item()
            maxabs[k] = max(maxabs[k], d.abs().max().item())
    return {
        "tensors": len(names),
        "rel_frobenius": {k: (v / ref2) ** 0.5 for k, v in err2.items()},
        "max_abs": maxabs,
    }
