"""A chat template that opens `<think>` in the prompt (R1 / V3.1 style): the tests that need one.

The demo child's template leaves `<think>` to the model; here a tiny random model whose template writes
`<think>\\n` (or `</think>` with thinking=False) gets its own server, and the session's template-dependent tests
run against it (pytest resolves `server` to this module's fixture).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import RunningServer, running_server
from test_serve_api import (  # noqa: F401  (fixtures and tests collected again, against this module's server)
    oai,
    test_chat_applies_generation_config_default,
    test_chat_non_streaming_fields,
    test_metrics_move_by_what_responses_said,
    test_thinking_disabled_is_all_content,
)
from tiny_model import write_tiny_model

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    model = write_tiny_model(tmp_path_factory.mktemp("tiny-model"))
    with running_server(model, tmp_path_factory.mktemp("tiny-log"), tiny=True) as srv:
        yield srv
