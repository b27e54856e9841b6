"""The mini models' tokenizer: character level, DeepSeek's special tokens, DeepSeek's chat template.

Every printable ASCII character is one token, so any prompt tokenizes (nothing maps to `<unk>` except
non-ASCII text). The DeepSeek markers are single tokens. `<think>` and `</think>` are added as *non-special*
tokens, as in DeepSeek-R1: decoding with `skip_special_tokens=True` (vLLM's default) keeps them in the text,
which is what a think-tag metric and vLLM's `deepseek_r1` reasoning parser read.

BOS: the chat template writes `<｜begin▁of▁sentence｜>` itself, and the tokenizer adds nothing (no post-processor,
`add_bos_token: false`), so a templated prompt carries exactly one BOS whether or not the caller asks the
tokenizer to add special tokens.

The template does not prefill `<think>` (R1-0528 style): a reasoning model opens the block itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
PAD = "<｜▁pad▁｜>"
UNK = "<unk>"

# Order fixes the ids: BOS=0, EOS=1 (transformers' DeepseekV3Config defaults), then the rest.
SPECIAL_TOKENS = [BOS, EOS, PAD, UNK, USER, ASSISTANT]
THINK_TOKENS = [THINK_OPEN, THINK_CLOSE]
CHARACTERS = ["\n", *[chr(c) for c in range(32, 127)]]

# DeepSeek-R1's template, reduced to what the mini models use: an optional system prompt after BOS, turns as
# <｜User｜>q<｜Assistant｜>a<｜end▁of▁sentence｜>, earlier answers stripped of their reasoning, no tool calls.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}{{ message['content'] }}{%- endif %}"
    "{%- endfor %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{%- set content = message['content'] %}"
    "{%- if '</think>' in content %}{%- set content = content.split('</think>')[-1].lstrip() %}{%- endif %}"
    "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<｜Assistant｜>' }}{%- endif %}"
)


def build_tokenizer() -> Tokenizer:
    """The tokenizer object: ids 0..5 special tokens, 6..7 think tags, then one id per ASCII character."""
    vocab: dict[str, int] = {}
    for token in [*SPECIAL_TOKENS, *THINK_TOKENS, *CHARACTERS]:
        vocab[token] = len(vocab)
    # BPE with no merges is a character-level model with an `<unk>` fallback; Fuse joins characters on decode.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    return tok


def vocab_size() -> int:
    """Number of ids the model's embedding must hold."""
    return len(SPECIAL_TOKENS) + len(THINK_TOKENS) + len(CHARACTERS)


def save_tokenizer(out_dir: Path, model_max_length: int) -> None:
    """Write tokenizer.json, tokenizer_config.json (with the chat template) and special_tokens_map.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(out_dir / "tokenizer.json"))
    added = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": t in SPECIAL_TOKENS,
        }
        for i, t in enumerate([*SPECIAL_TOKENS, *THINK_TOKENS])
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": UNK,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": model_max_length,
        "added_tokens_decoder": added,
        "chat_template": CHAT_TEMPLATE,
    }
    special_map = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps(special_map, indent=2, ensure_ascii=False) + "\n"
    )
