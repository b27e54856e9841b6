"""The replica's life: loading -> ready -> (draining) -> stopped, or dead when the engine dies.

The HTTP port answers from the first second: the model loads in a background thread (a 671B child takes
minutes), so `/health` says "loading" (200: the process is alive) and `/ready` says 503 at once instead of
hanging until the load ends. A watchdog polls the engine; when its processes die, `/health` turns 503, requests
in flight end with clean errors, and after `DEAD_EXIT_S` the process exits non-zero so an orchestrator
restarts it. A failed load ends the process the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

from chimera_serve import vllm_compat as compat
from chimera_serve.config import ServeSettings
from chimera_serve.engine import Engine
from chimera_serve.errors import UnavailableError
from chimera_serve.metrics import ServerMetrics
from chimera_serve.serving import Admission, Server

log = logging.getLogger("chimera_serve")
Phase = Literal["loading", "ready", "draining", "dead", "failed"]
WATCH_EVERY_S = 0.5
DEAD_EXIT_S = 2.0  # time for in-flight requests to send their error frames before the process exits


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


def describe(exc: BaseException) -> str:
    """One line for an engine start failure (vLLM's own traceback is already in the log above it)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}".rstrip(": ")


class EngineHost:
    """Owns the engine and the `Server` built on it; `on_fatal(code)` ends the process."""

    def __init__(
        self,
        settings: ServeSettings,
        metrics: ServerMetrics,
        factory: Callable[[ServeSettings], Engine],
        on_fatal: Callable[[int], None],
    ) -> None:
        self.settings, self.metrics = settings, metrics
        self._factory, self._on_fatal = factory, on_fatal
        self.server: Server | None = None
        self.failure: str | None = None
        self._dead = False
        self._engine: Engine | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def phase(self) -> Phase:
        if self.failure is not None:
            return "failed"
        if self._dead:
            return "dead"
        if self.server is None:
            return "loading"
        return "draining" if self.server.admission.draining else "ready"

    def require_server(self) -> Server:
        """The server, or a 503 that says why there is none (loading, failed, dead)."""
        if self.server is not None and not self._dead:
            return self.server
        if self.phase == "loading":
            raise UnavailableError(
                "the model is still loading; retry shortly", code="loading", retry_after_s=5
            )
        raise UnavailableError("the engine is not running; retry on another replica", code="engine_dead")

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._load()))

    async def _load(self) -> None:
        t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Engine] = loop.create_future()

        def deliver(engine: Engine) -> None:
            if done.done():  # the host stopped while the model loaded: nobody will serve this engine
                engine.shutdown()
            else:
                done.set_result(engine)

        def load() -> None:  # a daemon thread: a SIGTERM during a long load must not wait for it
            try:
                engine = self._factory(self.settings)
            except BaseException as e:  # every failure ends the process with one line
                failed = e if isinstance(e, Exception) else RuntimeError(f"{type(e).__name__}: {e}")
                with contextlib.suppress(RuntimeError):  # the loop is closed: the server is gone already
                    loop.call_soon_threadsafe(lambda: done.done() or done.set_exception(failed))
                return
            try:
                loop.call_soon_threadsafe(deliver, engine)
            except RuntimeError:  # the loop is closed
                engine.shutdown()

        threading.Thread(target=load, name="engine-load", daemon=True).start()
        try:
            engine = self._engine = await done
        except Exception as e:
            self.failure = describe(e)
            log.error("the engine failed to start: %s", self.failure)
            self._on_fatal(1)
            return
        s = self.settings
        if s.model_thinks == "auto":
            try:
                engine.thinks = await engine.probe_thinks()
            except Exception as e:  # an engine that cannot answer a probe will not serve either
                self.failure = describe(e)
                log.error("the engine failed its first requests: %s", self.failure)
                self._on_fatal(1)
                return
        capacity = engine.limits.max_num_seqs + (
            s.max_queued if s.max_queued is not None else engine.limits.max_num_seqs
        )
        # As vLLM's own server does after start-up: the millions of objects vLLM, torch and transformers
        # allocated stay out of every later full collection (each one would pause all streams for a while).
        # Before the first request is admitted, so no request waits behind this one long collection.
        gc.collect()
        gc.freeze()
        self.server = Server(s, engine, self.metrics, Admission(capacity))
        log.info(
            "engine ready in %.1f s: %s on vLLM %s, context %d, max_num_seqs %d, capacity %d, tools %s, thinks %s",
            time.monotonic() - t0, s.model_name, engine.features.vllm_version, engine.limits.max_model_len,
            engine.limits.max_num_seqs, capacity, "on" if engine.features.tools else "off",
            "yes" if engine.thinks else "no",
        )  # fmt: skip
        log.info("%s", call_hint(s))
        self._tasks.append(asyncio.create_task(self._watch(engine)))
        self._tasks.append(asyncio.create_task(self._log_stats(engine)))

    async def _log_stats(self, engine: Engine) -> None:
        """vLLM's periodic engine log line (throughput, KV-cache use, MTP acceptance), as its own server runs
        it: vLLM's logging stat logger accumulates per-step figures until they are logged (MTP's per step)."""
        while True:
            await asyncio.sleep(compat.log_stats_interval_s())
            await engine.log_stats()

    async def _watch(self, engine: Engine) -> None:
        while engine.healthy:
            await asyncio.sleep(WATCH_EVERY_S)
        self._dead = True
        log.error("the engine died; failing requests in flight and exiting")
        await asyncio.sleep(DEAD_EXIT_S)
        self._on_fatal(1)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.server is not None:
            self.server.close()
        elif self._engine is not None:  # stopped during the start-up probe: the engine runs, with no server
            self._engine.shutdown()
