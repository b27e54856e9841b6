"""Requests to send: seeded synthetic prompts, a JSONL prompt file, or the lab's additions.

Synthetic prompts are distinct from their first word on (a shared prefix would let a prefix cache make them
cheap) and reproducible from the seed. Without a tokenizer a length counts words from `WORDS`, each a single
token in the GPT, Llama and DeepSeek tokenizers (with its leading space); with one (a tokenizer.json, read by
the `tokenizers` package) the text is cut and re-checked to the exact token count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.load.config import (
    Fixed,
    JsonlWorkload,
    LabWorkload,
    LogNormal,
    SyntheticWorkload,
    Uniform,
    Workload,
)
from benchmarks.load.errors import ConfigError

_WORDS = (
    "the of and to in is for on that with as by at from this be are was it an or have not which they "
    "will one all time new more year some about would there what can up out so when make like into than "
    "them only over also two first way work could people may well after through long just then back good"
)
WORDS = tuple(_WORDS.split())


@dataclass(frozen=True, slots=True)
class Prompt:
    """One request: its chat messages, its max_tokens and (lab prompts) the expected answer text."""

    messages: tuple[dict[str, Any], ...]
    max_tokens: int
    expected: str | None = None


def sample_lengths(dist: Fixed | Uniform | LogNormal, n: int, rng: np.random.Generator) -> list[int]:
    """`n` lengths drawn from `dist` (integers >= 1)."""
    if isinstance(dist, Fixed):
        return [dist.value] * n
    if isinstance(dist, Uniform):
        return rng.integers(dist.low, dist.high + 1, size=n).tolist()
    raw = dist.median * np.exp(dist.sigma * rng.standard_normal(n))  # the lognormal's median is exp(mu)
    return np.clip(np.rint(raw), 1, dist.cap).astype(int).tolist()


def synthetic_prompts(w: SyntheticWorkload, n: int) -> list[Prompt]:
    """`n` prompts with lengths from `w.input_len` and max_tokens from `w.output_len`."""
    rng = np.random.default_rng(w.seed)
    ins, outs = sample_lengths(w.input_len, n, rng), sample_lengths(w.output_len, n, rng)
    tok = _tokenizer(w.tokenizer) if w.tokenizer else None
    prompts = []
    for length, max_tokens in zip(ins, outs, strict=True):
        words = rng.choice(len(WORDS), size=length + 8)  # spare words: a tokenizer may merge some
        text = " ".join(WORDS[i] for i in words)
        text = _cut_to_tokens(tok, text, length) if tok else " ".join(text.split()[:length])
        prompts.append(Prompt(({"role": "user", "content": text},), max_tokens))
    return prompts


def _tokenizer(path: Path) -> Any:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ConfigError("--tokenizer needs the `tokenizers` package (pip install tokenizers)") from None
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"tokenizer {file} does not exist; pass a tokenizer.json or a model directory")
    return Tokenizer.from_file(str(file))


def _cut_to_tokens(tok: Any, text: str, length: int) -> str:
    """A prefix of `text` that encodes to `length` tokens (decoding can merge at the cut: re-check)."""
    ids = tok.encode(text, add_special_tokens=False).ids
    if len(ids) < length:
        text = " ".join([text] * (length // max(len(ids), 1) + 1))
        ids = tok.encode(text, add_special_tokens=False).ids
    cut = length
    for _ in range(8):
        out = tok.decode(ids[:cut])
        got = len(tok.encode(out, add_special_tokens=False).ids)
        if got == length:
            return out
        cut += length - got
    return out


def jsonl_prompts(w: JsonlWorkload) -> list[Prompt]:
    """Every line of the file; a bad line is named by its number."""
    prompts = []
    for no, line in enumerate(w.path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            prompts.append(_prompt_of(item, w.output_len))
        except (ValueError, TypeError, KeyError) as e:
            raise ConfigError(
                f'{w.path}:{no}: {e}; a line is {{"prompt": "..."}} or {{"messages": [...]}} '
                'with an optional "max_tokens"'
            ) from None
    if not prompts:
        raise ConfigError(f"{w.path} holds no prompts")
    return prompts


def _prompt_of(item: Any, default_max: int) -> Prompt:
    if not isinstance(item, dict):
        raise TypeError("not a JSON object")
    if "messages" in item:
        messages = tuple(item["messages"])
        if not messages or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise ValueError("messages must be a non-empty list of {role, content}")
    elif isinstance(item.get("prompt"), str):
        messages = ({"role": "user", "content": item["prompt"]},)
    else:
        raise KeyError("no 'prompt' string or 'messages' list")
    max_tokens = int(item.get("max_tokens", item.get("output_tokens", default_max)))
    if max_tokens < 1:
        raise ValueError("max_tokens must be >= 1")
    expected = item.get("expected")
    return Prompt(messages, max_tokens, None if expected is None else str(expected))


def lab_prompts(w: LabWorkload) -> list[Prompt]:
    """The lab's held-out additions, with a + b as the expected answer."""
    from merge.lab.task import heldout_problems  # the lab ships with the repository, not with the tool

    return [
        Prompt(({"role": "user", "content": p.prompt},), w.max_tokens, str(p.answer))
        for p in heldout_problems(w.n, w.seed)
    ]


def build_prompts(w: Workload, n: int) -> list[Prompt]:
    """The workload's prompts, `n` of them for synthetic ones (file and lab prompts are cycled by the caller)."""
    if isinstance(w, SyntheticWorkload):
        return synthetic_prompts(w, n)
    if isinstance(w, JsonlWorkload):
        return jsonl_prompts(w)
    return lab_prompts(w)


def answer_of(text: str) -> str:
    """The final answer of an output text: what follows the last `</think>`, stripped."""
    return text.rsplit("</think>", 1)[-1].strip()


def write_sharegpt(prompts: list[Prompt], path: Path) -> None:
    """The prompts in ShareGPT's JSON layout, which `vllm bench serve --dataset-name sharegpt` reads (its
    JSONL "custom" dataset needs pandas); the reply turn is a placeholder: the output length is fixed."""
    rows = [
        {
            "conversations": [
                {"from": "human", "value": p.messages[-1]["content"]},
                {"from": "gpt", "value": "ok"},
            ]
        }
        for p in prompts
    ]
    path.write_text(json.dumps(rows))
