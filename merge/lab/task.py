"""The lab's task: two-digit addition, answered directly (V3 style) or after a short reasoning trace (R1 style).

Every a + b with 0 <= a, b <= 99 is one problem; a fixed tenth of the pairs is held out from all training, so
evaluation measures arithmetic, not recall. A prompt is `27+48` or `What is 27+48?`.

- direct answer (mini-v3): `75`
- think answer (mini-r1):  `<think>\\n7+8=15\\n2+4+1=7\\n</think>\\n\\n75` (column sums from the right, with the
  carry written out, then the answer, as DeepSeek-R1-0528 lays out a reasoning block)

`parse_completion` reads a model's output text the same way for every model: a think block counts when it is
opened and closed; the answer is what follows the last `</think>` (or the whole text), and must be digits only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from merge.lab.tokenizer import THINK_CLOSE, THINK_OPEN

Style = Literal["direct", "think"]
Split = Literal["train", "heldout"]

PROMPT_FORMATS = ("{a}+{b}", "What is {a}+{b}?")


@dataclass(frozen=True)
class Problem:
    """One addition problem and the prompt text that asks it."""

    a: int
    b: int
    prompt: str

    @property
    def answer(self) -> int:
        return self.a + self.b


@dataclass(frozen=True)
class Parsed:
    """What an output text says: whether it held a complete think block, and the final answer (None if not digits)."""

    think: bool
    answer: int | None


def is_heldout(a: int, b: int) -> bool:
    """A fixed, pseudo-random tenth of all pairs, never trained on."""
    return (a * 31 + b * 17) % 10 == 3


def pairs(split: Split) -> list[tuple[int, int]]:
    """All (a, b) pairs of one split, in a fixed order."""
    want = split == "heldout"
    return [(a, b) for a in range(100) for b in range(100) if is_heldout(a, b) == want]


def heldout_problems(n: int, seed: int = 1234) -> list[Problem]:
    """A fixed evaluation set: `n` held-out pairs, alternating the two prompt formats."""
    chosen = random.Random(seed).sample(pairs("heldout"), n)
    return [
        Problem(a, b, PROMPT_FORMATS[i % len(PROMPT_FORMATS)].format(a=a, b=b))
        for i, (a, b) in enumerate(chosen)
    ]


def think_trace(a: int, b: int) -> str:
    """The reasoning lines: units column, then tens column with the carry."""
    units = a % 10 + b % 10
    tens = a // 10 + b // 10 + units // 10
    return f"{a % 10}+{b % 10}={units}\n{a // 10}+{b // 10}+{units // 10}={tens}"


def answer_text(a: int, b: int, style: Style) -> str:
    """The assistant's reply for one problem in one style (without the end-of-sentence token)."""
    if style == "direct":
        return str(a + b)
    return f"{THINK_OPEN}\n{think_trace(a, b)}\n{THINK_CLOSE}\n\n{a + b}"


def parse_completion(text: str) -> Parsed:
    """Think block present (opened and closed) and the final answer, from a model's output text."""
    think = THINK_OPEN in text and THINK_CLOSE in text.split(THINK_OPEN, 1)[1]
    final = text.rsplit(THINK_CLOSE, 1)[-1].strip()
    return Parsed(think=think, answer=int(final) if final.isdigit() and len(final) <= 4 else None)


def is_correct(problem: Problem, text: str) -> bool:
    """True when the output's final answer equals a + b."""
    return parse_completion(text).answer == problem.answer
