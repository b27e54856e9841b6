"""The SSE stream parser on byte streams cut anywhere (pure: no HTTP)."""

from __future__ import annotations

import itertools
import json

import pytest

from benchmarks.load.client import RequestResult, StreamError, StreamParser


def chunk(delta: dict | None = None, usage: dict | None = None) -> bytes:
    obj: dict = {"id": "c", "object": "chat.completion.chunk", "choices": []}
    if delta is not None:
        obj["choices"] = [{"index": 0, "delta": delta}]
    if usage is not None:
        obj["usage"] = usage
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


# chimera-serve's shape: role first, reasoning as reasoning_content + reasoning, keep-alive comments while
# queued and between tokens, answer, usage with reasoning_tokens, [DONE].
EVENTS = [
    b": PROCESSING\n\n",
    chunk({"role": "assistant", "content": ""}),
    chunk({"reasoning_content": "7+8", "reasoning": "7+8"}),
    b": keep-alive\n\n",
    chunk({"reasoning_content": "=15", "reasoning": "=15"}),
    chunk({"content": "7"}),
    chunk({"content": "5"}),
    chunk({}, usage=None),
    chunk(
        usage={
            "prompt_tokens": 9,
            "completion_tokens": 6,
            "completion_tokens_details": {"reasoning_tokens": 4},
        }
    ),
    b"data: [DONE]\n\n",
]
SPLIT_STREAM = b"".join(EVENTS)


def after(n: int) -> int:
    """Byte offset just after the first `n` events."""
    return sum(len(e) for e in EVENTS[:n])


def feed_all(stream: bytes, cuts: list[int], keep_text: bool = True) -> RequestResult:
    """Feed `stream` in pieces cut at `cuts`, piece k at time k (seconds)."""
    r = RequestResult(0, 0.0)
    p = StreamParser(r, keep_text)
    bounds = [0, *cuts, len(stream)]
    for k, (a, b) in enumerate(itertools.pairwise(bounds)):
        p.feed(stream[a:b], float(k + 1))
    p.finish()
    return r


def test_one_read_gives_every_figure() -> None:
    r = feed_all(SPLIT_STREAM, [])
    assert r.ok and r.end == 1.0
    assert (r.prompt_tokens, r.completion_tokens, r.reasoning_tokens) == (9, 6, 4)
    assert r.chunks == 4 and r.reasoning_chunks == 2 and r.think
    assert r.ttft == 1.0 and r.ttfa == 1.0 and r.text == "75"


def test_every_cut_gives_the_same_counts() -> None:
    whole = feed_all(SPLIT_STREAM, [])
    for cut in range(1, len(SPLIT_STREAM)):
        r = feed_all(SPLIT_STREAM, [cut])
        assert (r.chunks, r.reasoning_chunks, r.completion_tokens, r.reasoning_tokens, r.text) == (
            whole.chunks, whole.reasoning_chunks, whole.completion_tokens, whole.reasoning_tokens, whole.text,
        ), cut  # fmt: skip


def test_timing_per_read() -> None:
    # reads at t=1..4: [comment, role, reasoning 1, comment] [reasoning 2] [answer 7] [answer 5, usage, DONE]
    r = feed_all(SPLIT_STREAM, [after(4), after(5), after(6)])
    assert r.ttft == 1.0  # the first reasoning token, not the empty role chunk
    assert r.ttfa == 3.0  # the first answer token
    assert r.itl == [1.0, 1.0, 1.0]
    assert r.end == 4.0
    assert r.tpot == pytest.approx((4.0 - 1.0) / (6 - 1))


def test_crlf_and_multiline_events() -> None:
    s = SPLIT_STREAM.replace(b"\n", b"\r\n")
    r = feed_all(s, [len(s) // 3, len(s) // 2])
    assert r.completion_tokens == 6 and r.text == "75"
    multi = b'event: message\ndata: {"choices": [{"delta": {"content": "4"}}]}\n\n: c\ndata: [DONE]\n\n'
    r = feed_all(multi, [])
    assert r.text == "4" and r.end == 1.0


def test_inline_think_block_counts_as_reasoning() -> None:
    # A server without a reasoning parser: <think> arrives in content.
    parts = ["<think>", "\n7+8", "=15\n", "</think>", "\n\n", "75"]
    s = b"".join(chunk({"content": c}) for c in parts) + b"data: [DONE]\n\n"
    r = feed_all(s, [s.index(b"75") - 40])
    assert r.think and r.reasoning_chunks == 4 and r.chunks == 6
    assert r.ttft == 1.0 and r.ttfa == 2.0
    assert r.text == "<think>\n7+8=15\n</think>\n\n75"


def test_no_reasoning_no_think() -> None:
    s = (
        chunk({"content": "75"})
        + chunk(usage={"prompt_tokens": 3, "completion_tokens": 2})
        + b"data: [DONE]\n\n"
    )
    r = feed_all(s, [])
    assert not r.think and r.reasoning_tokens is None and r.reasoning_chunks == 0 and r.output_tokens == 2


def test_without_usage_tokens_are_the_events() -> None:
    s = chunk({"content": "a"}) + chunk({"content": "b"}) + chunk({"content": "c"}) + b"data: [DONE]\n\n"
    r = feed_all(s, [])
    assert r.completion_tokens is None and r.output_tokens == 3


def test_error_frame_and_garbage_are_stream_errors() -> None:
    r = RequestResult(0, 0.0)
    with pytest.raises(StreamError, match="engine died") as e:
        StreamParser(r).feed(
            chunk({"content": "a"}) + b'data: {"error": {"message": "engine died"}}\n\n', 1.0
        )
    assert e.value.kind == "stream"
    with pytest.raises(StreamError, match="not JSON") as e:
        StreamParser(RequestResult(0, 0.0)).feed(b"data: <html>\n\n", 1.0)
    assert e.value.kind == "protocol"
    with pytest.raises(StreamError, match="not a JSON object"):
        StreamParser(RequestResult(0, 0.0)).feed(b"data: [1, 2]\n\n", 1.0)
