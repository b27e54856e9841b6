"""Tool calling end to end: the lab's mini-tools model decides to call `add`, vLLM's `deepseek_v3` parser
extracts the call, and the result goes back through the chat template for the final answer.

mini-tools (merge/lab/models/mini-tools) thinks briefly, then writes DeepSeek-V3's tool-call format; given the
tool's result it answers the sum. The forced modes (`required`, a named function) constrain its answer to JSON
after a free think block.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest
from conftest import API_KEY, LAB, RunningServer, running_server

pytestmark = pytest.mark.engine
MODEL = LAB / "mini-tools"
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
ASK = [{"role": "user", "content": "What is 27+48?"}]


@pytest.fixture(scope="module")
def tools_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    if not (MODEL / "config.json").is_file():
        pytest.skip(f"{MODEL} not built")
    with running_server(MODEL, tmp_path_factory.mktemp("mini-tools-log")) as srv:
        yield srv


@pytest.fixture(scope="module")
def oai(tools_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{tools_server.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=180)


def call_of(message: dict) -> tuple[str, dict]:
    (call,) = message["tool_calls"]
    assert call["type"] == "function" and call["id"]
    return call["function"]["name"], json.loads(call["function"]["arguments"])


def test_models_card_lists_tools(oai: openai.OpenAI) -> None:
    card = oai.models.list().data[0].model_dump()
    assert "tools" in card["supported_features"] and "tool_choice" in card["supported_sampling_parameters"]


def test_auto_calls_the_tool_and_the_result_round_trips(
    tools_server: RunningServer, oai: openai.OpenAI
) -> None:
    r = oai.chat.completions.create(model=tools_server.model, messages=ASK, tools=[ADD], temperature=0)
    msg = r.choices[0].message.model_dump()
    assert r.choices[0].finish_reason == "tool_calls", msg
    assert call_of(msg) == ("add", {"a": 27, "b": 48})
    assert msg["reasoning"] and not msg["content"]  # it thought first; no tool-call markup leaks as text
    # The call and its result go back through the template; the model answers from the result.
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": msg["tool_calls"]},
               {"role": "tool", "tool_call_id": msg["tool_calls"][0]["id"], "content": "75"}]  # fmt: skip
    done = oai.chat.completions.create(model=tools_server.model, messages=history, tools=[ADD], temperature=0)
    assert done.choices[0].finish_reason == "stop" and done.choices[0].message.content.strip() == "75"
    assert not done.choices[0].message.tool_calls


def test_auto_streams_the_same_call(tools_server: RunningServer, oai: openai.OpenAI) -> None:
    kw = {"model": tools_server.model, "messages": ASK, "tools": [ADD], "temperature": 0}
    whole = oai.chat.completions.create(**kw).choices[0].message.model_dump()
    chunks = list(oai.chat.completions.create(**kw, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [tc for d in deltas for tc in (d.tool_calls or [])]
    name = "".join(tc.function.name or "" for tc in calls)
    arguments = "".join(tc.function.arguments or "" for tc in calls)
    assert (name, json.loads(arguments)) == call_of(whole)
    assert "".join(getattr(d, "reasoning", None) or "" for d in deltas) == whole["reasoning"]
    assert not "".join(d.content or "" for d in deltas)  # the markup never reaches content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "add"}}])
def test_forced_calls_are_constrained_after_free_reasoning(
    tools_server: RunningServer, oai: openai.OpenAI, choice: object
) -> None:
    r = oai.chat.completions.create(
        model=tools_server.model, messages=ASK, tools=[ADD], tool_choice=choice, temperature=0, max_tokens=120,
        parallel_tool_calls=False,  # one call: the toy model would otherwise add calls until max_tokens
    )  # fmt: skip
    msg = r.choices[0].message.model_dump()
    assert r.choices[0].finish_reason == "tool_calls", msg
    name, args = call_of(msg)
    assert name == "add" and isinstance(args["a"], int) and isinstance(args["b"], int)


def test_tool_choice_none_extracts_nothing(tools_server: RunningServer, oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(
        model=tools_server.model, messages=ASK, tools=[ADD], tool_choice="none", temperature=0
    )
    assert r.choices[0].finish_reason != "tool_calls" and not r.choices[0].message.tool_calls


def test_without_tools_it_answers_itself(tools_server: RunningServer, oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(model=tools_server.model, messages=ASK, temperature=0)
    assert r.choices[0].message.content.strip() == "75" and not r.choices[0].message.tool_calls
