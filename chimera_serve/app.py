"""The FastAPI app: `create_app(settings)`; the engine is created in the lifespan and kept on app.state.

Also the one piece of ASGI middleware: the request body limit (413), applied before any body is parsed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from chimera_serve.config import ServeSettings
from chimera_serve.engine import Engine
from chimera_serve.errors import PayloadTooLargeError, error_body, install_error_handlers
from chimera_serve.metrics import ServerMetrics
from chimera_serve.routes import chat, completions, health, models
from chimera_serve.serving import Admission, Server

log = logging.getLogger("chimera_serve")


def call_hint(settings: ServeSettings) -> str:
    """How to call this server: a curl line and an openai client line (printed once it is ready)."""
    host = (
        "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    )  # listening on all: call loopback
    url = f"http://{host}:{settings.port}/v1"
    key = "$CHIMERA_API_KEY" if settings.api_keys else "none"
    body = json.dumps(
        {"model": settings.model_name, "messages": [{"role": "user", "content": "What is 27+48?"}]}
    )
    auth = f" -H 'Authorization: Bearer {key}'" if settings.api_keys else ""
    return (
        f"serving {settings.model_name} at {url}; try:\n"
        f"  curl -s {url}/chat/completions -H 'Content-Type: application/json'{auth} -d '{body}'\n"
        f"  python -c \"from openai import OpenAI; c = OpenAI(base_url='{url}', api_key='{key}'); "
        f"print(c.chat.completions.create(model='{settings.model_name}', "
        f"messages=[{{'role': 'user', 'content': 'What is 27+48?'}}]).choices[0].message)\""
    )


class BodyLimit:
    """Refuse bodies over `max_bytes` with 413: by Content-Length at once, else while they stream in."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        err = PayloadTooLargeError(f"the request body exceeds the server's limit of {self.max_bytes} bytes")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            server = getattr(scope["app"].state, "server", None) if "app" in scope else None
            if server is not None:
                server.metrics.request_rejected(endpoint=scope["path"], status=413)
            body = json.dumps(error_body(err)).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 413,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return None
        seen = 0

        async def limited() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise err
            return message

        return await self.app(scope, limited, send)


def create_app(
    settings: ServeSettings, engine_factory: Callable[[ServeSettings], Engine] = Engine.start
) -> FastAPI:
    """The app for `settings`; the engine starts when the app's lifespan starts (uvicorn startup)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.api_keys:
            log.warning("no API key configured: the server is open to anyone who can reach it")
        t0 = time.monotonic()
        engine = engine_factory(settings)
        metrics = ServerMetrics(settings.model_name, window_s=settings.think_window_s)
        capacity = engine.limits.max_num_seqs + settings.max_queued
        app.state.server = Server(settings, engine, metrics, Admission(capacity))
        log.info(
            "engine ready in %.1f s: %s, context %d, max_num_seqs %d, capacity %d",
            time.monotonic() - t0, settings.model_name, engine.limits.max_model_len,
            engine.limits.max_num_seqs, capacity,
        )  # fmt: skip
        log.info("%s", call_hint(settings))
        try:
            yield
        finally:
            engine.shutdown()

    app = FastAPI(title="chimera-serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.started_at = int(time.time())
    install_error_handlers(app)
    for r in (chat.router, completions.router, models.router, health.router):
        app.include_router(r)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app
