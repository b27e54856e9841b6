"""GET /health (process alive), GET /ready (engine loaded and accepting), GET /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    srv = getattr(request.app.state, "server", None)
    if srv is None:
        return JSONResponse({"ready": False, "reason": "loading"}, status_code=503)
    if srv.admission.draining:
        return JSONResponse({"ready": False, "reason": "draining"}, status_code=503)
    if not srv.engine.healthy:
        return JSONResponse({"ready": False, "reason": "engine failed"}, status_code=503)
    return JSONResponse(
        {"ready": True, "in_flight": srv.admission.in_flight, "engine_requests": srv.engine.num_unfinished}
    )


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    body, content_type = request.app.state.server.metrics.render()
    return Response(body, media_type=content_type)
