"""Checkpoint surgery for the FP8 token gate: the half-quantized trap, and a dequantized bf16 reference copy."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch


def half_quantize(src: Path, dst: Path, module: str) -> None:
    """Copy `src` with `module`'s weight dequantized to bf16 and its scale dropped: the trap of issue 13."""
    from safetensors.torch import load_file, save_file

    from merge.fp8 import dequantize

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, copy_function=os.link)  # hard links: only the edited shard takes new space
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    wmap = index["weight_map"]
    weight, scale = module + ".weight", module + ".weight_scale_inv"
    for shard in {wmap[weight], wmap[scale]}:
        tensors = load_file(str(dst / shard))
        (dst / shard).unlink()  # break the hard link before writing
        if weight in tensors:
            sc = tensors.pop(scale) if scale in tensors else load_file(str(src / wmap[scale]))[scale]
            tensors[weight] = dequantize(tensors[weight], sc).to(torch.bfloat16)
        tensors.pop(scale, None)
        save_file(tensors, str(dst / shard), metadata={"format": "pt"})
    del wmap[scale]
    index["metadata"] = {}
    (dst / "model.safetensors.index.json").unlink()  # a hard link to src's index: never write through it
    (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (dst / "merge-manifest.json").unlink(missing_ok=True)


def dequantized_copy(src: Path, dst: Path) -> None:
    """bf16 copy of an FP8 checkpoint, dequantized block by block (what FineGrainedFP8Config(dequantize=True) does)."""
    from safetensors.torch import save_file

    from merge.checkpoint import Checkpoint
    from merge.fp8 import FP8_DTYPE, dequantize

    ckpt = Checkpoint.open(src)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".index.json")) and f.name != "config.json":
            shutil.copy(f, dst / f.name)
    config = ckpt.config()
    config.pop("quantization_config", None)
    (dst / "config.json").write_text(json.dumps(config, indent=1))
    out = {}
    for name in ckpt.tensors:
        if name.endswith("_scale_inv"):
            continue
        t = ckpt.get_tensor(name)
        out[name] = (
            dequantize(t, ckpt.get_tensor(name + "_scale_inv")).bfloat16() if t.dtype == FP8_DTYPE else t
        )
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
