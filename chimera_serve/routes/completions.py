"""POST /v1/completions: a raw prompt (text or token ids), text out; no chat template, no reasoning split.

The think-tag metrics still see the output (through a `ThinkSplitter`), so a raw-prompt client counts too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from chimera_serve.engine import Engine, TokenLogprob
from chimera_serve.errors import BadRequestError, ServeRoute, error_body, to_serve_error
from chimera_serve.openapi import route_responses
from chimera_serve.protocol import (
    ChunkWriter,
    Completion,
    CompletionChoice,
    CompletionRequest,
    StreamChoice,
    make_usage,
)
from chimera_serve.reasoning import ThinkSplitter, prompt_opens_think
from chimera_serve.sampling import Limits, sampling_values
from chimera_serve.serving import (
    EventStream,
    RequestRecord,
    Server,
    arrival_of,
    collect_response,
    new_request_id,
    request_chars,
)

router = APIRouter(route_class=ServeRoute)
ENDPOINT = "/v1/completions"


def _logprobs(lps: list[TokenLogprob], top_n: int) -> dict[str, Any]:
    return {
        "tokens": [t.token for t in lps],
        "token_logprobs": [t.logprob for t in lps],
        "top_logprobs": [dict(t.top[:top_n]) for t in lps],
    }


async def _deltas(
    srv: Server, rec: RequestRecord, prompt: str, ids: list[int], params: Any
) -> AsyncGenerator[Any, None]:
    splitters: dict[int, ThinkSplitter] = {}
    opened = prompt_opens_think(prompt)
    try:
        async with aclosing(srv.generate(rec, ids, params)) as stream:
            async for d in stream:
                if d is not None:
                    sp = splitters.setdefault(d.index, ThinkSplitter(prompt_opened=opened))
                    sp.feed(d.text, d.num_tokens)
                    if d.finish_reason is not None:
                        sp.finish()
                        if d.index == 0:
                            rec.finish_reason = d.finish_reason
                yield d
    finally:
        rec.reasoning_tokens = sum(s.reasoning_tokens for s in splitters.values())
        rec.outcome = splitters[0].outcome if 0 in splitters else None


async def _stream(
    srv: Server, rec: RequestRecord, req: CompletionRequest, deltas: AsyncGenerator[Any, None]
) -> AsyncGenerator[bytes | str, None]:
    out = ChunkWriter("text_completion", rec.request_id, rec.model)
    try:
        async with aclosing(deltas):
            async for d in deltas:
                if d is None:
                    yield ": PROCESSING\n\n"
                    continue
                choice: StreamChoice = {"index": d.index, "text": d.text}  # a CompletionChoice, None left out
                if d.finish_reason is not None:
                    choice["finish_reason"] = d.finish_reason
                if req.logprobs is not None:
                    choice["logprobs"] = _logprobs(d.logprobs, req.logprobs)
                yield b"data: " + out.choice(choice) + b"\n\n"
        if req.include_usage:
            usage = make_usage(rec.prompt_tokens, rec.completion_tokens, rec.reasoning_tokens)
            yield b"data: " + out.usage(usage) + b"\n\n"
        yield b"data: [DONE]\n\n"
    except (asyncio.CancelledError, GeneratorExit):
        rec.status, rec.finish_reason = 499, "abort"
        raise
    except Exception as e:
        err = to_serve_error(e)
        rec.status, rec.finish_reason = err.status, rec.finish_reason or "error"
        yield f"data: {json.dumps(error_body(err))}\n\n"
    finally:
        srv.finish(rec)


async def _collect(rec: RequestRecord, req: CompletionRequest, deltas: AsyncIterator[Any]) -> Completion:
    text: list[list[str]] = [[] for _ in range(req.n)]  # parts, joined once: += on a list item copies
    finish: list[str | None] = [None] * req.n
    lps: list[list[TokenLogprob]] = [[] for _ in range(req.n)]
    async for d in deltas:
        if d is not None:
            text[d.index].append(d.text)
            lps[d.index] += d.logprobs
            finish[d.index] = d.finish_reason or finish[d.index]
    choices = [
        CompletionChoice(
            index=i,
            text="".join(text[i]),
            finish_reason=finish[i],
            logprobs=_logprobs(lps[i], req.logprobs or 0) if req.logprobs is not None else None,
        )
        for i in range(req.n)
    ]
    usage = make_usage(rec.prompt_tokens, rec.completion_tokens, rec.reasoning_tokens)
    return Completion(id=rec.request_id, model=rec.model, choices=choices, usage=usage)


def _prepare(
    engine: Engine, req: CompletionRequest, max_output_length: int | None
) -> tuple[str, list[int], dict]:
    """Prompt text, token ids and sampling values (a long prompt's in a worker thread: tokenizing blocks)."""
    if isinstance(req.prompt, str):
        prompt, ids = req.prompt, engine.encode(req.prompt, add_special_tokens=True)
    else:
        vocab = engine.vocab_size()
        if any(not 0 <= t < vocab for t in req.prompt):
            raise BadRequestError(f"prompt token ids must lie in [0, {vocab})", param="prompt")
        prompt, ids = engine.decode(req.prompt), list(req.prompt)
    limits = Limits(engine.limits.max_model_len, engine.defaults.get("max_tokens"), max_output_length)
    values = sampling_values(
        req, prompt_tokens=len(ids), limits=limits, defaults=engine.defaults, vocab_size=engine.vocab_size()
    )
    return prompt, ids, values


@router.post(ENDPOINT, response_model=None, responses=route_responses(Completion, stream=True))
async def completions(req: CompletionRequest, request: Request) -> Response | Completion:
    srv = request.app.state.host.require_server()
    srv.check_model(req.model)
    if req.echo:
        raise BadRequestError("echo is not supported", param="echo")
    srv.precheck()
    prompt, ids, values = await srv.prepare(
        await request_chars(request), _prepare, srv.engine, req, srv.settings.max_output_length
    )
    params = srv.engine.sampling_params(values)
    rec = RequestRecord(
        ENDPOINT,
        srv.settings.model_name,
        len(ids),
        request_id=new_request_id("cmpl"),
        arrival=arrival_of(request),
        prompt=prompt if srv.settings.log_prompts else None,
    )
    srv.admit(rec)
    deltas = _deltas(srv, rec, prompt, ids, params)
    if req.stream:
        return EventStream(_stream(srv, rec, req, deltas), srv, rec)
    return await collect_response(srv, rec, request, _collect(rec, req, deltas), deltas)
