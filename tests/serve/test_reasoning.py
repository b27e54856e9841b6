"""Think-block splitter: whole texts, every split point across chunks, token attribution."""

from __future__ import annotations

import itertools
import random

import pytest

from chimera_serve.reasoning import ThinkSplitter, partial_tag_len, prompt_opens_think, split_text

# (generated text, prompt_opened) -> (reasoning, content, outcome); reasoning None when no section opened.
CASES = [
    # R1-0528: the template opened the section, the model only closes it.
    (
        ("Let me add 2 and 2.\nIt is 4.\n</think>\n\nThe answer is 4.", True),
        ("Let me add 2 and 2.\nIt is 4.", "The answer is 4.", "complete"),
    ),
    # The model opens the section itself, after some leading whitespace.
    (("\n <think>\nhmm\n</think>\n\nHi!", False), ("hmm", "Hi!", "complete")),
    # No section at all (mini-v3 / V3): all content, not reasoning (unlike vLLM's deepseek_r1 parser).
    (("Hello there.", False), (None, "Hello there.", "none")),
    (("  indented answer", False), (None, "  indented answer", "none")),
    # Missing open tag: a stray </think> without a section is content.
    (("some text</think>\nmore", False), (None, "some text</think>\nmore", "none")),
    # <think> in the middle of content is content.
    (("Use the <think> tag like so.", False), (None, "Use the <think> tag like so.", "none")),
    # Unclosed section (cut by max_tokens) stays reasoning.
    (("Step 1: consider the </thi", True), ("Step 1: consider the </thi", "", "unclosed")),
    (("<think>\nI wonder  \n", False), ("I wonder", "", "unclosed")),
    # Empty reasoning section and empty outputs.
    (("<think>\n\n</think>\n\nDirect answer.", False), ("", "Direct answer.", "complete")),
    (("</think>Answer", True), ("", "Answer", "complete")),
    (("", False), (None, "", "none")),
    (("", True), ("", "", "unclosed")),
    (("\n\n", False), (None, "\n\n", "none")),
    # A partial open tag at the end of an otherwise empty output is plain content.
    (("<thi", False), (None, "<thi", "none")),
    # Only the first </think> closes; later tags are content; only newlines after the tag are stripped.
    (("a</think>\n\n  b </think> <think>c", True), ("a", "  b </think> <think>c", "complete")),
    # A second <think> inside an open section is reasoning text.
    (("<think>x <think> y</think>z", False), ("x <think> y", "z", "complete")),
    (("\r\n</think>\r\nz", True), ("", "z", "complete")),
]


def _stream(chunks: list[str], prompt_opened: bool) -> tuple[str, str, str]:
    splitter = ThinkSplitter(prompt_opened=prompt_opened)
    reasoning, content = "", ""
    for chunk in chunks:
        r, c = splitter.feed(chunk)
        reasoning, content = reasoning + r, content + c
    r, c = splitter.finish()
    return reasoning + r, content + c, splitter.outcome


@pytest.mark.parametrize(("args", "expected"), CASES)
def test_split_text(args, expected):
    text, prompt_opened = args
    assert split_text(text, prompt_opened=prompt_opened) == expected


@pytest.mark.parametrize(("args", "expected"), CASES)
def test_every_two_and_three_way_split_matches_whole(args, expected):
    text, prompt_opened = args
    reasoning, content, outcome = expected
    want = (reasoning or "", content, outcome)
    n = len(text)
    for i, j in itertools.combinations_with_replacement(range(n + 1), 2):
        assert _stream([text[:i], text[i:j], text[j:]], prompt_opened) == want, (i, j)


@pytest.mark.parametrize(("args", "expected"), CASES)
def test_char_by_char_never_emits_tag_text_early(args, expected):
    text, prompt_opened = args
    splitter = ThinkSplitter(prompt_opened=prompt_opened)
    reasoning, content = "", ""
    for ch in text:
        r, c = splitter.feed(ch)
        reasoning, content = reasoning + r, content + c
        # Whatever has been emitted so far is a prefix of the final answer: nothing is ever taken back.
        assert expected[0] is None or expected[0].startswith(reasoning)
        assert expected[1].startswith(content)
    r, c = splitter.finish()
    assert (reasoning + r, content + c) == ((expected[0] or ""), expected[1])


def test_partial_close_tag_is_held_then_dropped():
    splitter = ThinkSplitter(prompt_opened=True)
    assert splitter.feed("thinking</th") == ("thinking", "")
    assert splitter.outcome == "unclosed"
    assert splitter.feed("ink>\n\nanswer") == ("", "answer")
    assert splitter.outcome == "complete"
    assert splitter.finish() == ("", "")


def test_false_partial_close_tag_is_released_as_reasoning():
    splitter = ThinkSplitter(prompt_opened=True)
    assert splitter.feed("a </th") == ("a", "")
    assert splitter.feed("ing") == (" </thing", "")


def test_token_attribution_one_token_per_chunk():
    tokens = ["<think>", "\n", "Let", " me", " see", "</think>", "\n\n", "Yes", "."]
    splitter = ThinkSplitter(prompt_opened=False)
    for t in tokens:
        splitter.feed(t, 1)
    splitter.finish()
    assert splitter.reasoning_tokens == 6  # the two tags and the four tokens between them
    assert splitter.outcome == "complete"


def test_token_attribution_split_open_tag_and_leading_whitespace():
    splitter = ThinkSplitter(prompt_opened=False)
    for t in ["\n", "<th", "ink>", "x", "</", "think>", "y"]:
        splitter.feed(t, 1)
    assert splitter.reasoning_tokens == 6  # leading "\n" is settled with the opening tag


def test_token_attribution_prompt_opened_and_unclosed():
    splitter = ThinkSplitter(prompt_opened=True)
    splitter.feed("a b", 2)
    splitter.feed("c</think>d", 3)  # starts inside the section: counts wholly as reasoning
    splitter.feed("e f", 2)
    assert splitter.reasoning_tokens == 5
    unclosed = ThinkSplitter(prompt_opened=True)
    unclosed.feed("a", 4)
    unclosed.feed("b", 3)
    unclosed.finish()
    assert (unclosed.reasoning_tokens, unclosed.outcome) == (7, "unclosed")


def test_token_attribution_no_section():
    splitter = ThinkSplitter(prompt_opened=False)
    for t in [" ", "<th", "ese", " are", "</think>"]:
        splitter.feed(t, 1)
    splitter.finish()
    assert (splitter.reasoning_tokens, splitter.outcome) == (0, "none")


def test_feed_after_finish_raises():
    splitter = ThinkSplitter(prompt_opened=False)
    splitter.finish()
    with pytest.raises(RuntimeError, match="after finish"):
        splitter.feed("x")


def test_custom_tags():
    splitter = ThinkSplitter(prompt_opened=False, open_tag="<reason>", close_tag="</reason>")
    out = [splitter.feed(c) for c in ["<rea", "son>r</rea", "son>c"]]
    assert "".join(r for r, _ in out) == "r" and "".join(c for _, c in out) == "c"


@pytest.mark.parametrize("tag", ["</think>", "<think>", "aab", "abab", "aaa", "x"])
def test_partial_tag_len_matches_the_definition(tag):
    """The longest suffix of the text that is a proper prefix of the tag, on texts dense in the tag's
    characters (tags whose first character recurs take the slow path)."""
    rng = random.Random(tag)
    for _ in range(3000):
        text = "".join(rng.choice(tag + "ab <") for _ in range(rng.randint(0, 12)))
        longest = max((n for n in range(1, len(tag)) if text.endswith(tag[:n])), default=0)
        assert partial_tag_len(text, tag) == longest, text


@pytest.mark.parametrize(
    ("prompt", "opened"),
    [
        ("<｜User｜>hi<｜Assistant｜><think>\n", True),  # R1-0528 template
        ("<｜User｜>hi<｜Assistant｜><think>", True),
        ("<｜User｜>hi<｜Assistant｜>", False),  # V3 / R1 original
        ("<｜User｜>hi<｜Assistant｜></think>", False),  # V3.1 non-thinking mode
        ("<|im_start|>assistant\n<think>\n\n</think>\n\n", False),  # thinking disabled by the template
        # A user's own "<think>" is followed by the assistant prefix: it does not open a section.
        ("<｜User｜>say <think><｜Assistant｜>", False),
        ("", False),
    ],
)
def test_prompt_opens_think(prompt, opened):
    assert prompt_opens_think(prompt) is opened
