"""One admitted request's life: admission, the engine stream, timing, metrics and its log line.

Admission is a counter, not a queue of our own: up to `max_num_seqs` requests run and up to `max_queued`
more wait in vLLM's scheduler; beyond that a request gets 429 with `Retry-After`, and while draining 503.
While a request is queued, its first delta is awaited as a task with `asyncio.wait` (which never cancels
it), yielding a `None` every `keepalive_interval_s` for SSE `: PROCESSING` comments; after that the
engine's iterator is read directly, with nothing in between. The request timeout aborts the request in
the engine (its stream then ends). Every layer of a request's pipeline closes the iterator it reads in its
`finally`, so a client that leaves (or an error) aborts the engine request at once, not at garbage
collection. The record of a request keeps whether it still counts as queued, so a request that ends before
its first token, however it ends, leaves the queued gauge where it was.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from chimera_serve.config import ServeSettings
from chimera_serve.engine import Delta, Engine
from chimera_serve.errors import (
    NotFoundError,
    OverloadedError,
    RequestTimeoutError,
    ServeError,
    UnavailableError,
    to_serve_error,
)
from chimera_serve.metrics import ServerMetrics
from chimera_serve.reasoning import ThinkOutcome

access_log = logging.getLogger("chimera_serve.access")
T = TypeVar("T")


class Admission:
    """Counts admitted requests against `capacity`; refuses all while draining."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_flight = 0
        self.draining = False

    def check(self) -> None:
        """Raise the 503 or 429 that `enter` would, without entering."""
        if self.draining:
            raise UnavailableError("the server is shutting down; retry on another replica")
        if self.in_flight >= self.capacity:
            raise OverloadedError(f"the server is at capacity ({self.capacity} requests); retry shortly")

    def enter(self) -> None:
        self.check()
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1


def new_request_id(prefix: str) -> str:
    """OpenAI's form: `chatcmpl-...` for chat completions, `cmpl-...` for completions."""
    return f"{prefix}-{uuid.uuid4().hex}"


@dataclass
class RequestRecord:
    """Per-request facts for metrics and the log line (never shared between requests)."""

    endpoint: str
    model: str
    prompt_tokens: int
    request_id: str = field(default_factory=lambda: new_request_id("chatcmpl"))
    arrival: float = field(default_factory=time.monotonic)
    status: int = 200
    finish_reason: str | None = None
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    outcome: ThinkOutcome | None = None
    ttft_s: float | None = None
    prompt: str | None = None
    output: str | None = None
    finished: bool = False
    queued: bool = False  # admitted, no output yet: counted in chimera_requests_queued
    shut_down: bool = False  # aborted by the end of a drain: its client gets a clean 503 error


# Prompts longer than this (characters of the request body) are rendered and tokenized off the event loop.
OFFLOAD_CHARS = 16_384


@dataclass
class Server:
    """Everything a route needs, kept on the app's `EngineHost`."""

    settings: ServeSettings
    engine: Engine
    metrics: ServerMetrics
    admission: Admission
    records: dict[str, RequestRecord] = field(default_factory=dict)  # admitted and not finished
    # One thread, not a pool: Python threads that compete for the GIL starve the event loop (each waiting
    # thread costs the loop up to a 5 ms switch interval), which on an H200 at 128 concurrent streams added
    # ~1.3 s to every request's time to first token. One worker keeps the loop's wait under one interval.
    _prep: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "prepare"), repr=False)

    async def prepare(self, size_chars: int, fn: Callable[..., T], *args: Any) -> T:
        """Run a request's prompt rendering and tokenization: inline when short (a thread hop costs more than
        the work), in the worker thread when long (a long prompt must not stall every stream)."""
        if size_chars < OFFLOAD_CHARS:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._prep, fn, *args)

    def precheck(self) -> None:
        """Refuse at once (429 / 503) a request that could not be admitted now, before its prompt is prepared:
        under a 429 storm, rendering and tokenizing prompts only to refuse them would take the loop's time."""
        self.admission.check()

    def admit(self, rec: RequestRecord) -> None:
        """Count `rec` in (429 / 503 when it cannot be: the error handler counts and logs those)."""
        self.admission.enter()
        self.records[rec.request_id] = rec
        self.metrics.request_started()
        rec.queued = True
        self.metrics.queued(1)

    def _dequeue(self, rec: RequestRecord) -> None:
        if rec.queued:
            rec.queued = False
            self.metrics.queued(-1)

    def _stopped(self, rec: RequestRecord, timed_out: bool) -> ServeError | None:
        """The error an engine stream that ended by our own abort must surface, if any."""
        if timed_out:
            rec.finish_reason = "timeout"
            return RequestTimeoutError(f"request exceeded the {self.settings.request_timeout_s:g} s timeout")
        if rec.shut_down:
            rec.finish_reason = "abort"
            return UnavailableError(
                "the server shut down before this request finished; retry on another replica"
            )
        return None

    async def generate(
        self, rec: RequestRecord, prompt_ids: list[int], params: Any
    ) -> AsyncIterator[Delta | None]:
        """Engine deltas for an admitted request; `None` = still queued (keepalive tick).

        Enforces the request timeout; the caller must call `finish(rec)` once, after this ends.
        """
        loop = asyncio.get_running_loop()
        stream = self.engine.generate(rec.request_id, prompt_ids, params)
        timed_out = False

        def on_timeout() -> None:  # abort in the engine: its stream then ends with finish_reason "abort"
            nonlocal timed_out
            timed_out = True
            aborts.add(asyncio.ensure_future(self.engine.abort(rec.request_id)))

        aborts: set[asyncio.Future[None]] = set()
        timer = loop.call_later(self.settings.request_timeout_s, on_timeout)
        first = asyncio.ensure_future(stream.__anext__())
        last = None
        unfinished = getattr(params, "n", 1)  # choices still running: once 0, a late abort changes nothing
        try:
            # 1. Queued: wait for the first delta a keepalive tick at a time (asyncio.wait never cancels it).
            while not (await asyncio.wait({first}, timeout=self.settings.keepalive_interval_s))[0]:
                yield None
            item = first.result()
            # 2. Streaming: the engine's iterator directly, nothing in between (every hop costs throughput).
            while True:
                stopped = self._stopped(rec, timed_out)
                if stopped is not None:
                    raise stopped
                now = time.monotonic()
                if last is None:
                    rec.ttft_s = now - rec.arrival
                    self._dequeue(rec)
                    self.metrics.record_first_token(rec.ttft_s)
                self.metrics.record_tokens(item.num_tokens, None if last is None else now - last)
                last = now
                rec.completion_tokens += item.num_tokens
                if item.finish_reason is not None:
                    unfinished -= 1
                    if unfinished == 0:  # complete: a timeout or drain from now on must not spoil it
                        timer.cancel()
                yield item
                item = await stream.__anext__()
        except StopAsyncIteration:
            stopped = self._stopped(rec, timed_out) if unfinished > 0 else None
            if stopped is not None:
                raise stopped from None
            return
        except (ServeError, asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as e:
            raise to_serve_error(e) from None
        finally:
            timer.cancel()
            self._dequeue(rec)
            if not first.done():
                first.cancel()
                await asyncio.wait({first})  # unlike gather, a cancel of ours does not cut vLLM's abort short
            await stream.aclose()

    def finish(self, rec: RequestRecord) -> None:
        """Account an admitted request once (later calls do nothing): admission slot, metrics, log line."""
        if rec.finished:
            return
        rec.finished = True
        self._dequeue(rec)
        self.records.pop(rec.request_id, None)
        if rec.status != 200:  # errors and disconnects leave the think-tag counters alone
            rec.outcome = None
        self.admission.leave()
        e2e = time.monotonic() - rec.arrival
        self.metrics.request_finished(
            endpoint=rec.endpoint,
            status=rec.status,
            finish_reason=rec.finish_reason,
            prompt_tokens=rec.prompt_tokens,
            completion_tokens=rec.completion_tokens,
            reasoning_tokens=rec.reasoning_tokens,
            outcome=rec.outcome,
            e2e_s=e2e,
        )
        line = {k: v for k, v in vars(rec).items() if k not in ("arrival", "finished", "queued", "shut_down")}
        if not self.settings.log_prompts:
            line.pop("prompt")
            line.pop("output")
        line.update(event="request", e2e_s=round(e2e, 4), ttft_s=rec.ttft_s and round(rec.ttft_s, 4))
        access_log.info(json.dumps(line, ensure_ascii=False))

    async def shut_down_in_flight(self) -> int:
        """End of a drain's grace: abort every request still running; each client gets a clean 503 error."""
        recs = list(self.records.values())
        for rec in recs:
            rec.shut_down = True
        await asyncio.gather(*(self.engine.abort(r.request_id) for r in recs), return_exceptions=True)
        return len(recs)

    def close(self) -> None:
        self._prep.shutdown(wait=False, cancel_futures=True)
        self.engine.shutdown()

    def check_model(self, model: str) -> None:
        if model != self.settings.model_name:
            raise NotFoundError(
                f"model {model!r} is not served here; this server serves {self.settings.model_name!r}",
                param="model",
            )


def arrival_of(request: Request) -> float:
    """When the request came in (stamped by the Guard before its body was read), for TTFT and e2e."""
    return request.scope.get("state", {}).get("arrival") or time.monotonic()


async def request_chars(request: Any) -> int:
    """The request body's size (already read: a chunked body has no Content-Length), as the measure of how
    long preparing its prompt takes."""
    return len(await request.body())


class EventStream(StreamingResponse):
    """SSE response that accounts its request even if the client left before the body generator started
    (a generator closed before its first step never runs its own `finally`)."""

    def __init__(self, body: AsyncGenerator[bytes | str, None], server: Server, rec: RequestRecord) -> None:
        super().__init__(
            body,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._server, self._rec, self._body = server, rec, body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._body.aclose()
            if not self._rec.finished:
                self._rec.status, self._rec.finish_reason = 499, "abort"
                self._server.finish(self._rec)


async def collect_response(
    srv: Server,
    rec: RequestRecord,
    request: Any,
    collect: Coroutine[Any, Any, T],
    source: AsyncGenerator[Any, None],
) -> T | Response:
    """A non-streaming request: run its collector over `source`, cancel it if the client leaves, and
    account the request once however it ends (errors re-raised as ServeError for the one handler)."""
    work = asyncio.ensure_future(collect)
    watcher = asyncio.ensure_future(watch_disconnect(request, work))
    try:
        return await work
    except asyncio.CancelledError:
        rec.status, rec.finish_reason = 499, "abort"
        if asyncio.current_task().cancelling():  # type: ignore[union-attr]  # we are being cancelled
            raise
        return Response(status_code=499)  # the client left; nobody reads this
    except Exception as e:
        err = to_serve_error(e)
        rec.status, rec.finish_reason = err.status, rec.finish_reason or "error"
        err.counted = True  # type: ignore[attr-defined]
        raise err from None
    finally:
        watcher.cancel()
        await source.aclose()
        srv.finish(rec)


async def watch_disconnect(request: Request, work: asyncio.Task[Any]) -> None:
    """Cancel `work` when the HTTP client goes away (non-streaming requests): the server's next message on
    a request whose body was read is the disconnect, so waiting for it costs nothing (as vLLM's server)."""
    while not work.done():
        message = await request.receive()
        if message["type"] == "http.disconnect":
            work.cancel()
            return
