"""The lab's mini models, one server each (after the drain test, so one engine at a time; skipped if absent).

mini-v3 never thinks: its answers are content, never reasoning. mini-r1 writes `<think>...</think>` then the
answer. For both, the think-tag counters move by what the responses said.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import psutil
import pytest
from conftest import API_KEY, LAB, RunningServer, running_server
from test_serve_api import metric, scrape, wait_idle
from test_serve_zz_drain import stream_lines

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
    oai = openai.OpenAI(base_url=f"{lab.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=180)
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


def test_json_mode_on_both_kinds_of_model(lab: RunningServer) -> None:
    """mini-v3 answers at once: its JSON is constrained from the first token, as before. mini-r1 thinks first:
    the reasoning stays free and only the answer is JSON."""
    oai = openai.OpenAI(base_url=f"{lab.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=180)
    r = oai.chat.completions.create(
        model=lab.model, messages=[{"role": "user", "content": "What is 27+48?"}], temperature=0, max_tokens=80,
        response_format={"type": "json_object"},
    )  # fmt: skip
    msg = r.choices[0].message.model_dump()
    assert msg["content"].lstrip().startswith("{"), msg
    features = oai.models.list().data[0].model_dump()["supported_features"]
    if lab.log_path.parent.name.startswith("mini-v3"):  # the start-up probe found it does not think
        assert msg.get("reasoning") is None and "reasoning" not in features
    else:
        assert msg["reasoning"] and "=" in msg["reasoning"], msg
        assert "reasoning" in features
    # A schema that cannot compile is a 400 before the stream starts, whether the server or vLLM compiles it.
    bad = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"$ref": "#/nope"}}}
    body = {
        "model": lab.model,
        "messages": [{"role": "user", "content": "1+1"}],
        "stream": True,
        "response_format": bad,
    }
    r = httpx.post(
        f"{lab.base_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert r.status_code == 400 and "cannot be compiled" in r.json()["error"]["message"], r.text


def test_zz_engine_death_fails_requests_cleanly_and_ends_the_process(lab: RunningServer) -> None:
    """Runs last for each lab server (it kills the engine): streams in flight end with an error event,
    /health turns 503 within seconds, and the process exits non-zero so an orchestrator restarts it."""
    body = {"model": lab.model, "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "max_tokens": lab.max_model_len - 40, "ignore_eos": True}  # fmt: skip
    streams: list[list[str]] = [[] for _ in range(2)]
    started = [threading.Event() for _ in streams]
    threads = [
        threading.Thread(target=stream_lines, args=(lab, body, s, e))
        for s, e in zip(streams, started, strict=True)
    ]
    for t in threads:
        t.start()
    assert all(e.wait(60) for e in started)
    engine_procs = psutil.Process(lab.proc.pid).children(recursive=True)
    assert engine_procs
    for p in engine_procs:
        p.kill()
    t0 = time.monotonic()
    while httpx.get(f"{lab.base_url}/health", timeout=5).status_code == 200:
        assert time.monotonic() - t0 < 5, "/health still 200 five seconds after the engine died"
        time.sleep(0.1)
    assert httpx.get(f"{lab.base_url}/ready", timeout=5).status_code == 503
    for t in threads:
        t.join(60)
    for lines in streams:
        last = json.loads(lines[-1].removeprefix("data: "))
        assert "error" in last and last["error"]["code"] == "engine_dead", lines[-2:]
    assert lab.proc.wait(30) == 1
