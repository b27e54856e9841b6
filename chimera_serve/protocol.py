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
from typing import Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


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


class ReasoningOptions(_Request):
    """OpenRouter's `reasoning` request object."""

    effort: Literal["minimal", "low", "medium", "high"] | None = None
    max_tokens: int | None = Field(None, ge=1)
    exclude: bool = False
    enabled: bool | None = None


class SamplingFields(_Request):
    """Sampling parameters shared by chat and completions."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    n: int = Field(1, ge=1, le=16)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)
    # vLLM extensions, for benchmarks that need a fixed output length.
    ignore_eos: bool | None = None
    min_tokens: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _stops(self) -> SamplingFields:
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        if len(stops) > 16 or any(not s for s in stops):
            raise ValueError("stop takes up to 16 non-empty strings")
        return self

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

    @model_validator(mode="after")
    def _logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def show_reasoning(self) -> bool:
        """False when the client asked to drop the reasoning text (its tokens are still counted)."""
        if self.include_reasoning is False:
            return False
        r = self.reasoning
        return not (r is not None and (r.exclude or r.enabled is False))

    def template_messages(self) -> list[dict[str, Any]]:
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in self.messages
        ]


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


class AssistantMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning_content: str | None = None
    reasoning: str | None = None


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


class ChunkDelta(_Response):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None


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


SUPPORTED_SAMPLING = [
    "temperature", "top_p", "top_k", "min_p", "stop", "seed", "presence_penalty", "frequency_penalty",
    "repetition_penalty", "max_tokens", "logprobs", "top_logprobs", "response_format",
]  # fmt: skip
SUPPORTED_FEATURES = ["reasoning", "include_reasoning", "json_mode", "structured_outputs", "logprobs"]
