"""What clients and routers hit first, against the real server on the demo child (and the tiny model).

Each test here failed on the server before its fix (issue 18): the error shapes and their order, limits,
gauges after early hang-ups, JSON mode on a thinking model, keepalives during hidden reasoning, logprobs of
held-back tokens, logit_bias, and tools refused on a model that cannot call them.
"""

from __future__ import annotations

import itertools
import json
import socket
import time

import httpx
import openai
import pytest
from conftest import API_KEY, RunningServer
from test_serve_api import MSG, long_request, metric, scrape, wait_idle
from tokenizers import Tokenizer

pytestmark = pytest.mark.engine
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def oai(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=180)


# -- errors, in the order a server checks them -------------------------------------------------------


def test_malformed_json_is_400_without_a_bogus_param(server: RunningServer) -> None:
    r = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        content=b'{"model": "x", "messages": [',
        headers={**AUTH, "Content-Type": "application/json"},
    )
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] is None, r.text
    assert "not valid JSON" in err["message"] and "28" in err["message"]


def test_chunked_body_over_the_limit_is_413(server: RunningServer) -> None:
    def chunks():  # no Content-Length: the limit must hold while the body streams in
        for _ in range(8 * 16):
            yield b"x" * 65536

    r = httpx.post(f"{server.base_url}/v1/chat/completions", content=chunks(), headers=AUTH, timeout=180)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large", r.text


def test_api_key_is_checked_before_the_body(server: RunningServer) -> None:
    for content in (b'{"broken', b"{}", b"y" * (1 << 20)):
        r = httpx.post(f"{server.base_url}/v1/chat/completions", content=content, timeout=180)
        assert r.status_code == 401, (content[:10], r.text)


def test_max_output_length_is_enforced(server: RunningServer, oai: openai.OpenAI) -> None:
    card = oai.models.list().data[0].model_dump()
    cap = card["max_output_length"]
    assert cap < server.max_model_len  # conftest sets it below the context
    r = oai.chat.completions.create(
        model=server.model,
        messages=MSG,
        max_tokens=server.max_model_len - 30,
        extra_body={"ignore_eos": True},
    )
    assert r.usage.completion_tokens == cap and r.choices[0].finish_reason == "length"


# -- gauges and engine requests when clients leave ---------------------------------------------------


def _raw_request(server: RunningServer, body: dict) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def test_client_leaving_before_the_stream_starts_leaves_no_queued_request(server: RunningServer) -> None:
    wait_idle(server)
    host, port = server.base_url.removeprefix("http://").split(":")
    body = {"model": server.model, "messages": MSG, "stream": True, **long_request(server)}
    for _ in range(10):  # send and hang up at once: the response has not started when the server sees it
        with socket.create_connection((host, int(port))) as s:
            s.sendall(_raw_request(server, body))
            s.shutdown(socket.SHUT_RDWR)
    wait_idle(server)
    samples = scrape(server)
    assert metric(samples, "chimera_requests_queued") == 0
    assert metric(samples, "chimera_requests_in_flight") == 0


def test_hung_up_stream_aborts_its_engine_request_before_it_is_accounted(server: RunningServer) -> None:
    """The pipeline closes the engine's iterator on the way out (not at garbage collection): whenever the
    server counts no request in flight, the engine holds none either."""
    wait_idle(server)
    body = {"model": server.model, "messages": MSG, "stream": True, **long_request(server)}
    for _ in range(3):
        with server.client() as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    break
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ready = httpx.get(f"{server.base_url}/ready", timeout=5).json()
            if ready["in_flight"] == 0:
                assert ready["engine_requests"] == 0, ready
                break
    wait_idle(server)


# -- reasoning, JSON mode, logprobs ------------------------------------------------------------------


def test_json_mode_leaves_the_reasoning_free(server: RunningServer, oai: openai.OpenAI) -> None:
    """The demo child thinks first; the grammar applies to the answer only (before: to the think block too)."""
    if server.tiny:
        pytest.skip("the demo child is the thinking model")
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"],
              "additionalProperties": False}  # fmt: skip
    r = oai.chat.completions.create(
        model=server.model, messages=MSG, max_tokens=120, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "sum", "schema": schema}},
    )  # fmt: skip
    msg = r.choices[0].message.model_dump()
    assert msg["reasoning"] and "7+8=15" in msg["reasoning"], msg  # the model's own trace, unconstrained
    assert r.choices[0].finish_reason == "stop", msg
    assert isinstance(json.loads(msg["content"])["answer"], int)
    j = oai.chat.completions.create(
        model=server.model,
        messages=MSG,
        max_tokens=120,
        temperature=0,
        response_format={"type": "json_object"},
    )
    assert j.choices[0].message.model_dump()["reasoning"] and j.choices[
        0
    ].message.content.lstrip().startswith("{")


def test_streamed_logprobs_cover_every_token(server: RunningServer, oai: openai.OpenAI) -> None:
    """Tokens the splitter holds back (tags, blanks before </think>, hidden reasoning) keep their logprobs."""
    for extra in ({}, {"include_reasoning": False}):
        kw = {"model": server.model, "messages": MSG, "max_tokens": 40, "temperature": 0, "logprobs": True}
        chunks = list(
            oai.chat.completions.create(
                **kw, stream=True, stream_options={"include_usage": True}, extra_body=extra
            )
        )
        streamed = [
            t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content
        ]
        whole = oai.chat.completions.create(**kw, extra_body=extra)
        assert len(streamed) == chunks[-1].usage.completion_tokens == len(whole.choices[0].logprobs.content)
        assert [t.token for t in streamed] == [t.token for t in whole.choices[0].logprobs.content]


def test_hidden_reasoning_keeps_the_stream_alive(server: RunningServer) -> None:
    """With the reasoning hidden, `: THINKING` comments flow while the model thinks (proxies cut idle streams)."""
    if not server.tiny:
        pytest.skip("the tiny model thinks for as long as asked (its template opens <think>)")
    close = Tokenizer.from_file(str(server.model_dir / "tokenizer.json")).token_to_id("</think>")
    body = {"model": server.model, "messages": MSG, "stream": True, "max_tokens": 150, "ignore_eos": True,
            "reasoning": {"enabled": True, "exclude": True},
            "logit_bias": {str(close): -100}}  # a random model could close the block by chance  # fmt: skip
    lines, stamps = [], []
    with server.client() as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if line:
                lines.append(line)
                stamps.append(time.monotonic())
    data = [ln for ln in lines if ln.startswith("data: {")]
    assert ": THINKING" in lines, lines[:5]
    assert not any('"reasoning' in ln for ln in data)
    assert max(b - a for a, b in itertools.pairwise(stamps)) < 5  # never silent for long


def test_logit_bias(server: RunningServer, oai: openai.OpenAI) -> None:
    seven = Tokenizer.from_file(str(server.model_dir / "tokenizer.json")).token_to_id("7")
    r = oai.completions.create(
        model=server.model, prompt="Hello", max_tokens=5, logit_bias={str(seven): 100},
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert r.choices[0].text == "77777"
    with server.client() as c:
        bad = c.post(
            "/v1/chat/completions", json={"model": server.model, "messages": MSG, "logit_bias": {"999999": 1}}
        )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "logit_bias"


# -- tools on a model that cannot call them ----------------------------------------------------------

ADD = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}


@pytest.mark.parametrize(
    "patch",
    [
        {"tools": [ADD], "tool_choice": "required"},
        {"tools": [ADD]},
        {"messages": [*MSG, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "75"}]},
    ],
)  # fmt: skip
def test_tools_on_a_model_without_tool_calling_are_refused(server: RunningServer, patch: dict) -> None:
    with server.client() as c:
        r = c.post("/v1/chat/completions", json={"model": server.model, "messages": MSG, **patch})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools", r.text
    card = httpx.get(f"{server.base_url}/v1/models", headers=AUTH).json()["data"][0]
    assert "tools" not in card["supported_features"] and "tools" not in card["supported_sampling_parameters"]
