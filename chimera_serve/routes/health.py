"""GET /health (liveness), GET /ready (readiness), GET /metrics (Prometheus); none needs an API key.

Liveness: 200 while the process can serve or is loading (a loading replica must not be restarted), 503
once the engine died or failed to load (the process then exits non-zero within seconds). Readiness: 200
only when requests would be served now; 503 at once while loading, draining or dead.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from chimera_serve.errors import ServeRoute
from chimera_serve.lifecycle import EngineHost

router = APIRouter(route_class=ServeRoute)


class Health(BaseModel):
    status: Literal["ok", "loading", "draining", "dead", "failed"]


class Readiness(BaseModel):
    ready: bool
    reason: str | None = None
    in_flight: int | None = None
    engine_requests: int | None = None


def _host(request: Request) -> EngineHost:
    return request.app.state.host


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
async def health(request: Request) -> JSONResponse:
    host = _host(request)
    phase = host.phase
    if phase in ("ready", "draining") and not host.server.engine.healthy:  # type: ignore[union-attr]
        phase = "dead"  # the watchdog will notice within its period; answer the truth now
    status = "ok" if phase == "ready" else phase
    return JSONResponse({"status": status}, status_code=503 if phase in ("dead", "failed") else 200)


@router.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}})
async def ready(request: Request) -> JSONResponse:
    host = _host(request)
    srv = host.server
    if host.phase != "ready" or srv is None or not srv.engine.healthy:
        reason = "engine failed" if host.phase == "ready" else host.phase
        return JSONResponse({"ready": False, "reason": reason}, status_code=503)
    return JSONResponse(
        {"ready": True, "in_flight": srv.admission.in_flight, "engine_requests": srv.engine.num_unfinished}
    )


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    body, content_type = request.app.state.metrics.render()
    return Response(body, media_type=content_type)
