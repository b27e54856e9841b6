"""Token sequences for training, and a teacher-forced check of what greedy decoding would answer.

A training example is exactly what the chat template renders followed by the reply:
`<｜begin▁of▁sentence｜><｜User｜>{prompt}<｜Assistant｜>{reply}<｜end▁of▁sentence｜>` (the tests compare it with
`apply_chat_template`). Batches are right-padded; padding never reaches a loss or an earlier position (causal
attention), so no attention mask is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from merge.lab.task import PROMPT_FORMATS, Problem, Style, answer_text, pairs
from merge.lab.tokenizer import ASSISTANT, BOS, EOS, PAD, USER, build_tokenizer

IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    """Token ids of one example and where the assistant's reply starts."""

    ids: list[int]
    reply_start: int


class Encoder:
    """Turns problems into token ids with the lab tokenizer (built once)."""

    def __init__(self) -> None:
        self._tok = build_tokenizer()
        self.pad_id = self._tok.token_to_id(PAD)
        self._bos, self._eos = self._tok.token_to_id(BOS), self._tok.token_to_id(EOS)
        self._user, self._assistant = self._tok.token_to_id(USER), self._tok.token_to_id(ASSISTANT)

    def text_ids(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def prompt_ids(self, prompt: str) -> list[int]:
        """The generation prompt the chat template renders for one user message."""
        return [self._bos, self._user, *self.text_ids(prompt), self._assistant]

    def example(self, problem: Problem, style: Style) -> Encoded:
        prompt = self.prompt_ids(problem.prompt)
        reply = [*self.text_ids(answer_text(problem.a, problem.b, style)), self._eos]
        return Encoded(ids=prompt + reply, reply_start=len(prompt))


def training_problems() -> list[Problem]:
    """Every training pair in every prompt format (held-out pairs never appear)."""
    return [Problem(a, b, fmt.format(a=a, b=b)) for a, b in pairs("train") for fmt in PROMPT_FORMATS]


def collate(examples: list[Encoded], pad_id: int, reply_only: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids [B, T] and next-token labels [B, T] (IGNORE on padding, and on the prompt if `reply_only`)."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.ids)
        ids[row, :n] = torch.tensor(e.ids)
        first = e.reply_start if reply_only else 1
        # labels[t] is the token at t + 1: the prediction made at position t
        labels[row, first - 1 : n - 1] = torch.tensor(e.ids[first:])
    return ids, labels


@torch.no_grad()
def greedy_exact(model: torch.nn.Module, examples: list[Encoded], pad_id: int, device: str) -> float:
    """Share of examples whose whole reply greedy decoding would reproduce (argmax = gold at every reply token)."""
    ids, labels = collate(examples, pad_id, reply_only=True)
    logits = model(input_ids=ids.to(device)).logits.argmax(-1).cpu()
    ok = (logits == labels) | (labels == IGNORE)
    return ok.all(dim=1).float().mean().item()
