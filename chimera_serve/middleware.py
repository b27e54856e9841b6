"""The one piece of ASGI middleware, in front of every `/v1` route: API key, then body size, then the app.

Both checks run before a byte of the body is parsed: an unauthenticated client learns nothing about the
API's validation and costs no JSON parsing, and an oversized body is refused with 413 whether it announced
its length (`Content-Length`) or streamed in chunks. Bodies within the limit are read here whole and handed
to the app unchanged (FastAPI reads them whole anyway); later `receive` calls go to the client, so a
disconnect is still seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from chimera_serve.auth import bearer_matches
from chimera_serve.errors import AuthenticationError, PayloadTooLargeError, ServeError, error_response


class Guard:
    def __init__(self, app: Any, *, keys: tuple[str, ...], max_bytes: int) -> None:
        self.app, self.keys, self.max_bytes = app, keys, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        scope.setdefault("state", {})["arrival"] = time.monotonic()  # TTFT and e2e count from here
        headers = dict(scope.get("headers") or [])
        if self.keys and not bearer_matches(headers.get(b"authorization", b"").decode("latin-1"), self.keys):
            err: ServeError = AuthenticationError(
                "invalid or missing API key: send `Authorization: Bearer <key>`"
            )
            return await self._refuse(scope, receive, send, err)
        too_large = PayloadTooLargeError(
            f"the request body exceeds the server's limit of {self.max_bytes} bytes"
        )
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(scope, receive, send, too_large)
        body, more = bytearray(), True  # bytearray: a body sent in many small chunks is not copied each time
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left while sending: nobody to answer
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._refuse(scope, receive, send, too_large)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope: dict[str, Any], receive: Callable, send: Callable, err: ServeError) -> None:
        metrics = getattr(scope["app"].state, "metrics", None) if "app" in scope else None
        await error_response(metrics, scope["path"], err)(scope, receive, send)
