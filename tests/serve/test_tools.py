"""Tool calls out of an answer stream: what streams as content, what is held, and the calls at the end.

`auto` mode's extractor here is a stand-in with the shape of vLLM's parser result; the real `deepseek_v3` parser
runs in tests/serve/test_serve_tools.py against the engine.
"""

from __future__ import annotations

import json
import random

import pytest

from chimera_serve.tools import (
    TOOL_CALLS_BEGIN,
    ToolCall,
    ToolCallCollector,
    ToolExtraction,
    calls_from_json,
    required_schema,
    tool_call_dicts,
)

ADD = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
MUL = {"type": "function", "function": {"name": "mul"}}
CALL = f'{TOOL_CALLS_BEGIN}<｜tool▁call▁begin｜>function<｜tool▁sep｜>add\n```json\n{{"a": 1}}\n```<｜tool▁call▁end｜>'


def fake_extract(text: str) -> ToolExtraction:
    head, sep, _ = text.partition(TOOL_CALLS_BEGIN)
    return ToolExtraction(head or None, [ToolCall("call_1", "add", '{"a": 1}')] if sep else [])


def feed_in_pieces(c: ToolCallCollector, text: str, rng: random.Random) -> tuple[list[str], str]:
    out, i = [], 0
    while i < len(text):
        n = rng.randint(1, 7)
        out.append(c.feed(text[i : i + n]))
        i += n
    return out, c.finish()


@pytest.mark.parametrize("seed", range(20))
def test_auto_streams_content_up_to_the_marker_and_parses_at_the_end(seed: int) -> None:
    rng = random.Random(seed)
    head = rng.choice(["", "Let me add. ", "<｜tool partial look-alike "])
    c = ToolCallCollector("auto", fake_extract)
    streamed, tail = feed_in_pieces(c, head + CALL, rng)
    assert "".join(streamed) + tail == head  # no marker text ever reaches the client
    assert [x.name for x in c.calls] == ["add"]


def test_auto_without_a_call_is_all_content() -> None:
    c = ToolCallCollector("auto", fake_extract)
    streamed, tail = feed_in_pieces(c, "75, and <｜tool not really", random.Random(1))
    assert "".join(streamed) + tail == "75, and <｜tool not really" and c.calls == []


def test_forced_modes_hold_everything_and_parse_json() -> None:
    r = ToolCallCollector("required")
    assert r.feed('[{"name": "add", "parameters": {"a": 1}}]') == "" and r.finish() == ""
    assert [(x.name, json.loads(x.arguments)) for x in r.calls] == [("add", {"a": 1})]
    n = ToolCallCollector("named", named="mul")
    n.feed('{"x": 2}')
    assert n.finish() == "" and [(x.name, x.arguments) for x in n.calls] == [("mul", '{"x": 2}')]
    cut = ToolCallCollector("required")
    cut.feed('[{"name": "ad')  # cut by max_tokens: not a call, the text comes back as content
    assert cut.finish() == '[{"name": "ad' and cut.calls == []


def test_none_and_off_pass_through() -> None:
    for mode in ("none", "off"):
        c = ToolCallCollector(mode)
        assert c.feed(CALL) == CALL and c.finish() == "" and c.calls == []


def test_required_schema() -> None:
    s = required_schema([ADD, MUL], parallel=False)
    assert s["minItems"] == 1 and s["maxItems"] == 1
    names = [v["properties"]["name"]["enum"] for v in s["items"]["anyOf"]]
    assert names == [["add"], ["mul"]]
    assert s["items"]["anyOf"][1]["properties"]["parameters"] == {"type": "object", "properties": {}}
    assert "maxItems" not in required_schema([ADD], parallel=None)


def test_calls_from_json_and_deltas() -> None:
    calls = calls_from_json(
        '[{"name": "add", "parameters": {"a": 1}}, {"name": "mul", "parameters": {}}]', "required"
    )
    assert [c.name for c in calls] == ["add", "mul"] and len({c.id for c in calls}) == 2
    assert calls_from_json("not json", "required") == []
    d = tool_call_dicts(calls)
    assert (
        d[1]["index"] == 1
        and d[1]["type"] == "function"
        and d[1]["function"] == {"name": "mul", "arguments": "{}"}
    )
