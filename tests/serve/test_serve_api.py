"""The real server over real HTTP: the official `openai` client and raw httpx against one `chimera-serve`."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import openai
import pytest
from conftest import API_KEY, MAX_BODY_BYTES, MAX_NUM_SEQS, MAX_QUEUED, RunningServer

pytestmark = pytest.mark.engine
MSG = [{"role": "user", "content": "What is 27+48?"}]  # the lab models' task: two-digit addition


def long_request(server: RunningServer) -> dict:
    """Parameters of a request that keeps a sequence slot for a while (as long as the context allows)."""
    return {"max_tokens": server.max_model_len - 40, "ignore_eos": True}


@pytest.fixture(scope="module")
def oai(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=180)


def scrape(server: RunningServer) -> dict[str, float]:
    """Every sample of /metrics as {'name{labels}': value}."""
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def metric(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def wait_idle(server: RunningServer, timeout_s: float = 20) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        body = httpx.get(f"{server.base_url}/ready", timeout=5).json()
        if body["in_flight"] == 0 and body["engine_requests"] == 0:
            return body
        if time.monotonic() > deadline:
            pytest.fail(f"server not idle after {timeout_s} s: {body}")
        time.sleep(0.1)


# -- happy paths -------------------------------------------------------------------------------------


def test_models_card(server: RunningServer, oai: openai.OpenAI) -> None:
    body = httpx.get(f"{server.base_url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).json()
    (card,) = body["data"]
    assert card["id"] == server.model == oai.models.list().data[0].id
    assert card["hugging_face_id"] == "chimera/test"
    assert card["context_length"] == server.max_model_len
    assert card["quantization"] == "bf16"
    assert card["pricing"]["prompt"] == "0.0000005" and card["pricing"]["completion"] == "0.000002"
    assert (
        "reasoning" in card["supported_features"] and "temperature" in card["supported_sampling_parameters"]
    )
    assert card["input_modalities"] == ["text"] and card["output_modalities"] == ["text"]


def test_chat_applies_generation_config_default(server: RunningServer, oai: openai.OpenAI) -> None:
    """No max_tokens: the model's generation_config.json (24 for the tiny model), not vLLM's 16."""
    if not server.tiny:
        pytest.skip("the tiny model's generation_config sets max_new_tokens=24")
    r = oai.chat.completions.create(model=server.model, messages=MSG, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 24


def test_chat_non_streaming_fields(server: RunningServer, oai: openai.OpenAI) -> None:
    think = {"reasoning": {"enabled": True}}  # the tiny model's template (V3.1's) then opens <think>
    r = oai.chat.completions.create(
        model=server.model, messages=MSG, max_tokens=12, temperature=0, extra_body=think
    )
    msg = r.choices[0].message.model_dump()
    u = r.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens and 1 <= u.completion_tokens <= 12
    reasoning_tokens = u.completion_tokens_details.reasoning_tokens
    assert 0 <= reasoning_tokens <= u.completion_tokens
    assert msg["reasoning_content"] == msg["reasoning"]  # both conventions, same text
    if server.tiny:  # the template opened <think>: a block cut by max_tokens stays reasoning
        assert reasoning_tokens > 0
        assert "</think>" not in (msg["content"] or "") and "<think>" not in (msg["reasoning"] or "")
    assert r.choices[0].finish_reason in ("stop", "length")


def test_stream_equals_non_stream(server: RunningServer, oai: openai.OpenAI) -> None:
    kw = {"model": server.model, "messages": MSG, "max_tokens": 16, "temperature": 0}
    whole = oai.chat.completions.create(**kw)
    chunks = list(oai.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    reasoning = "".join(
        getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices
    )
    also = "".join(getattr(c.choices[0].delta, "reasoning", None) or "" for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert reasoning == also == (whole.choices[0].message.reasoning_content or "")
    assert content == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason


def test_exclude_reasoning_keeps_token_count(server: RunningServer, oai: openai.OpenAI) -> None:
    kw = {"model": server.model, "messages": MSG, "max_tokens": 10, "temperature": 0}
    full = oai.chat.completions.create(**kw)
    for extra in ({"include_reasoning": False}, {"reasoning": {"exclude": True}}):
        r = oai.chat.completions.create(**kw, extra_body=extra)
        assert r.choices[0].message.model_dump().get("reasoning_content") is None
        assert r.choices[0].message.model_dump().get("reasoning") is None
        assert r.choices[0].message.content == full.choices[0].message.content
        assert r.usage.model_dump() == full.usage.model_dump()


def test_reasoning_budget_caps_the_think_block(server: RunningServer, oai: openai.OpenAI) -> None:
    """`reasoning.max_tokens`: vLLM forces `</think>` past the budget; the answer follows as content."""
    kw = {"model": server.model, "messages": MSG, "max_tokens": 48, "temperature": 0}
    free = oai.chat.completions.create(**kw).usage.completion_tokens_details.reasoning_tokens
    if free <= 6:
        pytest.skip(f"the model reasoned in only {free} tokens: nothing to cap")
    r = oai.chat.completions.create(**kw, extra_body={"reasoning": {"max_tokens": 3}})
    capped = r.usage.completion_tokens_details.reasoning_tokens
    assert 0 < capped <= 3 + 2  # the budget, plus the <think> and </think> tags it counts
    assert r.choices[0].message.model_dump()["reasoning"] is not None


@pytest.mark.parametrize(
    "off",
    [{"reasoning": {"enabled": False}}, {"reasoning": {"effort": "none"}}, {"reasoning_effort": "none"}],
)
def test_thinking_disabled_is_all_content(server: RunningServer, oai: openai.OpenAI, off: dict) -> None:
    """Thinking off: the tiny model's template closes the block; the demo child's template ignores the flag and
    its model opens <think> itself, so the token is banned. Either way no section, not a hidden full-length one."""
    kw = {"model": server.model, "messages": MSG, "temperature": 0, "max_tokens": 24}
    free = oai.chat.completions.create(**kw, extra_body={"reasoning": {"enabled": True}})
    r = oai.chat.completions.create(**kw, extra_body=off)
    assert r.usage.completion_tokens_details.reasoning_tokens == 0
    assert r.choices[0].message.model_dump().get("reasoning_content") is None
    assert "think>" not in r.choices[0].message.content
    if not server.tiny:  # the demo child always reasons when free to
        assert free.usage.completion_tokens_details.reasoning_tokens > 0


def test_thinking_enabled_opens_a_template_that_defaults_off(
    server: RunningServer, oai: openai.OpenAI
) -> None:
    """`enabled: true` / an effort reach the template as thinking=True (V3.1's template defaults to no thinking)."""
    if not server.tiny:
        pytest.skip("needs a template that defaults thinking off")
    kw = {
        "model": server.model,
        "messages": MSG,
        "temperature": 0,
        "max_tokens": 8,
        "extra_body": {"ignore_eos": True},
    }
    default = oai.chat.completions.create(**kw)
    assert default.usage.completion_tokens_details.reasoning_tokens == 0
    for on in ({"enabled": True}, {"effort": "xhigh"}):
        r = oai.chat.completions.create(**{**kw, "extra_body": {"ignore_eos": True, "reasoning": on}})
        assert r.usage.completion_tokens_details.reasoning_tokens > 0  # the prompt opened <think>


def test_json_object_response_format(server: RunningServer, oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(
        model=server.model, messages=MSG, max_tokens=40, temperature=0,
        response_format={"type": "json_object"}, extra_body={"reasoning": {"enabled": False}},
    )  # fmt: skip
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_logprobs(server: RunningServer, oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(
        model=server.model,
        messages=MSG,
        max_tokens=4,
        logprobs=True,
        top_logprobs=2,
        extra_body={"ignore_eos": True},
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 4
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)


def test_completions_endpoint(server: RunningServer, oai: openai.OpenAI) -> None:
    r = oai.completions.create(
        model=server.model, prompt="Hello", max_tokens=5, extra_body={"ignore_eos": True}
    )
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"
    chunks = list(oai.completions.create(model=server.model, prompt="Hello", max_tokens=5, stream=True))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_unknown_fields_ignored(server: RunningServer) -> None:
    with server.client() as c:
        r = c.post(
            "/v1/chat/completions",
            json={
                "model": server.model,
                "messages": MSG,
                "max_tokens": 2,
                "transforms": ["x"],
                "provider": {},
            },
        )
    assert r.status_code == 200


# -- metrics -----------------------------------------------------------------------------------------


def test_metrics_move_by_what_responses_said(server: RunningServer, oai: openai.OpenAI) -> None:
    wait_idle(server)
    before = scrape(server)
    usages, with_reasoning, without = [], 0, 0
    # On the tiny model, `enabled: true` opens <think> in the prompt and `enabled: false` closes it; on the demo
    # child the model decides with thinking on and never opens a section with thinking off.
    on, off = {"reasoning": {"enabled": True}}, {"reasoning": {"enabled": False}}
    for i, extra in enumerate([on, off, on]):
        kw = {"model": server.model, "messages": MSG, "max_tokens": 12 + i, "extra_body": extra}
        if i == 2:
            chunks = list(
                oai.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
            )
            usage, saw = (
                chunks[-1].usage,
                any(getattr(c.choices[0].delta, "reasoning", None) for c in chunks if c.choices),
            )
        else:
            r = oai.chat.completions.create(**kw)
            usage, saw = r.usage, r.choices[0].message.model_dump().get("reasoning") is not None
        usages.append(usage)
        # A section's tokens (its tags included) are reasoning tokens: > 0 exactly when a section opened.
        reasoned = usage.completion_tokens_details.reasoning_tokens > 0
        assert reasoned or not saw
        with_reasoning, without = with_reasoning + reasoned, without + (not reasoned)
    wait_idle(server)
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, model=server.model, **labels) - metric(
            before, name, model=server.model, **labels
        )

    assert delta("chimera_prompt_tokens_total") == sum(u.prompt_tokens for u in usages)
    assert delta("chimera_completion_tokens_total") == sum(u.completion_tokens for u in usages)
    assert delta("chimera_reasoning_tokens_total") == sum(
        u.completion_tokens_details.reasoning_tokens for u in usages
    )
    sections = delta("chimera_think_responses_total", outcome="complete") + delta(
        "chimera_think_responses_total", outcome="unclosed"
    )
    assert (sections, delta("chimera_think_responses_total", outcome="none")) == (with_reasoning, without)
    assert delta("chimera_requests_total", endpoint="/v1/chat/completions", status="200") == 3
    assert metric(after, "chimera_requests_in_flight") == 0 and metric(after, "chimera_requests_queued") == 0
    assert metric(after, "chimera_output_tokens_per_second") > 0
    assert any(k.startswith("vllm:") for k in after)  # vLLM's own metrics are exported too


def test_request_log_line(server: RunningServer, oai: openai.OpenAI) -> None:
    secret = "zebra-violet-42"
    r = oai.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": secret}], max_tokens=3
    )
    wait_idle(server)
    lines = [json.loads(ln) for ln in server.log().splitlines() if ln.startswith("{") and r.id in ln]
    assert len(lines) == 1
    line = lines[0]
    assert line["status"] == 200 and line["completion_tokens"] == r.usage.completion_tokens
    assert line["model"] == server.model and line["e2e_s"] > 0
    assert secret not in server.log()  # no prompts unless --log-prompts


def test_engine_stats_are_logged_periodically(server: RunningServer, oai: openai.OpenAI) -> None:
    """As vLLM's own server: every VLLM_LOG_STATS_INTERVAL (10 s) the engine logs its throughput (and its
    stat logger resets what it gathered, which would otherwise grow with every engine step)."""
    oai.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "1+1"}], max_tokens=8
    )
    deadline = time.monotonic() + 25
    while "Avg generation throughput" not in server.log():
        assert time.monotonic() < deadline, "no engine stats line in 25 s"
        time.sleep(0.5)


# -- errors ------------------------------------------------------------------------------------------


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def test_auth_401(server: RunningServer) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"}, {"Authorization": API_KEY}):
        r = httpx.post(
            f"{server.base_url}/v1/chat/completions",
            json={"model": server.model, "messages": MSG},
            headers=headers,
        )
        assert _error(r, 401)["type"] == "authentication_error"
    assert httpx.get(f"{server.base_url}/health").status_code == 200  # probes need no key


def test_unknown_model_404(server: RunningServer, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="gpt-4", messages=MSG)
    with server.client() as c:
        assert _error(c.get("/v1/nothing"), 404)["type"] == "not_found_error"


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"top_logprobs": 2}, None),
    ],
)
def test_invalid_values_400(server: RunningServer, patch: dict, param: str | None) -> None:
    with server.client() as c:
        err = _error(
            c.post("/v1/chat/completions", json={"model": server.model, "messages": MSG, **patch}), 400
        )
    assert err["type"] == "invalid_request_error"
    if param:
        assert err["param"] == param


def test_prompt_too_long_400_with_numbers(server: RunningServer) -> None:
    long = [{"role": "user", "content": "a " * server.max_model_len}]
    with server.client() as c:
        err = _error(c.post("/v1/chat/completions", json={"model": server.model, "messages": long}), 400)
    numbers = [int(n) for n in re.findall(r"\d+", err["message"])]
    assert server.max_model_len in numbers and any(n > server.max_model_len for n in numbers)
    assert err["code"] == "context_length_exceeded"


def test_body_limit_413(server: RunningServer) -> None:
    big = [{"role": "user", "content": "x" * (MAX_BODY_BYTES + 10)}]
    with server.client() as c:
        assert _error(c.post("/v1/chat/completions", json={"model": server.model, "messages": big}), 413)


# -- queue, keepalive, disconnects -------------------------------------------------------------------


def test_bounded_queue_429_and_keepalive(server: RunningServer) -> None:
    """capacity = max_num_seqs running + max_queued waiting; one more gets 429 with Retry-After."""
    wait_idle(server)
    capacity = MAX_NUM_SEQS + MAX_QUEUED
    body = {"model": server.model, "messages": MSG, "stream": True, **long_request(server)}

    async def run() -> tuple[list[str], httpx.Response]:
        async with httpx.AsyncClient(
            base_url=server.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=180
        ) as c:
            firsts: list[str] = []

            async def hold(i: int) -> None:
                async with c.stream("POST", "/v1/chat/completions", json=body) as r:
                    assert r.status_code == 200
                    async for line in r.aiter_lines():
                        if line:
                            firsts.append(line)
                            await asyncio.sleep(3)  # keep the slot; the queued ones see keepalives
                            return

            tasks = [asyncio.create_task(hold(i)) for i in range(capacity)]
            deadline = time.monotonic() + 30
            while (await c.get("/ready")).json()["in_flight"] < capacity and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            over = await c.post("/v1/chat/completions", json={**body, "stream": False})
            await asyncio.gather(*tasks)
            return firsts, over

    firsts, over = asyncio.run(run())
    err = _error(over, 429)
    assert err["type"] == "rate_limit_error" and int(over.headers["Retry-After"]) >= 1
    assert any(f == ": PROCESSING" for f in firsts), firsts  # queued streams got keepalive comments
    wait_idle(server)  # the clients hung up mid-stream: every engine request was aborted
    rejected = [json.loads(ln) for ln in server.log().splitlines() if '"event": "rejected"' in ln]
    assert any(r["status"] == 429 for r in rejected)  # the access log has the refusal too


def test_stream_disconnect_aborts(server: RunningServer) -> None:
    wait_idle(server)
    body = {"model": server.model, "messages": MSG, "stream": True, **long_request(server)}
    with server.client() as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                request_id = json.loads(line[5:])["id"]
                break
    wait_idle(server)  # the engine's count of requests returns to 0
    samples = scrape(server)
    assert metric(samples, "vllm:num_requests_running") == 0
    assert metric(samples, "chimera_requests_total", status="499", finish_reason="abort") >= 1
    (logged,) = [
        json.loads(ln) for ln in server.log().splitlines() if ln.startswith("{") and request_id in ln
    ]
    assert logged["status"] == 499 and logged["completion_tokens"] < long_request(server)["max_tokens"]


def test_non_stream_disconnect_aborts(server: RunningServer) -> None:
    wait_idle(server)
    with server.client() as c, pytest.raises(httpx.ReadTimeout):
        c.post(
            "/v1/chat/completions",
            json={
                "model": server.model,
                "messages": MSG,
                "max_tokens": server.max_model_len - 20,
                "ignore_eos": True,
            },
            timeout=0.5,
        )
    wait_idle(server)
