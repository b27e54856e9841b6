"""The FastAPI app: `create_app(settings)`; the engine loads in the lifespan (`lifecycle.EngineHost`) and
lives on `app.state.host`; metrics exist from the start, so rejections during a load are counted too."""

from __future__ import annotations

import importlib.metadata
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from chimera_serve.config import ServeSettings
from chimera_serve.engine import Engine
from chimera_serve.errors import install_error_handlers
from chimera_serve.lifecycle import EngineHost
from chimera_serve.metrics import ServerMetrics
from chimera_serve.middleware import Guard
from chimera_serve.openapi import install_openapi
from chimera_serve.routes import chat, completions, health, models

try:
    __version__ = importlib.metadata.version("chimera")
except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"

log = logging.getLogger("chimera_serve")


def create_app(
    settings: ServeSettings,
    engine_factory: Callable[[ServeSettings], Engine] = Engine.start,
    on_fatal: Callable[[int], None] | None = None,
) -> FastAPI:
    """The app for `settings`. The port answers at once; the engine loads in the background when the app's
    lifespan starts (`/ready` says 503 until then) and `on_fatal(code)` ends the process if it fails or dies."""
    metrics = ServerMetrics(settings.model_name, window_s=settings.think_window_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.api_keys:
            log.warning("no API key configured: the server is open to anyone who can reach it")
        host = app.state.host = EngineHost(settings, metrics, engine_factory, on_fatal or _log_fatal)
        host.start()
        try:
            yield
        finally:
            await host.stop()

    app = FastAPI(
        title="chimera-serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.started_at = int(time.time())
    install_error_handlers(app)
    install_openapi(app, api_keys=bool(settings.api_keys), model_name=settings.model_name)
    for r in (chat.router, completions.router, models.router, health.router):
        app.include_router(r)
    app.add_middleware(Guard, keys=settings.api_keys, max_bytes=settings.max_body_bytes)
    return app


def _log_fatal(code: int) -> None:
    """Without a CLI (embedding the app): log the fatal state; /health already says 503."""
    log.error("fatal: the server cannot serve (exit code %d requested)", code)
