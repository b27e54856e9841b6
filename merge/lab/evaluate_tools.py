"""mini-tools through vLLM's offline API and vLLM's own DeepSeek parsers: does it call `add`, and right?

    VLLM_CPU_KVCACHE_SPACE=1 python -m merge.lab.evaluate merge/lab/models/mini-tools --tools [--n 200]

Three greedy batches on held-out problems (`task.heldout_problems`), rendered by the model's chat template through
`LLM.chat`, as a client of the server would send them (`tools.call_messages` / `tools.followup_messages`):

1. call: `add` on offer; an output counts as a call when vLLM's parsers (`deepseek_r1` reasoning, then
   `deepseek_v3` tools, composed as the OpenAI server composes them for a non-streaming reply) find exactly one
   call, named `add`; its arguments count as right when they parse to `{"a": a, "b": b}`;
2. follow-up: the call answered by a `tool` message with the sum; right when the content is the sum and no call;
3. plain: no tools; right when the final answer is the sum (`task.is_correct`), as for mini-r1.

Outputs are decoded with vLLM's default `skip_special_tokens=True`: the tool tokens are non-special, so they stay
in the text the tool parser reads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from merge.lab.task import Problem, heldout_problems, is_correct, parse_completion
from merge.lab.tools import ADD_TOOL, TOOL_NAME, call_messages, followup_messages

MAX_TOKENS = 128  # a reasoned call is ~78 tokens; a model that rambles is cut here and counts as wrong
MAX_MODEL_LEN = 512


@dataclass(frozen=True)
class Parsed:
    """One output as vLLM's server would return it: reasoning, content, and tool calls as (name, arguments)."""

    text: str
    reasoning: str | None
    content: str | None
    calls: list[tuple[str, str]]


@dataclass(frozen=True)
class ToolEvalResult:
    """mini-tools' numbers on the held-out problems."""

    model: str
    n: int
    call_rate: float  # call requests answered with exactly one `add` call
    argument_accuracy: float  # call requests whose call arguments are {"a": a, "b": b}
    call_think_rate: float  # call requests whose output opened and closed a think block first
    followup_accuracy: float  # follow-up requests answered with the sum as content, no call
    plain_accuracy: float  # requests without tools answered with the sum
    plain_call_rate: float  # requests without tools that still produced a tool call (should be 0)
    samples: dict[str, list[dict]] = field(default_factory=dict)  # a few outputs per kind, for reading


def arguments_match(arguments: str, problem: Problem) -> bool:
    """True when a call's arguments JSON is exactly {"a": a, "b": b} (numbers, not strings)."""
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        return False
    return value == {"a": problem.a, "b": problem.b} and all(type(v) is int for v in value.values())


def score(
    problems: list[Problem], call: list[Parsed], followup: list[Parsed], plain: list[Parsed], model: str
) -> ToolEvalResult:
    """Pure scoring of parsed outputs against their problems (one list per kind, in problem order)."""
    n = len(problems)
    one_add = [len(p.calls) == 1 and p.calls[0][0] == TOOL_NAME for p in call]
    args_ok = [
        ok and arguments_match(p.calls[0][1], q) for ok, p, q in zip(one_add, call, problems, strict=True)
    ]
    followup_ok = [
        not p.calls and (p.content or "").strip() == str(q.answer)
        for p, q in zip(followup, problems, strict=True)
    ]
    return ToolEvalResult(
        model=model,
        n=n,
        call_rate=sum(one_add) / n,
        argument_accuracy=sum(args_ok) / n,
        call_think_rate=sum(parse_completion(p.text).think for p in call) / n,
        followup_accuracy=sum(followup_ok) / n,
        plain_accuracy=sum(is_correct(q, p.text) for p, q in zip(plain, problems, strict=True)) / n,
        plain_call_rate=sum(bool(p.calls) for p in plain) / n,
        samples={
            kind: [{"prompt": q.prompt, **vars(p)} for p, q in list(zip(outs, problems, strict=True))[:3]]
            for kind, outs in (("call", call), ("followup", followup), ("plain", plain))
        },
    )


def server_parser(tokenizer, tools: list[dict] | None):
    """vLLM's parser pair as `--reasoning-parser deepseek_r1 --tool-call-parser deepseek_v3 --enable-auto-tool-choice`
    builds it, and a request for it; returns a function text -> Parsed."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.parser import ParserManager

    parser_cls = ParserManager.get_parser(
        tool_parser_name="deepseek_v3",
        reasoning_parser_name="deepseek_r1",
        enable_auto_tools=True,
        tokenizer=tokenizer,
    )
    request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "-"}], tools=tools)

    def parse(text: str) -> Parsed:
        parser = parser_cls(tokenizer, request.tools)  # per request, as the server holds one per request
        reasoning, content, calls = parser.parse(text, request, enable_auto_tools=True)
        return Parsed(text, reasoning, content, [(c.name, c.arguments) for c in calls or []])

    return parse


def generate(model_dir: Path, problems: list[Problem]) -> tuple[list[Parsed], list[Parsed], list[Parsed]]:
    """Greedy outputs of one vLLM engine for the three kinds, each parsed as the OpenAI server would."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(model_dir), max_model_len=MAX_MODEL_LEN, enforce_eager=True, seed=0)
    params = SamplingParams(
        temperature=0.0, max_tokens=MAX_TOKENS
    )  # skip_special_tokens=True: vLLM's default
    tokenizer = llm.get_tokenizer()

    def run(conversations: list[list[dict]], tools: list[dict] | None) -> list[Parsed]:
        outputs = llm.chat(conversations, params, use_tqdm=False, tools=tools)
        parse = server_parser(tokenizer, tools)
        return [parse(o.outputs[0].text) for o in outputs]

    return (
        run([call_messages(p) for p in problems], [ADD_TOOL]),
        run([followup_messages(p) for p in problems], [ADD_TOOL]),
        run([call_messages(p) for p in problems], None),
    )


def evaluate_tools(model_dir: Path, n: int) -> ToolEvalResult:
    """The tool-call numbers of `model_dir` on `n` held-out problems."""
    problems = heldout_problems(n)
    return score(problems, *generate(model_dir, problems), str(model_dir))


def summary(r: ToolEvalResult) -> str:
    """One line per behaviour, for the CLI."""
    return (
        f"{r.model} (n={r.n}, greedy, vLLM offline + deepseek_r1/deepseek_v3 parsers)\n"
        f"  1. tools offered:   tool-call rate {r.call_rate:.3f}, argument accuracy {r.argument_accuracy:.3f}, "
        f"think rate {r.call_think_rate:.3f}\n"
        f"  2. after the result: answer accuracy {r.followup_accuracy:.3f}\n"
        f"  3. no tools:        accuracy {r.plain_accuracy:.3f}, tool-call rate {r.plain_call_rate:.3f}"
    )
