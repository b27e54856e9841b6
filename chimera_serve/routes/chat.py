"""POST /v1/chat/completions: prepare (off the loop), admit, then stream or collect the same events."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from chimera_serve import chat_events
from chimera_serve.chat_prompt import prepare
from chimera_serve.errors import ServeRoute
from chimera_serve.openapi import route_responses
from chimera_serve.protocol import ChatCompletion, ChatCompletionRequest
from chimera_serve.serving import EventStream, RequestRecord, arrival_of, collect_response, request_chars
from chimera_serve.tools import ToolCallCollector

router = APIRouter(route_class=ServeRoute)
ENDPOINT = "/v1/chat/completions"


@router.post(ENDPOINT, response_model=None, responses=route_responses(ChatCompletion, stream=True))
async def chat_completions(req: ChatCompletionRequest, request: Request) -> Response | ChatCompletion:
    srv = request.app.state.host.require_server()
    srv.check_model(req.model)
    srv.precheck()
    engine = srv.engine
    # 1. Prompt, sampling values, constraint and tool-call parsers (a long prompt's in a worker thread:
    # templates block). Whatever can fail here fails before admission, so it holds no slot.
    plan = await srv.prepare(
        await request_chars(request), prepare, engine, req, srv.settings.max_output_length
    )
    params = engine.sampling_params(plan.values, plan.constraint)
    named = req.tool_choice.function.name if req.tool_mode == "named" else None  # type: ignore[union-attr]
    extract = (
        engine.tool_extractor(
            req.model_dump(mode="json", exclude_none=True, include={"model", "messages", "tools"})
        )
        if req.tool_mode == "auto" and engine.features.tools
        else None
    )
    collectors = [ToolCallCollector(req.tool_mode, extract, named) for _ in range(req.n)]
    # 2. Admission (429 / 503), then the engine.
    rec = RequestRecord(
        ENDPOINT,
        srv.settings.model_name,
        len(plan.ids),
        arrival=arrival_of(request),
        prompt=plan.prompt if srv.settings.log_prompts else None,
    )
    srv.admit(rec)
    pieces = chat_events.events(
        srv, rec, req, plan.ids, params, prompt_opened=plan.prompt_opened, collectors=collectors
    )
    if req.stream:
        return EventStream(chat_events.stream(srv, rec, req, pieces), srv, rec)
    return await collect_response(srv, rec, request, chat_events.collect(rec, req, pieces), pieces)
