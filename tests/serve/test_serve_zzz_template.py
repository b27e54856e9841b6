"""A chat template with a thinking switch (DeepSeek-V3.1's): the tests that need one.

The demo child's template leaves `<think>` to the model; here a tiny random model whose template writes
`</think>` by default and `<think>\\n` with thinking=True gets its own server, and the session's
template-dependent tests run against it (pytest resolves `server` to this module's fixture).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import RunningServer, running_server
from test_serve_api import (  # noqa: F401  (fixtures and tests collected again, against this module's server)
    oai,
    test_chat_applies_generation_config_default,
    test_chat_non_streaming_fields,
    test_metrics_move_by_what_responses_said,
    test_thinking_disabled_is_all_content,
    test_thinking_enabled_opens_a_template_that_defaults_off,
)
from test_serve_hardening import (  # noqa: F401
    test_hidden_reasoning_keeps_the_stream_alive,
    test_streamed_logprobs_cover_every_token,
)
from test_serve_zz_drain import stream_lines
from tiny_model import write_tiny_model

from chimera_serve.cli import ABORT_WAIT_S

pytestmark = pytest.mark.engine
GRACE_S = 2
MSG = [{"role": "user", "content": "What is 27+48?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    model = write_tiny_model(tmp_path_factory.mktemp("tiny-model"))
    log_dir = tmp_path_factory.mktemp("tiny-log")
    with running_server(model, log_dir, "--drain-grace-s", str(GRACE_S), tiny=True) as srv:
        yield srv


def test_zz_drain_grace_over_ends_long_stream_with_a_clean_error(server: RunningServer) -> None:
    """Runs last (it stops this module's server): a stream longer than the grace ends with a 503 error event,
    not a cut connection, and the process exits 0 soon after the grace."""
    body = {"model": server.model, "messages": MSG, "stream": True, "max_tokens": server.max_model_len - 40,
            "ignore_eos": True}  # fmt: skip
    lines: list[str] = []
    started = threading.Event()
    t = threading.Thread(target=stream_lines, args=(server, body, lines, started))
    t.start()
    assert started.wait(60)
    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    t.join(120)
    error = json.loads(lines[-1].removeprefix("data: "))["error"]
    assert error["type"] == "service_unavailable" and "shut down" in error["message"], lines[-3:]
    assert server.proc.wait(60) == 0
    assert time.monotonic() - t0 < GRACE_S + ABORT_WAIT_S + 30  # grace, error frames, engine shutdown
