"""Measure a model directory through vLLM's offline API: think-tag rate, accuracy, mean output tokens.

    VLLM_CPU_KVCACHE_SPACE=1 python -m merge.lab.evaluate MODEL_DIR [--n 200] [--json FILE] [--tools]

Prompts go through vLLM's chat path (`LLM.chat`: the model's own chat template), greedy, on a fixed held-out
set (`task.heldout_problems`), so the numbers are what a client of the server would see. One engine per process:
the sweep runs this module as a subprocess per child, which also returns every byte of the engine's memory.
`--tools` measures mini-tools' tool calling instead (`evaluate_tools`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from merge.lab.task import Problem, heldout_problems, parse_completion

DEFAULT_N = 200
MAX_TOKENS = 64  # a think reply is ~22 tokens; a model that rambles is cut here and counts as wrong


@dataclass(frozen=True)
class EvalResult:
    """One model's numbers on the held-out prompts."""

    model: str
    n: int
    think_rate: float  # share of outputs that open and close a think block
    accuracy: float  # share whose final answer equals a + b
    mean_output_tokens: float
    samples: list[dict]  # the first few prompts and outputs, for reading


def score(problems: list[Problem], texts: list[str], token_counts: list[int], model: str) -> EvalResult:
    """Pure scoring of output texts against their problems."""
    parsed = [parse_completion(t) for t in texts]
    n = len(problems)
    return EvalResult(
        model=model,
        n=n,
        think_rate=sum(p.think for p in parsed) / n,
        accuracy=sum(p.answer == q.answer for p, q in zip(parsed, problems, strict=True)) / n,
        mean_output_tokens=sum(token_counts) / n,
        samples=[{"prompt": q.prompt, "output": t} for q, t in list(zip(problems, texts, strict=True))[:5]],
    )


def generate(
    model_dir: Path, problems: list[Problem], max_tokens: int = MAX_TOKENS
) -> tuple[list[str], list[int]]:
    """Greedy chat completions from one vLLM engine; returns texts and output token counts."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(model_dir), max_model_len=256, enforce_eager=True, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    conversations = [[{"role": "user", "content": p.prompt}] for p in problems]
    outputs = llm.chat(conversations, params, use_tqdm=False)
    return [o.outputs[0].text for o in outputs], [len(o.outputs[0].token_ids) for o in outputs]


def evaluate(model_dir: Path, n: int = DEFAULT_N) -> EvalResult:
    """Think rate, accuracy and mean output tokens of `model_dir` on `n` held-out prompts."""
    problems = heldout_problems(n)
    texts, counts = generate(model_dir, problems)
    return score(problems, texts, counts, str(model_dir))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m merge.lab.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="held-out prompts (default %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--tools", action="store_true", help="tool-call rates of a tool model (mini-tools)")
    args = parser.parse_args(argv)
    if not (args.model_dir / "config.json").is_file():
        sys.exit(f"error: {args.model_dir} has no config.json; pass a model directory")
    if args.tools:
        from merge.lab.evaluate_tools import evaluate_tools, summary

        tool_result = evaluate_tools(args.model_dir, args.n)
        print(summary(tool_result))
        if args.json:
            args.json.write_text(json.dumps(asdict(tool_result), indent=2) + "\n")
        return
    result = evaluate(args.model_dir, args.n)
    print(
        f"{result.model}: think rate {result.think_rate:.3f}, accuracy {result.accuracy:.3f}, "
        f"mean output tokens {result.mean_output_tokens:.1f} (n={result.n})"
    )
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")


if __name__ == "__main__":
    main()
