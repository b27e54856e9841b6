"""One exception tree for the server and one handler that gives OpenAI's error shape.

`{"error": {"message", "type", "param", "code"}}` with the HTTP status of the class. Routers count 401,
404 and 5xx against a provider's uptime and 429 apart, so a 5xx means a real server fault only: bad
input is 400, a full queue 429, draining 503 (the process is going away: a real unavailability).
Unexpected exceptions become a 500 whose message never echoes internals. After a stream has begun the
status line is gone, so `error_body` is sent as an SSE `data: {"error": ...}` frame instead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("chimera_serve.errors")
access_log = logging.getLogger("chimera_serve.access")


class ServeError(Exception):
    """Base of every error the server answers with; subclasses fix status and OpenAI `type`."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def headers(self) -> dict[str, str]:
        return {}


class BadRequestError(ServeError):
    status, type = 400, "invalid_request_error"


class ContextLengthError(BadRequestError):
    code = "context_length_exceeded"


class AuthenticationError(ServeError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class NotFoundError(ServeError):
    status, type, code = 404, "not_found_error", "model_not_found"


class PayloadTooLargeError(ServeError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class OverloadedError(ServeError):
    """The bounded queue is full; clients retry after `retry_after_s`."""

    status, type, code = 429, "rate_limit_error", "queue_full"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class UnavailableError(ServeError):
    """The replica cannot serve now (loading, draining, engine gone): routers retry elsewhere."""

    status, type, code = 503, "service_unavailable", "draining"

    def __init__(self, message: str, *, code: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s else {}


class RequestTimeoutError(ServeError):
    status, type, code = 504, "timeout", "request_timeout"


class EngineError(ServeError):
    """The engine failed while serving a request (a real server fault)."""

    status, type, code = 500, "server_error", "engine_error"


def error_body(exc: ServeError) -> dict[str, Any]:
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}


def first_line(exc: BaseException, default: str) -> str:
    """The first line of an exception's message (engine errors carry long tails), or `default`."""
    text = str(exc)
    return text.splitlines()[0] if text else default


def to_serve_error(exc: BaseException) -> ServeError:
    """Map any exception to the tree; unknown ones become a generic 500 (logged, never echoed)."""
    if isinstance(exc, ServeError):
        return exc
    from chimera_serve import vllm_compat

    if isinstance(exc, vllm_compat.client_error_types()):  # the engine refused the request's values
        return BadRequestError(first_line(exc, "invalid request"))
    dead = vllm_compat.engine_dead_type()
    if dead is not None and isinstance(exc, dead):
        return UnavailableError("the engine stopped; retry on another replica", code="engine_dead")
    log.error("unexpected server error", exc_info=exc)
    return EngineError("internal server error")


def _validation_error(exc: RequestValidationError) -> BadRequestError:
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":  # loc is ("body", <character offset>): not a parameter
        where = first.get("loc", ("body", "?"))[-1]
        reason = (first.get("ctx") or {}).get("error", "JSON decode error")
        return BadRequestError(f"the request body is not valid JSON ({reason} at character {where})")
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid request").removeprefix("Value error, ")
    return BadRequestError(f"{param}: {msg}" if param else msg, param=param)


def error_response(metrics: Any, path: str, err: ServeError) -> JSONResponse:
    """The JSON error response; a request refused before admission is counted and logged here (admitted ones
    were counted when they finished, and carry `counted`)."""
    if metrics is not None and not getattr(err, "counted", False):
        metrics.request_rejected(endpoint=path, status=err.status)
        access_log.info(
            json.dumps({"event": "rejected", "endpoint": path, "status": err.status, "error": err.type})
        )
    return JSONResponse(error_body(err), status_code=err.status, headers=err.headers())


class ServeRoute(APIRoute):
    """A route whose unexpected exceptions become a `ServeError` before they leave it: answered by the
    `ServeError` handler and logged once (an `Exception` handler answers from Starlette's outermost
    middleware, which re-raises, so the server would log the traceback a second time)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except (ServeError, RequestValidationError, StarletteHTTPException):
                raise
            except Exception as e:
                raise to_serve_error(e) from None

        return handle


def install_error_handlers(app: FastAPI) -> None:
    """Register the one handler for the tree, request validation, routing errors and crashes."""

    def respond(request: Request, err: ServeError) -> JSONResponse:
        return error_response(getattr(request.app.state, "metrics", None), request.url.path, err)

    @app.exception_handler(ServeError)
    async def _serve(request: Request, exc: ServeError) -> JSONResponse:
        return respond(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(request, _validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        cls = {404: NotFoundError, 401: AuthenticationError}.get(exc.status_code, BadRequestError)
        err = cls(str(exc.detail), code="not_found" if exc.status_code == 404 else None)
        err.status = exc.status_code
        response = respond(request, err)
        response.headers.update(exc.headers or {})  # e.g. `Allow` on a 405
        return response

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        return respond(request, to_serve_error(exc))
