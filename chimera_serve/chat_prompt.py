"""A chat request made ready for the engine: prompt, token ids, sampling values, constraint, tool handling.

Runs off the event loop for long prompts (`Server.prepare`): rendering a chat template and
tokenizing a long prompt take milliseconds to seconds, and on the loop they would stall every stream.

The reasoning switch (`reasoning.enabled`, `reasoning.effort`, `reasoning_effort`):

* on: the template gets ``thinking=True`` / ``enable_thinking=True`` (templates that default thinking off,
  like DeepSeek-V3.1's, then open ``<think>``);
* off: ``thinking=False``; if the template ignored that and still opened ``<think>`` (R1-0528 style), the
  prompt gets the ``</think>`` itself, as V3.1's template writes it; if the model opens ``<think>`` on its own
  (R1 style, the mini models), that token is banned for the request. Either way the model answers without a
  think block, instead of thinking at full length with the text hidden;
* a budget (`reasoning.max_tokens`, effort): vLLM's `thinking_token_budget`, refused with a 400 naming the
  release it needs on a vLLM without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chimera_serve.constrain import Constraint, ThinkMode, think_mode
from chimera_serve.engine import Engine
from chimera_serve.errors import BadRequestError
from chimera_serve.protocol import ChatCompletionRequest
from chimera_serve.reasoning import THINK_CLOSE, THINK_OPEN, prompt_opens_think
from chimera_serve.sampling import Limits, answer_constraint, sampling_values, thinking_budget


@dataclass(frozen=True)
class ChatPlan:
    prompt: str
    ids: list[int]
    mode: ThinkMode  # how the answer may start (constrain.think_mode)
    values: dict[str, Any]  # SamplingParams keywords
    constraint: Constraint | None

    @property
    def prompt_opened(self) -> bool:
        return self.mode == "open"


def _check_tools(engine: Engine, req: ChatCompletionRequest) -> bool:
    """Whether to show the tools to the model; a 400 when the request needs tool calling it cannot do."""
    needs = req.tool_mode not in ("off", "none") or req.uses_tool_history
    if needs and not engine.features.tools:
        raise BadRequestError(
            "this model cannot call tools here: its tokenizer or chat template has no DeepSeek tool-call "
            "format, or this vLLM has no deepseek_v3 tool parser; send the request without tools",
            param="tools",
        )
    return req.tool_mode != "off" and engine.features.tools


def _template_kwargs(req: ChatCompletionRequest) -> dict[str, Any]:
    if req.thinking is None:
        return {}
    return {"thinking": req.thinking, "enable_thinking": req.thinking}


def _render(engine: Engine, req: ChatCompletionRequest, show_tools: bool) -> str:
    try:
        return engine.render_chat(
            req.template_messages(), _template_kwargs(req), req.template_tools() if show_tools else None
        )
    except ValueError as e:
        raise BadRequestError(str(e), param="messages") from None
    except Exception as e:  # a jinja error raised by the template on these messages
        raise BadRequestError(f"the chat template rejected these messages: {e}", param="messages") from None


def prepare(engine: Engine, req: ChatCompletionRequest, max_output_length: int | None) -> ChatPlan:
    """Everything the engine needs for `req`; raises BadRequestError (400) for what cannot be served."""
    # 1. Prompt: the chat template (tools shown if the model can call them), reasoning switched as asked.
    show_tools = _check_tools(engine, req)
    prompt = _render(engine, req, show_tools)
    ban_think = False
    if req.thinking is False and prompt_opens_think(prompt):
        prompt = prompt.rstrip() + THINK_CLOSE + "\n\n"  # the template ignored thinking=False
    elif req.thinking is False:
        ban_think = THINK_OPEN in engine.tokenizer.get_vocab()
    mode = "closed" if req.thinking is False else think_mode(prompt, thinking_off=False)
    if mode == "optional" and not engine.thinks and req.thinking is not True:
        mode = "closed"  # a model that does not reason: JSON from the first token, as without reasoning
    ids = engine.encode(prompt)
    # 2. Sampling values: request, model defaults, the token budget (400 if the prompt fills the context).
    limits = Limits(engine.limits.max_model_len, engine.defaults.get("max_tokens"), max_output_length)
    values = sampling_values(
        req, prompt_tokens=len(ids), limits=limits, defaults=engine.defaults, vocab_size=engine.vocab_size()
    )
    if ban_think:
        think_id = engine.tokenizer.get_vocab()[THINK_OPEN]
        values["logit_bias"] = {**values.get("logit_bias", {}), think_id: -100.0}
    budget = thinking_budget(req, values["max_tokens"])
    if budget is not None:
        if not engine.features.thinking_budget:
            raise BadRequestError(
                f"a reasoning budget (reasoning.max_tokens or effort) needs vLLM's thinking_token_budget and "
                f"reasoning_config, which this server's vLLM {engine.features.vllm_version} lacks; send the "
                f"request without reasoning.max_tokens and effort",
                param="reasoning",
            )
        values["thinking_token_budget"] = budget
    if req.tool_mode == "auto" and show_tools and engine.features.tool_tokens_special:
        values["skip_special_tokens"] = False  # the parser reads the tool-call markers in the text
    # 3. The answer's constraint (JSON mode, schema, forced tool call), leaving the reasoning free.
    return ChatPlan(prompt, ids, mode, values, answer_constraint(req, mode))
