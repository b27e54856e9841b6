"""The mini-Chimera lab: tiny DeepSeek-V3 parents trained on the CPU, so the merge method can be seen working.

`tokenizer` (character-level, DeepSeek special tokens, chat templates), `task` (two-digit addition, answer
checker), `model` (vLLM-CPU-servable dimensions, HF export), `train` (base -> mini-v3 / mini-r1, CLI),
`evaluate` (think rate / accuracy / output length through vLLM's offline API, CLI); `tools`, `train_tools` and
`evaluate_tools` do the same for mini-tools, which calls an `add` tool. Not imported by the server.
"""

from __future__ import annotations

from merge.errors import MergeError


class LabError(MergeError):
    """A lab input is unusable: dimensions vLLM's CPU backend cannot serve, a bad sweep grid, a foreign recipe."""
