"""From a validated request to sampling values: defaults, the token budget, reasoning budget, constraints.

Precedence for every sampling value: the request, else the model's generation_config.json (`defaults`,
as vLLM's own server applies them), else vLLM's neutral default. `max_tokens` is capped to the context
left after the prompt and to the server's advertised `max_output_length`; a prompt that alone fills the
context is a 400 with the numbers. The engine turns the values into vLLM's `SamplingParams`
(`Engine.sampling_params`), so nothing here imports vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chimera_serve import tools
from chimera_serve.constrain import Constraint, ThinkMode, json_constraint
from chimera_serve.errors import BadRequestError, ContextLengthError
from chimera_serve.protocol import ChatCompletionRequest, CompletionRequest

_SAMPLING_KEYS = (
    "temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty", "frequency_penalty",
    "repetition_penalty", "ignore_eos", "min_tokens",
)  # fmt: skip

# OpenRouter's conversion of `reasoning.effort` into a token budget: this share of the request's max_tokens.
EFFORT_SHARE = {"minimal": 0.1, "low": 0.2, "medium": 0.5, "high": 0.8, "xhigh": 0.95}


@dataclass(frozen=True)
class Limits:
    """What bounds a request's output: the context, the model's default, the server's advertised cap."""

    max_model_len: int
    default_max_tokens: int | None = None
    max_output_length: int | None = None


def token_budget(
    requested: int | None,
    prompt_tokens: int,
    max_model_len: int,
    default: int | None,
    param: str = "messages",
) -> int:
    """Output tokens allowed: the request's (or the model's default) capped to the context left; `param` names
    the prompt's field in the 400 when nothing is left."""
    left = max_model_len - prompt_tokens
    if left < 1:
        raise ContextLengthError(
            f"the prompt has {prompt_tokens} tokens but the model's context is {max_model_len} tokens, "
            f"leaving no room for output; shorten the prompt",
            param=param,
        )
    wanted = requested if requested is not None else default
    return left if wanted is None else min(wanted, left)


def thinking_budget(req: ChatCompletionRequest, max_tokens: int) -> int | None:
    """Reasoning tokens allowed: `reasoning.max_tokens`, else effort x max_tokens, else unlimited (None).

    vLLM enforces it (`SamplingParams.thinking_token_budget`): past the budget it forces `</think>` and the
    model goes on with its answer. Thinking switched off is handled in the prompt (chat_prompt), not here."""
    if req.thinking is False:
        return None
    r = req.reasoning
    if r is not None and r.max_tokens is not None:
        return min(r.max_tokens, max_tokens)
    effort = req.effort
    if effort is not None and effort != "none":
        return max(1, int(max_tokens * EFFORT_SHARE[effort]))
    return None


def answer_constraint(req: ChatCompletionRequest, mode: ThinkMode) -> Constraint | None:
    """The structured-output constraint of the answer: response_format or a forced tool call, else None."""
    tool_defs = req.template_tools() or []
    if req.tool_mode == "required":
        schema: dict[str, Any] | None = tools.required_schema(tool_defs, req.parallel_tool_calls)
    elif req.tool_mode == "named":
        name = req.tool_choice.function.name  # type: ignore[union-attr]
        schema = tools.named_schema(next(t for t in tool_defs if t["function"]["name"] == name))
    elif req.response_format is None or req.response_format.type == "text":
        return None
    elif req.response_format.type == "json_object":
        schema = None
    else:
        schema = req.response_format.json_schema.schema_ if req.response_format.json_schema else {}
    try:
        return json_constraint(schema, mode)
    except ValueError as e:
        raise BadRequestError(str(e), param="response_format") from None


def sampling_values(
    req: ChatCompletionRequest | CompletionRequest,
    *,
    prompt_tokens: int,
    limits: Limits,
    defaults: dict[str, Any],
    vocab_size: int,
) -> dict[str, Any]:
    """SamplingParams keywords of `req` (the engine validates the combination: a 400 if it refuses)."""
    values: dict[str, Any] = {k: v for k, v in defaults.items() if k in _SAMPLING_KEYS}
    values.update({k: getattr(req, k) for k in _SAMPLING_KEYS if getattr(req, k) is not None})
    requested = req.token_limit if isinstance(req, ChatCompletionRequest) else req.max_tokens
    param = "messages" if isinstance(req, ChatCompletionRequest) else "prompt"
    budget = token_budget(requested, prompt_tokens, limits.max_model_len, limits.default_max_tokens, param)
    values["max_tokens"] = min(budget, limits.max_output_length) if limits.max_output_length else budget
    values["n"], values["stop"] = req.n, req.stop_list or None
    if req.logit_bias:
        if any(int(t) >= vocab_size for t in req.logit_bias):
            raise BadRequestError(f"logit_bias token ids must lie in [0, {vocab_size})", param="logit_bias")
        values["logit_bias"] = {int(t): float(b) for t, b in req.logit_bias.items()}
    if isinstance(req, ChatCompletionRequest):
        if req.logprobs:
            values["logprobs"] = req.top_logprobs or 0
    elif req.logprobs is not None:
        values["logprobs"] = req.logprobs
    return values
