"""transformers as the reference: greedy tokens of a bf16 checkpoint, and of an FP8 checkpoint's dequantized values.

transformers 5.17's `FineGrainedFP8Config(dequantize=True)` refuses DeepSeek's partial edge blocks
(`kv_a_proj_with_mqa` [576, 7168] with scales [5, 56]: benchmarks/results/gpu-fp8-token-gate.md), and a
dequantized copy on disk would cost another bf16 checkpoint of space. So the FP8 reference is built in memory:
the bf16 twin (same architecture, same non-FP8 tensors) is loaded, and every FP8 weight of the FP8 checkpoint
is dequantized with the merge stage's `merge.fp8.dequantize` (the arithmetic of dequantize mode) and copied over
its parameter; routed experts go into transformers' fused `experts.gate_up_proj` [E, 2I, H] (gate rows first,
then up) and `experts.down_proj` [E, H, I]. Non-FP8 tensors (norms, router, embeddings, head) must already be
equal in both checkpoints, and are checked.

Greedy decoding runs without a KV cache on short sequences: nothing of generate()'s defaults to second-guess.
Alongside the tokens: how decisive the model's first choices are (distinct first tokens over the prompts, and the
median gap between the two largest logits in units of the logits' standard deviation), so a degenerate random
model, whose agreement would mean nothing, shows as one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

_EXPERT = re.compile(r"^(?P<mlp>.+\.mlp)\.experts\.(?P<j>\d+)\.(?P<kind>gate|up|down)_proj\.weight$")


def _tensor_files(model_dir: Path) -> dict[str, Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        return {k: model_dir / v for k, v in json.loads(index.read_text())["weight_map"].items()}
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return {k: model_dir / "model.safetensors" for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator


def load(model_dir: Path, device: str, fp8_dequantize: bool = False) -> Any:
    """A checkpoint in bf16; `fp8_dequantize`: an FP8 one through transformers' own FineGrainedFP8Config."""
    from transformers import AutoModelForCausalLM

    kw: dict[str, Any] = {"device_map": device} if device == "cuda" else {}
    if fp8_dequantize:
        from transformers import FineGrainedFP8Config

        kw["quantization_config"] = FineGrainedFP8Config(dequantize=True)
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, **kw).eval()


@torch.no_grad()
def overwrite_with_fp8(model: Any, fp8_dir: Path) -> dict[str, int]:
    """Copy dequantize(FP8 weight, scale) of `fp8_dir` into `model` (loaded from the bf16 twin)."""
    from safetensors import safe_open

    from merge.fp8 import dequantize

    params = dict(model.named_parameters())
    files = _tensor_files(fp8_dir)
    counts = {"linear": 0, "expert": 0, "checked_equal": 0}
    handles: dict[Path, Any] = {}

    def get(name: str) -> torch.Tensor:
        f = files[name]
        if f not in handles:
            handles[f] = safe_open(str(f), "pt")
        return handles[f].get_tensor(name)

    for name in files:
        if name.endswith(".weight_scale_inv"):
            continue
        t = get(name)
        if t.dtype != torch.float8_e4m3fn:
            p = params.get(name)
            if p is not None and not torch.equal(p.detach().cpu(), t.to(p.dtype)):
                raise ValueError(f"{name} differs between the FP8 checkpoint and its bf16 twin")
            counts["checked_equal"] += p is not None
            continue
        dev = next(iter(params.values())).device  # dequantize where the model lives: a GPU does it in ms
        value = dequantize(t.to(dev), get(name + "_scale_inv").to(dev)).to(torch.bfloat16)
        if name in params:
            params[name].copy_(value)
            counts["linear"] += 1
            continue
        m = _EXPERT.match(name)
        if m is None:
            raise ValueError(f"{name}: no parameter of this model takes it")
        j, kind, rows = int(m["j"]), m["kind"], value.shape[0]
        if kind == "down":
            params[f"{m['mlp']}.experts.down_proj"][j].copy_(value)
        else:
            off = 0 if kind == "gate" else rows
            params[f"{m['mlp']}.experts.gate_up_proj"][j, off : off + rows].copy_(value)
        counts["expert"] += 1
    return counts


@torch.no_grad()
def greedy(model: Any, prompts: list[list[int]], steps: int, batch: int = 64) -> dict[str, Any]:
    """Greedy continuations (ids) of `prompts`, and how decisive the first step was."""
    device = next(model.parameters()).device
    out: list[list[int]] = []
    gaps: list[float] = []
    for i in range(0, len(prompts), batch):
        x = torch.tensor(prompts[i : i + batch], device=device)
        n = x.shape[1]
        for step in range(steps):
            logits = model(x).logits[:, -1].float()
            if step == 0:
                top = logits.topk(2, dim=-1).values
                gaps += ((top[:, 0] - top[:, 1]) / logits.std(dim=-1)).tolist()
            x = torch.cat([x, logits.argmax(-1, keepdim=True)], 1)
        out += x[:, n:].tolist()
    first = [s[0] for s in out]
    return {
        "tokens": out,
        "distinct_first_tokens": len(set(first)),
        "median_top2_gap_in_std": round(float(torch.tensor(gaps).median()), 4),
    }
