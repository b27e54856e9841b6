"""The OpenAPI document says what the server really sends: every status of every route, with its body.

FastAPI documents a 422 for each route with a body; this server answers invalid input with 400 in OpenAI's
error shape, so the 422 is replaced, and each route lists the statuses it can send (401 for a missing key,
404 for an unknown model, 413 for a large body, 429 when full, 503 while loading, draining or after the engine
died, 504 on the request timeout, 500 for a fault). Streaming routes document `text/event-stream` beside JSON.
Checked by schemathesis against the running server (tests/serve/test_serve_openapi.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

# Status -> what it means, for the routes under /v1 that run the model.
GENERATION_ERRORS = {
    400: "Invalid request (OpenAI error shape; `param` names the field)",
    401: "Missing or wrong API key",
    404: "The model is not served here",
    413: "The request body is over the server's limit",
    429: "The server is at capacity; retry after `Retry-After` seconds",
    500: "Server fault (never echoes internals)",
    503: "Loading, draining, or the engine stopped; retry on another replica",
    504: "The request timed out",
}
LISTING_ERRORS = {k: GENERATION_ERRORS[k] for k in (401, 500, 503)}


# One server-sent event (OpenAPI 3.2's itemSchema): `data` holds a chunk's JSON, an error's JSON or `[DONE]`.
SSE_EVENT = {
    "type": "object",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"}},
    "required": ["data"],
}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def route_responses(model: type[BaseModel] | None, *, stream: bool = False, listing: bool = False) -> dict:
    """FastAPI `responses=` for a route: its success body (JSON and, if it streams, SSE) and its errors."""
    responses: dict[int | str, Any] = {
        status: {"model": ErrorResponse, "description": text}
        for status, text in (LISTING_ERRORS if listing else GENERATION_ERRORS).items()
    }
    if stream:
        responses[200] = {
            "model": model,
            "description": "The completion; with `stream: true`, server-sent events of chunks, then `[DONE]`",
            "content": {"text/event-stream": {"itemSchema": SSE_EVENT}},
        }
    return responses


def install_openapi(app: FastAPI, api_keys: bool, model_name: str) -> None:
    """Replace FastAPI's document generator: no 422s (never sent), `model` is the one name served here."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for path, ops in doc.get("paths", {}).items():
            for op in ops.values():
                op.get("responses", {}).pop("422", None)
                if api_keys and path.startswith("/v1/"):
                    op["security"] = [{"bearer": []}]
        schemas = doc.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        for name in ("ChatCompletionRequest", "CompletionRequest"):
            schemas[name]["properties"]["model"] = {"type": "string", "enum": [model_name], "title": "Model"}
        if api_keys:
            doc.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
        app.openapi_schema = doc
        return doc

    app.openapi = build  # type: ignore[method-assign]
