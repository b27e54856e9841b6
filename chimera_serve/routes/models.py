"""GET /v1/models: the served model, described the way routers (OpenRouter's provider contract) read it."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from chimera_serve.auth import require_api_key
from chimera_serve.protocol import SUPPORTED_FEATURES, SUPPORTED_SAMPLING, ModelCard, ModelList, ModelPricing
from chimera_serve.serving import Server

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    srv: Server = request.app.state.server
    s = srv.settings
    ctx = srv.engine.limits.max_model_len
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
        supported_sampling_parameters=SUPPORTED_SAMPLING,
        supported_features=SUPPORTED_FEATURES,
    )
    return ModelList(data=[card])
