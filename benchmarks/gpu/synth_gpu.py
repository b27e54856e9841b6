"""Two related synthetic FP8 DeepSeek-V3 parents, generated on a GPU and written in one pass.

`merge.synthetic.write_synthetic_parent` draws every value with the CPU's generator and reads the first parent
back to derive the second: at DeepSeek-V3 widths one MoE layer is 11.5 GB of FP8 per parent, minutes of CPU work.
Here each tensor is drawn once on the device, the second parent is derived from it in device memory
(base + noise x f x rms(base) x N(0, 1), f log-normal per tensor, as `merge.synthetic._related`), both are
block-quantized on the device with the merge stage's own `merge.fp8.quantize`, and two writer threads stream the
bytes to the two checkpoints while the device draws the next tensor. Layout, shard plan, names, dtypes and
config are the merge stage's (`entry_groups`, `plan_shards`, `ShardWriter`), so `chimera-merge` reads them as
any DeepSeek checkpoint.

Values depend on (seed, tensor name) and the device's generator: a CUDA pair differs from a CPU pair of the same
seed, and that is fine here (the benchmark compares children of one pair, never pairs across devices).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from merge import fp8 as blockfp8
from merge.layout import scale_name
from merge.synthetic import FP8_QUANTIZATION_CONFIG, entry_groups
from merge.writer import Entry, ShardWriter, plan_shards, shard_name, write_index


def _generator(seed: int, name: str, device: torch.device) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _fresh(name: str, shape: tuple[int, ...], g: torch.Generator, device: torch.device) -> torch.Tensor:
    """Initial float32 values with merge.synthetic's scales: norms ~1, small router bias, linears 1/sqrt(fan_in)."""
    x = torch.randn(shape, generator=g, device=device)
    if name.endswith("norm.weight"):
        return x.mul_(0.05).add_(1.0)
    if name.endswith("e_score_correction_bias"):
        return x.mul_(0.01)
    return x.mul_(0.02 if "embed_tokens" in name or "head" in name else 1.0 / math.sqrt(shape[-1]))


def _related(base: torch.Tensor, noise: float, g: torch.Generator) -> torch.Tensor:
    factor = math.exp(0.5 * torch.randn((), generator=g, device=base.device).item())
    rms = base.pow(2).mean().sqrt().item() or 1.0
    return torch.randn(base.shape, generator=g, device=base.device).mul_(noise * factor * rms).add_(base)


def _stored(e: Entry, value: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """(name, CPU tensor) pairs as the checkpoint stores `value`: FP8 + scale, bf16, or float32."""
    if e.dtype == "F8_E4M3":
        q, s = blockfp8.quantize(value)
        return [(e.name, q.cpu()), (scale_name(e.name), s.cpu())]
    return [(e.name, value.to(torch.float32 if e.dtype == "F32" else torch.bfloat16).cpu())]


def write_parent_pair(
    out_a: Path,
    out_b: Path,
    cfg: dict[str, Any],
    *,
    seed: int = 0,
    noise: float = 0.2,
    device: str = "cuda",
    shard_size: int = 4 << 30,
) -> dict[str, Any]:
    """Write FP8 parents `out_a` (fresh values) and `out_b` (related to a); return bytes and seconds."""
    dev = torch.device(device)
    shards = plan_shards(entry_groups(cfg, fp8_weights=True), shard_size)
    names = [shard_name(i, len(shards)) for i in range(len(shards))]
    for out in (out_a, out_b):
        out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pending: list[Future[None]] = []
    with ThreadPoolExecutor(1) as wa, ThreadPoolExecutor(1) as wb:
        for entries, fname in zip(shards, names, strict=True):
            sa, sb = ShardWriter(out_a / fname, entries), ShardWriter(out_b / fname, entries)
            for e in entries:
                if e.name.endswith(".weight_scale_inv"):
                    continue  # written with its weight
                g = _generator(seed, e.name, dev)
                a = _fresh(e.name, e.shape, g, dev)
                b = _related(a, noise, g)
                pa, pb = _stored(e, a), _stored(e, b)
                del a, b
                for f in pending:  # one tensor in flight per writer: bounded host memory, device runs ahead
                    f.result()
                pending = [wa.submit(_write_all, sa, pa), wb.submit(_write_all, sb, pb)]
            for f in pending:
                f.result()
            pending = []
            sa.finish()
            sb.finish()
    total = sum(e.nbytes for entries in shards for e in entries)
    weight_map = {e.name: fname for entries, fname in zip(shards, names, strict=True) for e in entries}
    conf = {**cfg, "quantization_config": dict(FP8_QUANTIZATION_CONFIG)}
    for out in (out_a, out_b):
        write_index(out, weight_map, total)
        (out / "config.json").write_text(json.dumps(conf, indent=2) + "\n")
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return {"bytes_each": total, "shards": len(shards), "seconds": round(time.perf_counter() - t0, 1)}


def _write_all(w: ShardWriter, items: list[tuple[str, torch.Tensor]]) -> None:
    for name, t in items:
        w.write(name, t)
