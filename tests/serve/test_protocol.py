"""Stream chunks: `ChunkWriter`'s bytes equal the pydantic chunk models' on random deltas, byte for byte."""

from __future__ import annotations

import json
import random

import pytest

from chimera_serve.chat_events import Piece as _Piece
from chimera_serve.chat_events import delta_choice as _delta_choice
from chimera_serve.protocol import (
    ChatCompletionChunk,
    ChoiceLogprobs,
    ChunkChoice,
    ChunkWriter,
    Completion,
    CompletionChoice,
    logprobs_content,
    make_usage,
)

# Characters JSON encoders disagree on most: controls, quotes, backslash, non-ASCII, line separators, astral.
ALPHABET = (
    [chr(i) for i in range(0x20)]
    + list(" \"\\/<>&'azAZ09{}[]:,\x7f")
    + ["é", "中", "\u2028", "\u2029", "𝄞", "\ufffd"]
)


def text(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 12)))


def chat_choice(rng: random.Random) -> dict | None:
    """A chat chunk choice built by the route's own code from a random piece (None: nothing to send)."""
    piece = _Piece(
        index=rng.randint(0, 3),
        reasoning=text(rng) if rng.random() < 0.6 else "",
        content=text(rng) if rng.random() < 0.6 else "",
        finish_reason=rng.choice(["stop", "length", "abort"]) if rng.random() < 0.3 else None,
    )
    choice = _delta_choice(piece, first=rng.random() < 0.3, show=rng.random() < 0.8)
    if choice is not None and rng.random() < 0.3:
        top = [(text(rng), -rng.random() * 20) for _ in range(rng.randint(0, 3))]
        choice["logprobs"] = logprobs_content(
            [(text(rng), rng.choice([-rng.random() * 5, float("-inf")]), top)]
        )
    return choice


@pytest.mark.parametrize("seed", range(5))
def test_chat_chunks_equal_the_models_bytes(seed: int) -> None:
    rng = random.Random(seed)
    out = ChunkWriter("chat.completion.chunk", "chatcmpl-x", "mini-r1", created=1700000000)
    sent = 0
    for _ in range(300):
        choice = chat_choice(rng)
        if choice is None:
            continue
        sent += 1
        model = ChatCompletionChunk(
            id="chatcmpl-x", model="mini-r1", created=1700000000, choices=[ChunkChoice.model_validate(choice)]
        )
        assert out.choice(choice) == model.model_dump_json(exclude_none=True).encode()
    assert sent > 200


@pytest.mark.parametrize("seed", range(3))
def test_completion_chunks_equal_the_models_bytes(seed: int) -> None:
    rng = random.Random(seed)
    out = ChunkWriter("text_completion", "cmpl-x", "m", created=5)
    for _ in range(300):
        choice: dict = {"index": rng.randint(0, 2), "text": text(rng)}
        if rng.random() < 0.3:
            choice["finish_reason"] = "length"
        if rng.random() < 0.3:
            choice["logprobs"] = {
                "tokens": [text(rng)],
                "token_logprobs": [-1.5],
                "top_logprobs": [{"a": -0.25}],
            }
        model = Completion(
            id="cmpl-x",
            model="m",
            created=5,
            choices=[CompletionChoice.model_validate({"finish_reason": None, **choice})],
        )
        assert out.choice(choice) == model.model_dump_json(exclude_none=True).encode()


def test_usage_chunk_and_fixed_head() -> None:
    usage = make_usage(11, 7, 3)
    chat = ChunkWriter("chat.completion.chunk", "chatcmpl-y", "m", created=42)
    expected = ChatCompletionChunk(id="chatcmpl-y", model="m", created=42, choices=[], usage=usage)
    assert chat.usage(usage) == expected.model_dump_json(exclude_none=True).encode()
    completion = ChunkWriter("text_completion", "cmpl-y", "m", created=42)
    assert (
        completion.usage(usage)
        == Completion(id="cmpl-y", model="m", created=42, choices=[], usage=usage).model_dump_json().encode()
    )
    # Without `created`, every chunk of one stream carries the same time (OpenAI's streams do).
    live = ChunkWriter("chat.completion.chunk", "chatcmpl-z", "m")
    times = {json.loads(live.choice({"index": 0, "delta": {"content": "a"}}))["created"] for _ in range(3)}
    assert len(times) == 1 and times.pop() > 1_700_000_000


def test_logprobs_content_clamps_and_keeps_bytes() -> None:
    body = logprobs_content([("é", float("-inf"), [("é", -0.5), ("x", -12000.0)])])
    parsed = ChoiceLogprobs.model_validate(body)  # the shape the model accepts (extra keys are refused)
    (tok,) = parsed.content
    assert tok.logprob == -9999.0 and tok.bytes == [0xC3, 0xA9]
    assert [(t.token, t.logprob) for t in tok.top_logprobs] == [("é", -0.5), ("x", -9999.0)]
