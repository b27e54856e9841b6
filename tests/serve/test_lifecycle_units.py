"""Units of the server's edges without an engine: the Guard's body handling, and an engine that finishes
loading after the server was told to stop (its processes must not outlive the server)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from chimera_serve.config import ServeSettings
from chimera_serve.lifecycle import EngineHost
from chimera_serve.metrics import ServerMetrics
from chimera_serve.middleware import Guard


def run_guard(messages: list[dict[str, Any]], max_bytes: int = 1 << 20) -> tuple[list, list, dict]:
    """Drive a Guard over one POST whose client sends `messages`; (what the app read, what was sent)."""
    seen: list[dict[str, Any]] = []
    sent: list[dict[str, Any]] = []
    scope = {"type": "http", "path": "/v1/chat/completions", "headers": []}

    async def app(scope: dict, receive: Any, send: Any) -> None:
        seen.append(await receive())

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(Guard(app, keys=(), max_bytes=max_bytes)(scope, receive, send))
    return seen, sent, scope


def test_guard_hands_the_app_the_whole_body_of_many_chunks() -> None:
    chunks = [{"type": "http.request", "body": b"x" * 7, "more_body": True} for _ in range(1000)]
    seen, sent, scope = run_guard([*chunks, {"type": "http.request", "body": b"!", "more_body": False}])
    assert seen == [{"type": "http.request", "body": b"x" * 7000 + b"!", "more_body": False}] and not sent
    assert scope["state"]["arrival"] > 0  # TTFT and e2e count from the Guard


def test_guard_drops_a_request_whose_client_left_mid_upload() -> None:
    seen, sent, _ = run_guard(
        [{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}]
    )
    assert seen == [] and sent == []  # no app call: nobody to answer, nothing to count as a 400


class _Engine:
    shut = False

    def shutdown(self) -> None:
        self.shut = True


def test_an_engine_loaded_after_stop_is_shut_down(tmp_path: Path) -> None:
    release, engine = threading.Event(), _Engine()

    def factory(settings: ServeSettings) -> Any:
        release.wait(10)  # the model is still loading when the server stops
        return engine

    async def main() -> None:
        settings = ServeSettings.model_construct(model=tmp_path, model_thinks="yes")
        host = EngineHost(settings, ServerMetrics("m", window_s=60), factory, on_fatal=lambda code: None)
        host.start()
        await asyncio.sleep(0.05)
        await host.stop()
        release.set()
        for _ in range(100):
            if engine.shut:
                return
            await asyncio.sleep(0.02)

    asyncio.run(main())
    assert engine.shut, "an engine that finished loading after stop() kept running"
