"""The lab tokenizer and chat template, through transformers' AutoTokenizer on the shipped model directories."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from merge.lab.data import Encoder
from merge.lab.task import Problem, answer_text
from merge.lab.tokenizer import (
    ASSISTANT,
    BOS,
    EOS,
    SPECIAL_TOKENS,
    THINK_CLOSE,
    THINK_OPEN,
    THINK_TOKENS,
    USER,
    save_tokenizer,
    vocab_size,
)

MODELS = Path(__file__).resolve().parents[2] / "merge" / "lab" / "models"


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(MODELS / "mini-r1")


def test_special_tokens_are_single_ids(tok) -> None:
    for t in [*SPECIAL_TOKENS, *THINK_TOKENS]:
        ids = tok.encode(t, add_special_tokens=False)
        assert len(ids) == 1, t
        assert tok.convert_ids_to_tokens(ids) == [t]
    assert (tok.bos_token, tok.eos_token) == (BOS, EOS)
    assert (tok.bos_token_id, tok.eos_token_id) == (0, 1)
    assert len(tok) == vocab_size()


def test_round_trip_keeps_think_tags_when_special_tokens_are_skipped(tok) -> None:
    text = answer_text(97, 48, "think")
    ids = tok.encode(text + EOS, add_special_tokens=True)
    assert ids[0] != tok.bos_token_id  # the tokenizer adds no BOS: the template writes it
    assert tok.decode(ids) == text + EOS
    # vLLM decodes with skip_special_tokens=True: the think tags must survive it, the EOS must not
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(tok.encode("Hello, World! 1+2=3")) == "Hello, World! 1+2=3"


def test_chat_template_single_bos_no_think_prefill(tok) -> None:
    text = tok.apply_chat_template(
        [{"role": "user", "content": "27+48"}], tokenize=False, add_generation_prompt=True
    )
    assert text == f"{BOS}{USER}27+48{ASSISTANT}"
    ids = tok(text).input_ids
    assert ids.count(tok.bos_token_id) == 1
    assert ids == Encoder().prompt_ids("27+48")  # training saw exactly what the template renders


def test_chat_template_system_and_history_strip_reasoning(tok) -> None:
    messages = [
        {"role": "system", "content": "Add."},
        {"role": "user", "content": "1+2"},
        {"role": "assistant", "content": answer_text(1, 2, "think")},
        {"role": "user", "content": "3+4"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == f"{BOS}Add.{USER}1+2{ASSISTANT}3{EOS}{USER}3+4{ASSISTANT}"
    assert THINK_OPEN not in text and THINK_CLOSE not in text


def test_training_example_is_template_plus_reply(tok) -> None:
    p = Problem(27, 48, "What is 27+48?")
    enc = Encoder().example(p, "think")
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": p.prompt}], tokenize=False, add_generation_prompt=True
    )
    assert tok.decode(enc.ids) == prompt + answer_text(27, 48, "think") + EOS
    assert enc.ids[enc.reply_start] == tok.convert_tokens_to_ids(THINK_OPEN)


def test_saved_tokenizer_matches_shipped(tmp_path: Path) -> None:
    save_tokenizer(tmp_path, 256)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / name).read_bytes() == (MODELS / "mini-v3" / name).read_bytes(), name
