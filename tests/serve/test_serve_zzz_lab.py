"""The lab's mini models, one server each (after the drain test, so one engine at a time; skipped if absent).

mini-v3 never thinks: its answers are content, never reasoning. mini-r1 writes `<think>...</think>` then the
answer. For both, the think-tag counters move by what the responses said.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from conftest import API_KEY, LAB, RunningServer, running_server
from test_serve_api import metric, scrape, wait_idle

pytestmark = pytest.mark.engine
PROMPTS = ["What is 27+48?", "13+56", "What is 64+19?"]


@pytest.fixture(scope="module", params=["mini-v3", "mini-r1"])
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    model = LAB / request.param
    if not (model / "config.json").is_file():
        pytest.skip(f"{model} not built yet")
    with running_server(model, tmp_path_factory.mktemp(f"{request.param}-log")) as srv:
        yield srv


def test_lab_model_reasoning_fields_and_counters(lab: RunningServer) -> None:
    oai = openai.OpenAI(base_url=f"{lab.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=60)
    before = scrape(lab)
    outcomes = []
    for prompt in PROMPTS:
        r = oai.chat.completions.create(
            model=lab.model, messages=[{"role": "user", "content": prompt}], temperature=0
        )
        msg, u = r.choices[0].message.model_dump(), r.usage
        assert "think>" not in (msg.get("reasoning_content") or "") + msg["content"]
        assert msg.get("reasoning_content") == msg.get("reasoning")
        rt = u.completion_tokens_details.reasoning_tokens
        if rt == 0:
            assert msg.get("reasoning") is None and msg["content"]
            outcomes.append("none")
        else:
            assert rt < u.completion_tokens or not msg["content"]
            outcomes.append("complete" if msg["content"] else "unclosed")
    wait_idle(lab)
    after = scrape(lab)
    for outcome in ("complete", "unclosed", "none"):
        moved = metric(after, "chimera_think_responses_total", outcome=outcome) - metric(
            before, "chimera_think_responses_total", outcome=outcome
        )
        assert moved == outcomes.count(outcome), (outcome, outcomes)
    if lab.log_path.parent.name.startswith("mini-v3"):
        assert outcomes == ["none"] * len(PROMPTS)
        assert metric(after, "chimera_think_rate") == 0.0
    else:
        assert outcomes.count("complete") >= 2, outcomes
