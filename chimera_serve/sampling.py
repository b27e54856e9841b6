"""From a validated request to vLLM `SamplingParams`: defaults, the token budget, structured outputs.

Precedence for every sampling value: the request, else the model's generation_config.json (`defaults`,
as vLLM's own server applies them), else vLLM's neutral default. `max_tokens` is capped to the context
left after the prompt; a prompt that alone fills the context is a 400 with the numbers.
"""

from __future__ import annotations

import json
from typing import Any

from chimera_serve.errors import BadRequestError, ContextLengthError
from chimera_serve.protocol import ChatCompletionRequest, CompletionRequest

_SAMPLING_KEYS = (
    "temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty", "frequency_penalty",
    "repetition_penalty", "ignore_eos", "min_tokens",
)  # fmt: skip


def token_budget(requested: int | None, prompt_tokens: int, max_model_len: int, default: int | None) -> int:
    """Output tokens allowed: the request's (or the model's default) capped to the context left."""
    left = max_model_len - prompt_tokens
    if left < 1:
        raise ContextLengthError(
            f"the prompt has {prompt_tokens} tokens but the model's context is {max_model_len} tokens, "
            f"leaving no room for output; shorten the prompt",
            param="messages",
        )
    wanted = requested if requested is not None else default
    return left if wanted is None else min(wanted, left)


def structured_outputs(req: ChatCompletionRequest) -> Any:
    """`StructuredOutputsParams` for `response_format` json_object / json_schema, else None."""
    rf = req.response_format
    if rf is None or rf.type == "text":
        return None
    from vllm.sampling_params import StructuredOutputsParams

    if rf.type == "json_object":
        return StructuredOutputsParams(json_object=True)
    schema = rf.json_schema.schema_ if rf.json_schema else {}
    try:
        json.dumps(schema)
    except (TypeError, ValueError):
        raise BadRequestError(
            "response_format.json_schema.schema is not valid JSON", param="response_format"
        ) from None
    return StructuredOutputsParams(json=schema)


# OpenRouter's conversion of `reasoning.effort` into a token budget: this share of the request's max_tokens.
EFFORT_SHARE = {"minimal": 0.1, "low": 0.2, "medium": 0.5, "high": 0.8}


def thinking_budget(req: ChatCompletionRequest, max_tokens: int) -> int | None:
    """Reasoning tokens allowed: `reasoning.max_tokens`, else `effort` x max_tokens, else unlimited (None).

    vLLM enforces it (`SamplingParams.thinking_token_budget`): past the budget it forces `</think>` and the
    model goes on with its answer."""
    r = req.reasoning
    if r is None or r.enabled is False:
        return None
    if r.max_tokens is not None:
        return min(r.max_tokens, max_tokens)
    if r.effort is not None:
        return max(1, int(max_tokens * EFFORT_SHARE[r.effort]))
    return None


def build_sampling(
    req: ChatCompletionRequest | CompletionRequest,
    *,
    prompt_tokens: int,
    max_model_len: int,
    defaults: dict[str, Any],
) -> Any:
    """SamplingParams for `req` (vLLM validates the combination and raises a client error if wrong)."""
    from vllm import SamplingParams

    values: dict[str, Any] = {k: v for k, v in defaults.items() if k in _SAMPLING_KEYS}
    values.update({k: getattr(req, k) for k in _SAMPLING_KEYS if getattr(req, k) is not None})
    requested = req.token_limit if isinstance(req, ChatCompletionRequest) else req.max_tokens
    values["max_tokens"] = token_budget(requested, prompt_tokens, max_model_len, defaults.get("max_tokens"))
    if isinstance(req, ChatCompletionRequest):
        if req.logprobs:
            values["logprobs"] = req.top_logprobs or 0
        values["structured_outputs"] = structured_outputs(req)
        values["thinking_token_budget"] = thinking_budget(req, values["max_tokens"])
    elif req.logprobs is not None:
        values["logprobs"] = req.logprobs
    try:
        return SamplingParams(n=req.n, stop=req.stop_list or None, **values)
    except ValueError as e:  # vLLM's own checks on the combination of values
        raise BadRequestError(str(e).splitlines()[0]) from None
