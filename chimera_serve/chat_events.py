"""A chat completion's output: one event generator for streaming and non-streaming alike.

`events` turns engine deltas into per-choice pieces: a `ThinkSplitter` per choice separates reasoning from
the answer, and a `ToolCallCollector` per choice takes tool calls out of the answer. `stream` writes them as
SSE chunks; `collect` gathers them into one message. Both see the same pieces, so a stream and a
non-streaming answer of the same request carry the same text, tool calls, logprobs and usage.

Bytes keep flowing while nothing visible comes: `: PROCESSING` comments while queued and `: THINKING`
comments while the model reasons with the reasoning hidden (proxies cut idle streams after 60-100 s).
Logprobs of tokens the splitter holds back (a possible tag, hidden reasoning) ride on the choice's next chunk.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from chimera_serve.engine import TokenLogprob
from chimera_serve.errors import error_body, to_serve_error
from chimera_serve.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChoiceLogprobs,
    ChunkWriter,
    FunctionCallOut,
    StreamChoice,
    ToolCallOut,
    logprobs_content,
    make_usage,
)
from chimera_serve.reasoning import ThinkSplitter
from chimera_serve.serving import RequestRecord, Server
from chimera_serve.tools import ToolCall, ToolCallCollector, tool_call_dicts


@dataclass(slots=True)
class Piece:
    """What one engine delta means for one choice."""

    index: int
    reasoning: str = ""
    content: str = ""
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)


def logprobs_out(lps: list[TokenLogprob], top_n: int) -> dict[str, Any]:
    return logprobs_content((t.token, t.logprob, t.top[:top_n]) for t in lps)


async def events(
    srv: Server,
    rec: RequestRecord,
    req: ChatCompletionRequest,
    ids: list[int],
    params: object,
    *,
    prompt_opened: bool,
    collectors: list[ToolCallCollector],
) -> AsyncGenerator[Piece | None, None]:
    """Per-choice pieces (None = keepalive while queued); fills rec's tokens, outcome and finish reason."""
    splitters = [ThinkSplitter(prompt_opened=prompt_opened) for _ in range(req.n)]
    output: list[str] = []
    try:
        async with aclosing(srv.generate(rec, ids, params)) as deltas:
            async for d in deltas:
                if d is None:
                    yield None
                    continue
                sp, tc = splitters[d.index], collectors[d.index]
                reasoning, content = sp.feed(d.text, d.num_tokens)
                finish = d.finish_reason
                if finish is not None:
                    r2, c2 = sp.finish()
                    reasoning, content = reasoning + r2, content + c2
                content = tc.feed(content)
                if finish is not None:
                    content += tc.finish()
                    if tc.calls and finish == "stop":
                        finish = "tool_calls"
                if srv.settings.log_prompts:
                    output.append(d.text)
                yield Piece(d.index, reasoning, content, finish, d.logprobs, tc.calls if finish else [])
    finally:
        rec.reasoning_tokens = sum(s.reasoning_tokens for s in splitters)
        rec.outcome = splitters[0].outcome  # the think-tag metrics count responses: choice 0 stands for one
        rec.output = "".join(output) if srv.settings.log_prompts else None


def _sse(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def delta_choice(p: Piece, first: bool, show: bool) -> StreamChoice | None:
    """The chunk choice of piece `p` (a ChunkChoice as a dict), None when it says nothing."""
    delta: dict[str, Any] = {"role": "assistant"} if first else {}
    if p.content:
        delta["content"] = p.content
    if p.reasoning and show:
        delta["reasoning_content"] = delta["reasoning"] = p.reasoning
    if p.tool_calls:
        delta["tool_calls"] = tool_call_dicts(p.tool_calls)
    if not delta and p.finish_reason is None:
        return None
    choice: StreamChoice = {"index": p.index, "delta": delta}
    if p.finish_reason is not None:
        choice["finish_reason"] = p.finish_reason
    return choice


async def stream(
    srv: Server, rec: RequestRecord, req: ChatCompletionRequest, pieces: AsyncGenerator[Piece | None, None]
) -> AsyncGenerator[bytes | str, None]:
    """SSE body: keepalive comments, chunks, usage (if asked), [DONE]; errors as a frame."""
    show = req.show_reasoning
    started: set[int] = set()
    top_n = req.top_logprobs or 0
    pending: dict[int, list[TokenLogprob]] = {}  # logprobs not yet sent, per choice
    out = ChunkWriter("chat.completion.chunk", rec.request_id, rec.model)
    every = srv.settings.keepalive_interval_s
    last_sent = time.monotonic()
    try:
        async with aclosing(pieces):
            async for p in pieces:
                if p is None:
                    last_sent = time.monotonic()
                    yield ": PROCESSING\n\n"
                    continue
                if req.logprobs and p.logprobs:
                    pending.setdefault(p.index, []).extend(p.logprobs)
                choice = delta_choice(p, p.index not in started, show)
                if choice is None:
                    if time.monotonic() - last_sent >= every:  # hidden reasoning: keep the connection warm
                        last_sent = time.monotonic()
                        yield ": THINKING\n\n"
                    continue
                started.add(p.index)
                if pending.get(p.index):
                    choice["logprobs"] = logprobs_out(pending.pop(p.index), top_n)
                last_sent = time.monotonic()
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


async def collect(
    rec: RequestRecord, req: ChatCompletionRequest, pieces: AsyncIterator[Piece | None]
) -> ChatCompletion:
    reasoning: list[list[str]] = [[] for _ in range(req.n)]  # parts, joined once: += on a list item copies
    content: list[list[str]] = [[] for _ in range(req.n)]
    finish: list[str | None] = [None] * req.n
    lps: list[list[TokenLogprob]] = [[] for _ in range(req.n)]
    calls: list[list[ToolCall]] = [[] for _ in range(req.n)]
    async for p in pieces:
        if p is None:
            continue
        reasoning[p.index].append(p.reasoning)
        content[p.index].append(p.content)
        lps[p.index] += p.logprobs
        calls[p.index] += p.tool_calls
        finish[p.index] = p.finish_reason or finish[p.index]
    rec.finish_reason = finish[0]
    choices = []
    for i in range(req.n):
        text, thought = "".join(content[i]), "".join(reasoning[i])
        r = thought if req.show_reasoning and thought else None
        tool_calls = [
            ToolCallOut(id=c.id, function=FunctionCallOut(name=c.name, arguments=c.arguments))
            for c in calls[i]
        ]
        msg = AssistantMessage(
            content=(text or None) if tool_calls else text,
            reasoning_content=r,
            reasoning=r,
            tool_calls=tool_calls or None,
        )
        lp = logprobs_out(lps[i], req.top_logprobs or 0) if req.logprobs else None
        logprobs = ChoiceLogprobs.model_validate(lp) if lp is not None else None
        choices.append(ChatChoice(index=i, message=msg, finish_reason=finish[i], logprobs=logprobs))
    usage = make_usage(rec.prompt_tokens, rec.completion_tokens, rec.reasoning_tokens)
    return ChatCompletion(id=rec.request_id, model=rec.model, choices=choices, usage=usage)
