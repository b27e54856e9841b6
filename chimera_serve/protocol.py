"""OpenAI wire models (pydantic): requests validated at the boundary, responses built from them.

Requests ignore unknown fields (clients send many) and refuse invalid values with a 400 that names the
field. Reasoning follows two conventions at once: `reasoning_content` (DeepSeek's API) and `reasoning`
(OpenRouter); the request side honours OpenRouter's `reasoning` object and the legacy
`include_reasoning`: `exclude: true` or `include_reasoning: false` drop the reasoning text (its tokens are
still counted); `enabled: false` also renders the template with `thinking=False` (templates that know it,
like DeepSeek-V3.1's, then close the think block in the prompt); `max_tokens` (or `effort`, as a share of the
request's max_tokens) caps the reasoning section (sampling.thinking_budget). Nothing here knows about HTTP or
the engine.

Stream chunks are the exception to "built from the models": a stream sends one chunk per token, and three
pydantic models per chunk cost ~7 us of the API process's CPU (on a small machine, CPU taken from the engine).
`ChunkWriter` writes the same bytes from plain dicts with msgspec (~0.7 us); the chunk models below stay as
the reference shape, and the tests compare the two byte for byte.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Annotated, Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Request(BaseModel):
    # Strict: JSON types as documented (an integer where a boolean belongs is a 400, not a guess).
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


class JsonSchemaFormat(_Request):
    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs a `json_schema` object")
        return self


class StreamOptions(_Request):
    include_usage: bool = False


Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]


class ReasoningOptions(_Request):
    """OpenRouter's `reasoning` request object (`effort: "none"` turns thinking off, like `enabled: false`)."""

    effort: Effort | None = None
    max_tokens: int | None = Field(None, ge=0)
    exclude: bool = False
    enabled: bool | None = None


# Tools (OpenAI's function tools) ---------------------------------------------------------------------

_TOOL_NAME = r"^[A-Za-z0-9_.:-]{1,64}$"


class FunctionDef(_Request):
    name: str = Field(pattern=_TOOL_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(_Request):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCallIn(_Request):
    name: str
    arguments: str  # a JSON string, as OpenAI clients send it back


class ToolCallIn(_Request):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


Stop = Annotated[str, Field(min_length=1)]
TokenId = Annotated[str, Field(pattern=r"^[0-9]{1,9}$")]
Bias = Annotated[float, Field(ge=-100.0, le=100.0)]


class SamplingFields(_Request):
    """Sampling parameters shared by chat and completions."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    stop: Stop | Annotated[list[Stop], Field(max_length=16)] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    n: int = Field(1, ge=1, le=16)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)
    logit_bias: dict[TokenId, Bias] | None = None  # token id (as a string) -> bias
    # vLLM extensions, for benchmarks that need a fixed output length.
    ignore_eos: bool | None = None
    min_tokens: int | None = Field(None, ge=0)

    @property
    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None  # assistant turns that called tools
    tool_call_id: str | None = None  # tool results: which call this answers

    @model_validator(mode="after")
    def _tool_fields(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        return self

    def text(self) -> str:
        """Content as text; list content keeps its `text` parts (the models are text-only)."""
        if isinstance(self.content, list):
            parts = []
            for p in self.content:
                if p.get("type") != "text":
                    raise ValueError(f"content part of type {p.get('type')!r} is not supported: text only")
                parts.append(str(p.get("text", "")))
            return "".join(parts)
        return self.content or ""


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    include_reasoning: bool | None = None
    reasoning: ReasoningOptions | None = None
    reasoning_effort: Effort | None = None  # OpenAI's top-level spelling of reasoning.effort
    tools: list[ToolDef] | None = Field(None, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.tool_choice is not None and self.tool_choice != "none" and not self.tools:
            raise ValueError("tool_choice needs tools: give the functions the model may call")
        if isinstance(self.tool_choice, NamedToolChoice):
            name = self.tool_choice.function.name
            if name not in {t.function.name for t in self.tools or ()}:
                raise ValueError(f"tool_choice names {name!r}, which is not among the tools")
        names = [t.function.name for t in self.tools or ()]
        if len(set(names)) != len(names):
            raise ValueError("tools must have distinct function names")
        if self.forced_tool_call and self.response_format is not None and self.response_format.type != "text":
            raise ValueError("response_format cannot be combined with tool_choice required or a named tool")
        return self

    @property
    def effort(self) -> Effort | None:
        return self.reasoning.effort if self.reasoning and self.reasoning.effort else self.reasoning_effort

    @property
    def thinking(self) -> bool | None:
        """True: the client asked for reasoning; False: it asked for none; None: the model's default."""
        if self.reasoning is not None and self.reasoning.enabled is not None:
            return self.reasoning.enabled
        effort = self.effort
        if effort is not None:
            return effort != "none"
        if self.reasoning is not None and self.reasoning.max_tokens is not None:
            return self.reasoning.max_tokens > 0
        return None

    @property
    def tool_mode(self) -> Literal["off", "none", "auto", "required", "named"]:
        """How tools are used: off (no tools), none (shown, never called), auto, required, named."""
        if not self.tools:
            return "off"
        choice = self.tool_choice or "auto"
        return "named" if isinstance(choice, NamedToolChoice) else choice

    @property
    def forced_tool_call(self) -> bool:
        return self.tool_mode in ("required", "named")

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def show_reasoning(self) -> bool:
        """False when the client asked to drop the reasoning text (its tokens are still counted)."""
        if self.include_reasoning is False:
            return False
        r = self.reasoning
        return not (r is not None and r.exclude) and self.thinking is not False

    def template_messages(self) -> list[dict[str, Any]]:
        """Messages as chat templates read them: developer -> system, tool calls and results kept."""
        out = []
        for m in self.messages:
            # An assistant turn that only called tools keeps content None: DeepSeek's template tests for it.
            content = None if m.role == "assistant" and m.content is None else m.text()
            msg: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": content}
            if m.tool_calls:
                msg["tool_calls"] = [c.model_dump() for c in m.tool_calls]
            if m.tool_call_id is not None:
                msg["tool_call_id"] = m.tool_call_id
            if m.name is not None:
                msg["name"] = m.name
            out.append(msg)
        return out

    def template_tools(self) -> list[dict[str, Any]] | None:
        return [t.model_dump(exclude_none=True) for t in self.tools] if self.tools else None

    @property
    def uses_tool_history(self) -> bool:
        """The conversation holds earlier tool calls or results (the template must render them)."""
        return any(m.tool_calls or m.role == "tool" for m in self.messages)


class CompletionRequest(SamplingFields):
    prompt: str | list[int] = Field(min_length=1)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False


# Responses -----------------------------------------------------------------------------------------


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TopLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(_Response):
    content: list[TokenLogprobOut]


class CompletionTokensDetails(_Response):
    reasoning_tokens: int = 0


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    completion_tokens_details: CompletionTokensDetails


def make_usage(prompt_tokens: int, completion_tokens: int, reasoning_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning_tokens),
    )


class FunctionCallOut(_Response):
    name: str
    arguments: str  # JSON text


class ToolCallOut(_Response):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCallOut] | None = None


class ChatChoice(_Response):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ToolCallDelta(_Response):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: dict[str, str] | None = None  # {"name": ..., "arguments": ...}, either may be absent


class ChunkDelta(_Response):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(_Response):
    index: int
    delta: ChunkDelta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


# The stream's chunks as dicts: what ChunkChoice / CompletionChoice hold, keys in their field order, None left out.
StreamChoice = dict[str, Any]
_encode = msgspec.json.Encoder().encode


class ChunkWriter:
    """JSON bytes of one stream's chunks: equal to `ChatCompletionChunk(...)` / `Completion(...)`'s
    `model_dump_json(exclude_none=True)`. `id`, `created` and `model` are fixed for the stream (as OpenAI's)."""

    def __init__(
        self,
        kind: Literal["chat.completion.chunk", "text_completion"],
        request_id: str,
        model: str,
        created: int | None = None,
    ) -> None:
        self._head = {
            "id": request_id,
            "object": kind,
            "created": int(time.time()) if created is None else created,
            "model": model,
        }

    def choice(self, choice: StreamChoice) -> bytes:
        return _encode({**self._head, "choices": [choice]})

    def usage(self, usage: Usage) -> bytes:
        return _encode({**self._head, "choices": [], "usage": usage.model_dump()})


def logprobs_content(tokens: Iterable[tuple[str, float, list[tuple[str, float]]]]) -> dict[str, Any]:
    """A `ChoiceLogprobs` as a dict, from (token, logprob, top alternatives) per token; logprobs are clamped
    to -9999 (JSON has no -inf)."""

    def entry(tok: str, lp: float) -> dict[str, Any]:
        return {"token": tok, "logprob": max(lp, -9999.0), "bytes": list(tok.encode("utf-8"))}

    return {
        "content": [{**entry(tok, lp), "top_logprobs": [entry(*x) for x in top]} for tok, lp, top in tokens]
    }


class CompletionChoice(_Response):
    index: int
    text: str
    finish_reason: str | None
    logprobs: dict[str, Any] | None = None


class Completion(_Response):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelPricing(_Response):
    prompt: str
    completion: str
    request: str = "0"
    image: str = "0"


class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "chimera"
    hugging_face_id: str | None
    name: str
    input_modalities: list[str] = ["text"]
    output_modalities: list[str] = ["text"]
    quantization: str
    context_length: int
    max_output_length: int
    max_model_len: int
    pricing: ModelPricing
    supported_sampling_parameters: list[str]
    supported_features: list[str]


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]
