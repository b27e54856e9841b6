"""POST /v1/chat/completions: one event generator serves streaming and non-streaming alike.

`_events` turns engine deltas into per-choice (reasoning, content) pieces with a `ThinkSplitter` per
choice; the SSE writer sends them as chunks, the non-streaming path collects them into one message.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from chimera_serve.auth import require_api_key
from chimera_serve.engine import TokenLogprob
from chimera_serve.errors import BadRequestError, error_body, to_serve_error
from chimera_serve.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChoiceLogprobs,
    ChunkWriter,
    StreamChoice,
    logprobs_content,
    make_usage,
)
from chimera_serve.reasoning import ThinkSplitter, prompt_opens_think
from chimera_serve.sampling import build_sampling
from chimera_serve.serving import EventStream, RequestRecord, Server, collect_response

router = APIRouter(dependencies=[Depends(require_api_key)])
ENDPOINT = "/v1/chat/completions"


@dataclass(slots=True)
class _Piece:
    """What one engine delta means for one choice."""

    index: int
    reasoning: str = ""
    content: str = ""
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)


def _logprobs_out(lps: list[TokenLogprob], top_n: int) -> dict[str, Any]:
    return logprobs_content((t.token, t.logprob, t.top[:top_n]) for t in lps)


async def _events(
    srv: Server, rec: RequestRecord, req: ChatCompletionRequest, prompt: str, ids: list[int], params: object
) -> AsyncIterator[_Piece | None]:
    """Per-choice pieces (None = keepalive while queued); fills rec's tokens, outcome and finish reason."""
    opened = prompt_opens_think(prompt)
    splitters = [ThinkSplitter(prompt_opened=opened) for _ in range(req.n)]
    output: list[str] = []
    try:
        async for d in srv.generate(rec, ids, params):
            if d is None:
                yield None
                continue
            sp = splitters[d.index]
            reasoning, content = sp.feed(d.text, d.num_tokens)
            if d.finish_reason is not None:
                r2, c2 = sp.finish()
                reasoning, content = reasoning + r2, content + c2
            if srv.settings.log_prompts:
                output.append(d.text)
            yield _Piece(d.index, reasoning, content, d.finish_reason, d.logprobs)
    finally:
        rec.reasoning_tokens = sum(s.reasoning_tokens for s in splitters)
        rec.outcome = splitters[0].outcome  # the think-tag metrics count responses: choice 0 stands for one
        rec.output = "".join(output) if srv.settings.log_prompts else None


def _sse(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def _delta_choice(p: _Piece, first: bool, show: bool) -> StreamChoice | None:
    """The chunk choice of piece `p` (a ChunkChoice as a dict), None when it says nothing."""
    delta: dict[str, str] = {"role": "assistant"} if first else {}
    if p.content:
        delta["content"] = p.content
    if p.reasoning and show:
        delta["reasoning_content"] = delta["reasoning"] = p.reasoning
    if not delta and p.finish_reason is None:
        return None
    choice: StreamChoice = {"index": p.index, "delta": delta}
    if p.finish_reason is not None:
        choice["finish_reason"] = p.finish_reason
    return choice


async def _stream(
    srv: Server, rec: RequestRecord, req: ChatCompletionRequest, events: AsyncIterator[_Piece | None]
) -> AsyncIterator[bytes | str]:
    """SSE body: keepalive comments while queued, chunks, usage (if asked), [DONE]; errors as a frame."""
    show = req.show_reasoning
    started: set[int] = set()
    top_n = req.top_logprobs or 0
    out = ChunkWriter("chat.completion.chunk", rec.request_id, rec.model)
    try:
        async for p in events:
            if p is None:
                yield ": PROCESSING\n\n"
                continue
            first = p.index not in started
            if first:
                started.add(p.index)
            choice = _delta_choice(p, first, show)
            if choice is None:
                continue
            if req.logprobs and p.logprobs:
                choice["logprobs"] = _logprobs_out(p.logprobs, top_n)
            yield _sse(out.choice(choice))
            if p.finish_reason is not None and p.index == 0:
                rec.finish_reason = p.finish_reason
        if req.include_usage:
            yield _sse(out.usage(make_usage(rec.prompt_tokens, rec.completion_tokens, rec.reasoning_tokens)))
        yield b"data: [DONE]\n\n"
    except (asyncio.CancelledError, GeneratorExit):  # the client went away: the engine request is aborted
        rec.status, rec.finish_reason = 499, "abort"
        raise
    except Exception as e:  # the status line is sent: report the error in the stream
        err = to_serve_error(e)
        rec.status, rec.finish_reason = err.status, rec.finish_reason or "error"
        yield _sse(json.dumps(error_body(err)).encode())
    finally:
        srv.finish(rec)


async def _collect(
    rec: RequestRecord, req: ChatCompletionRequest, events: AsyncIterator[_Piece | None]
) -> ChatCompletion:
    reasoning = [""] * req.n
    content = [""] * req.n
    finish: list[str | None] = [None] * req.n
    lps: list[list[TokenLogprob]] = [[] for _ in range(req.n)]
    async for p in events:
        if p is None:
            continue
        reasoning[p.index] += p.reasoning
        content[p.index] += p.content
        lps[p.index] += p.logprobs
        finish[p.index] = p.finish_reason or finish[p.index]
    rec.finish_reason = finish[0]
    show = req.show_reasoning and rec.outcome is not None
    choices = []
    for i in range(req.n):
        r = reasoning[i] if show and reasoning[i] else None
        msg = AssistantMessage(content=content[i], reasoning_content=r, reasoning=r)
        lp = _logprobs_out(lps[i], req.top_logprobs or 0) if req.logprobs else None
        logprobs = ChoiceLogprobs.model_validate(lp) if lp is not None else None
        choices.append(ChatChoice(index=i, message=msg, finish_reason=finish[i], logprobs=logprobs))
    usage = make_usage(rec.prompt_tokens, rec.completion_tokens, rec.reasoning_tokens)
    return ChatCompletion(id=rec.request_id, model=rec.model, choices=choices, usage=usage)


@router.post(ENDPOINT, response_model=None)
async def chat_completions(req: ChatCompletionRequest, request: Request) -> Response | ChatCompletion:
    srv: Server = request.app.state.server
    srv.check_model(req.model)
    # 1. Prompt: the chat template, then token ids (no tokenizer BOS on top of the template's).
    thinking_off = req.reasoning is not None and req.reasoning.enabled is False
    try:
        prompt = srv.engine.render_chat(
            req.template_messages(), {"thinking": False, "enable_thinking": False} if thinking_off else None
        )
    except ValueError as e:
        raise BadRequestError(str(e), param="messages") from None
    except Exception as e:  # a jinja error raised by the template on these messages
        raise BadRequestError(f"the chat template rejected these messages: {e}", param="messages") from None
    ids = srv.engine.encode(prompt)
    # 2. Sampling: request values, model defaults, the token budget (400 if the prompt fills the context).
    params = build_sampling(
        req,
        prompt_tokens=len(ids),
        max_model_len=srv.engine.limits.max_model_len,
        defaults=srv.engine.defaults,
    )
    # 3. Admission (429 / 503), then the engine.
    rec = RequestRecord(
        ENDPOINT, srv.settings.model_name, len(ids), prompt=prompt if srv.settings.log_prompts else None
    )
    srv.admit(rec)
    events = _events(srv, rec, req, prompt, ids, params)
    if req.stream:
        return EventStream(_stream(srv, rec, req, events), srv, rec)
    return await collect_response(srv, rec, request, _collect(rec, req, events), events)
