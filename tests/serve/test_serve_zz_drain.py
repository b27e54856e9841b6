"""SIGTERM drains: a stream in flight finishes, /ready turns false, new requests get 503, then exit 0.

Runs last against the session server (file name) because it stops it. The grace running out on a long stream
is tested on the tiny model's server (test_serve_zzz_template.py), whose context allows a longer one.
"""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest
from conftest import API_KEY, RunningServer

pytestmark = pytest.mark.engine


def stream_lines(server: RunningServer, body: dict, lines: list[str], started: threading.Event) -> None:
    """Read one SSE stream into `lines` (comments dropped); sets `started` at the first data line."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.stream(
        "POST", f"{server.base_url}/v1/chat/completions", json=body, headers=headers, timeout=120
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                started.set()
                lines.append(line)


def test_sigterm_drains_in_flight_stream(server: RunningServer) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = {"model": server.model, "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "max_tokens": 180, "ignore_eos": True}  # fmt: skip
    lines: list[str] = []
    started = threading.Event()
    t = threading.Thread(target=stream_lines, args=(server, body, lines, started))
    t.start()
    assert started.wait(60)
    server.proc.send_signal(signal.SIGTERM)
    # The stream runs for seconds (180 tokens); once it ends the server exits and the port closes, so the
    # checks below must land while it still runs: poll /ready instead of sleeping a guessed time.
    deadline = time.monotonic() + 5
    while (ready := httpx.get(f"{server.base_url}/ready", timeout=5)).status_code == 200:
        assert time.monotonic() < deadline, "SIGTERM did not turn /ready to 503 within 5 s"
        time.sleep(0.05)
    new = httpx.post(
        f"{server.base_url}/v1/chat/completions", json={**body, "stream": False}, headers=headers, timeout=5
    )
    assert lines[-1] != "data: [DONE]", "the stream ended before the checks; they did not test draining"
    t.join(120)
    assert ready.status_code == 503 and ready.json()["ready"] is False
    assert new.status_code == 503 and new.json()["error"]["type"] == "service_unavailable"
    assert lines[-1] == "data: [DONE]"  # the in-flight stream finished
    assert '"finish_reason":"length"' in lines[-2]
    assert server.proc.wait(60) == 0
