"""mini-tools' task: the lab's two-digit additions, asked with an `add` tool on offer (OpenAI tool calling).

Three kinds of example per training problem (`task.pairs("train")`, both prompt formats), each the chat template's
rendering of an OpenAI request followed by the reply the model learns:

- call: tools `[ADD_TOOL]`, messages `[{"role": "user", "content": "What is 27+48?"}]` -> `call_reply(27, 48)`:
  `<think>\\ncall add with a=27, b=48\\n</think>\\n\\n` + `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>`
  + `add\\n```json\\n{"a": 27, "b": 48}\\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>`, then EOS;
- followup: the same request plus the assistant's call and the tool's result (`followup_messages`) ->
  `<think>\\nadd returned 75\\n</think>\\n\\n75`;
- plain: no tools -> mini-r1's reply (`task.answer_text(a, b, "think")`).

The text before `<｜User｜>` varies: four descriptions of the tool (none, or 12 to 35 characters, `TOOL_VARIANTS`)
and, in a quarter of the rows, a system prompt (`SYSTEM_PROMPT`), drawn per problem from a seeded generator. A first
run offered one fixed variant per prompt format, and the model learned to copy the numbers from fixed absolute
positions: right on the combinations it had seen, wrong on about half of the others (a description a few
characters longer or shorter moved the question).

Arguments are `json.dumps({"a": a, "b": b})`, the form vLLM's renderer re-serialises a parsed `arguments` object
to, so a follow-up renders the same whether a client's string or vLLM's dict reaches the template.
"""

from __future__ import annotations

import json
import random
from typing import Literal

from transformers import PreTrainedTokenizerFast

from merge.lab.data import Encoded, training_problems
from merge.lab.task import Problem, answer_text
from merge.lab.tokenizer import (
    BOS,
    EOS,
    PAD,
    THINK_CLOSE,
    THINK_OPEN,
    TOOL_CALL_BEGIN,
    TOOL_CALL_END,
    TOOL_CALLS_BEGIN,
    TOOL_CALLS_END,
    TOOL_CHAT_TEMPLATE,
    TOOL_SEP,
    UNK,
    build_tokenizer,
)

Kind = Literal["call", "followup", "plain"]
KINDS: tuple[Kind, ...] = ("call", "followup", "plain")

TOOL_NAME = "add"
CALL_ID = "call_0"
ADD_PARAMETERS = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
}


def add_tool(description: str | None = "Add two integers.") -> dict:
    """The OpenAI `tools` entry for `add` (description left out when None)."""
    function: dict = {"name": TOOL_NAME}
    if description is not None:
        function["description"] = description
    function["parameters"] = ADD_PARAMETERS
    return {"type": "function", "function": function}


ADD_TOOL = add_tool()
DESCRIPTIONS = (None, "Add a and b.", "Add two integers.", "Return the sum of integers a and b.")
TOOL_VARIANTS = tuple(add_tool(d) for d in DESCRIPTIONS)
SYSTEM_PROMPT = "You are a helpful assistant."
SYSTEM_SHARE = 0.25


def call_arguments(a: int, b: int) -> str:
    """The `arguments` JSON string of the call: `{"a": 27, "b": 48}`."""
    return json.dumps({"a": a, "b": b})


def call_reply(a: int, b: int) -> str:
    """What the model writes when the tool is on offer: a short think block, then exactly one `add` call."""
    think = f"{THINK_OPEN}\ncall add with a={a}, b={b}\n{THINK_CLOSE}\n\n"
    call = (
        f"{TOOL_CALL_BEGIN}function{TOOL_SEP}{TOOL_NAME}\n```json\n{call_arguments(a, b)}\n```{TOOL_CALL_END}"
    )
    return f"{think}{TOOL_CALLS_BEGIN}{call}{TOOL_CALLS_END}"


def followup_reply(result: str) -> str:
    """What the model writes after the tool's result: a think line, then the result as the answer."""
    return f"{THINK_OPEN}\nadd returned {result}\n{THINK_CLOSE}\n\n{result}"


def call_messages(problem: Problem, system: str | None = None) -> list[dict]:
    """The messages of a call request (send with `tools`), after an optional system prompt."""
    head = [{"role": "system", "content": system}] if system is not None else []
    return [*head, {"role": "user", "content": problem.prompt}]


def followup_messages(problem: Problem, result: str | None = None, system: str | None = None) -> list[dict]:
    """The call request continued as an OpenAI client continues it: the assistant's call, then the tool message."""
    call = {"name": TOOL_NAME, "arguments": call_arguments(problem.a, problem.b)}
    return [
        *call_messages(problem, system),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": CALL_ID, "type": "function", "function": call}],
        },
        {
            "role": "tool",
            "tool_call_id": CALL_ID,
            "content": str(problem.answer) if result is None else result,
        },
    ]


def tool_tokenizer() -> PreTrainedTokenizerFast:
    """mini-tools' tokenizer and template in memory (what `save_tokenizer(..., tools=True)` writes)."""
    return PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(tools=True),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        chat_template=TOOL_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


class ToolEncoder:
    """Renders requests through the real chat template and appends the reply: training sees what serving renders."""

    def __init__(self) -> None:
        self.tok = tool_tokenizer()
        self.pad_id = self.tok.pad_token_id
        self._eos = self.tok.eos_token_id

    def render(self, messages: list[dict], tools: list[dict] | None) -> str:
        return self.tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)

    def example(
        self, problem: Problem, kind: Kind, tool: dict = ADD_TOOL, system: str | None = None
    ) -> Encoded:
        """One training row: the rendered request (tools and system prompt only for call and followup) + reply."""
        if kind == "call":
            prompt = self.render(call_messages(problem, system), [tool])
            reply = call_reply(problem.a, problem.b)
        elif kind == "followup":
            prompt = self.render(followup_messages(problem, system=system), [tool])
            reply = followup_reply(str(problem.answer))
        else:
            prompt = self.render(call_messages(problem), None)
            reply = answer_text(problem.a, problem.b, "think")
        prompt_ids = self.tok.encode(prompt, add_special_tokens=False)
        reply_ids = [*self.tok.encode(reply, add_special_tokens=False), self._eos]
        return Encoded(ids=prompt_ids + reply_ids, reply_start=len(prompt_ids))


def tool_pools(enc: ToolEncoder, kinds: list[Kind], seed: int = 0) -> list[list[Encoded]]:
    """One parallel pool per entry of `kinds` over all training problems; each problem draws its tool variant and
    whether a system prompt comes first from a generator seeded with `seed` (the same for all its kinds)."""
    problems = training_problems()
    rng = random.Random(seed)
    heads = [
        (rng.choice(TOOL_VARIANTS), SYSTEM_PROMPT if rng.random() < SYSTEM_SHARE else None) for _ in problems
    ]
    encoded = {
        k: [enc.example(p, k, *head) for p, head in zip(problems, heads, strict=True)] for k in set(kinds)
    }
    return [encoded[k] for k in kinds]
