"""GET /v1/models: the served model, described the way routers (OpenRouter's provider contract) read it.

Features and sampling parameters are listed only when this engine and model support them: `tools` needs the
DeepSeek tool-call format in the model's tokenizer and template and vLLM's deepseek_v3 parser.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from chimera_serve.engine import EngineFeatures
from chimera_serve.errors import ServeRoute
from chimera_serve.openapi import route_responses
from chimera_serve.protocol import ModelCard, ModelList, ModelPricing

router = APIRouter(route_class=ServeRoute)

SAMPLING = [
    "temperature", "top_p", "top_k", "min_p", "stop", "seed", "presence_penalty", "frequency_penalty",
    "repetition_penalty", "logit_bias", "max_tokens", "logprobs", "top_logprobs", "response_format",
    "structured_outputs", "reasoning", "include_reasoning",
]  # fmt: skip
FEATURES = ["json_mode", "structured_outputs", "logprobs"]


def advertised(features: EngineFeatures, thinks: bool) -> tuple[list[str], list[str]]:
    """(supported_sampling_parameters, supported_features) for this engine and model."""
    sampling, supported = list(SAMPLING), list(FEATURES)
    if thinks:
        supported += ["reasoning", "include_reasoning"]
    if features.tools:
        sampling += ["tools", "tool_choice", "parallel_tool_calls"]
        supported.append("tools")
    return sampling, supported


@router.get("/v1/models", responses=route_responses(None, listing=True))
async def list_models(request: Request) -> ModelList:
    srv = request.app.state.host.require_server()
    s = srv.settings
    ctx = srv.engine.limits.max_model_len
    sampling, features = advertised(srv.engine.features, srv.engine.thinks)
    card = ModelCard(
        id=s.model_name,
        created=request.app.state.started_at,
        hugging_face_id=s.hugging_face_id,
        name=s.model_name,
        quantization=s.quantization(),
        context_length=ctx,
        max_output_length=min(s.max_output_length or ctx, ctx),
        max_model_len=ctx,
        pricing=ModelPricing(prompt=s.pricing.prompt, completion=s.pricing.completion),
        supported_sampling_parameters=sampling,
        supported_features=features,
    )
    return ModelList(data=[card])
