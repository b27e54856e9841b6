"""Split a completion into its reasoning section and its answer, chunk by chunk.

The reasoning section
    DeepSeek-R1-style models think between ``<think>`` and ``</think>``. R1-0528's chat template writes the
    opening ``<think>\\n`` into the prompt, so the completion holds only ``</think>``; other templates leave
    the model to emit ``<think>`` itself. A section therefore opens in one of two ways:

    1. the rendered prompt ends with ``<think>`` (``prompt_opens_think``), or
    2. the generated text starts with ``<think>`` (leading whitespace allowed),

    and it closes at the first ``</think>`` of the generated text. Everything after the close is content,
    less the newline(s) the model writes right after the tag; the reasoning text is stripped of surrounding
    whitespace. Tag text is never emitted, in either part.

Choices (and how they differ from vLLM's ``deepseek_r1`` reasoning parser)
    * A completion that never opens a section is all content: a model that does not think (mini-v3,
      DeepSeek-V3) answers, it does not reason. vLLM's parser calls output without ``</think>`` reasoning,
      which would file every V3 answer under ``reasoning_content`` and count it as thinking.
    * A section that opens and never closes (cut by ``max_tokens``, or the model stopped) stays reasoning:
      outcome ``"unclosed"``.
    * ``<think>`` anywhere but the very start of the output is content, and so is a stray ``</think>`` when no
      section was opened.
    * Prompt injection: only tags in the *generated* text are trusted. The splitter never sees the prompt;
      ``prompt_opens_think`` looks only at the tail of the template-rendered prompt, which the chat
      template writes after every user message, so a user's ``<think>`` cannot open a section.

Streaming
    ``feed`` returns what can be emitted now and holds back a tail that may still become a tag
    (``"</th"`` waiting for ``"ink>"``), plus whitespace that may turn out to precede ``</think>``.
    ``finish`` flushes what was held. Feeding any split of a text gives the same concatenated output as
    feeding it whole (``split_text``).

Token attribution
    A chunk's ``num_tokens`` count as reasoning when the chunk starts inside the section or opens it; tokens
    of chunks that only hold leading whitespace or a partial ``<think>`` are settled once the start is
    decided. The tags count as reasoning. With one token per chunk (vLLM's delta mode) this is exact; when
    the engine merges several tokens into one chunk, a chunk that straddles ``</think>`` counts wholly as
    reasoning.
"""

from __future__ import annotations

from typing import Literal

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

ThinkOutcome = Literal["complete", "unclosed", "none"]

# Where the splitter is in the generated text.
_START = "start"  # nothing decided yet: only whitespace or a partial open tag seen
_THINK = "think"  # inside the reasoning section
_ANSWER = "answer"  # content (after the section, or no section at all)


def partial_tag_len(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    # Runs once per streamed token: only a suffix that starts with the tag's first character can qualify,
    # and usually the tail holds none (one `find` instead of a slice and `endswith` per length).
    i = text.find(tag[0], max(len(text) - len(tag) + 1, 0))
    while i >= 0:
        if tag.startswith(text[i:]):
            return len(text) - i
        i = text.find(tag[0], i + 1)
    return 0


class ThinkSplitter:
    """Streaming splitter of one completion into (reasoning, content); one instance per choice."""

    def __init__(
        self, *, prompt_opened: bool, open_tag: str = THINK_OPEN, close_tag: str = THINK_CLOSE
    ) -> None:
        if not open_tag or not close_tag:
            raise ValueError(
                "open_tag and close_tag must be non-empty strings, e.g. '<think>' and '</think>'"
            )
        self._open, self._close = open_tag, close_tag
        self._state = _THINK if prompt_opened else _START
        self._opened = prompt_opened
        self._closed = False
        self._held = ""  # text received but not yet emitted
        self._strip_lead = prompt_opened  # drop leading whitespace of the section / newlines of the answer
        self._pending_tokens = 0  # tokens of chunks seen while _START was undecided
        self._reasoning_tokens = 0
        self._finished = False

    @property
    def outcome(self) -> ThinkOutcome:
        if not self._opened:
            return "none"
        return "complete" if self._closed else "unclosed"

    @property
    def reasoning_tokens(self) -> int:
        return self._reasoning_tokens

    def feed(self, text: str, num_tokens: int = 0) -> tuple[str, str]:
        """Add the next chunk of generated text; return (reasoning_delta, content_delta)."""
        if self._finished:
            raise RuntimeError("ThinkSplitter.feed() called after finish(); use one splitter per completion")
        if self._state == _THINK:
            self._reasoning_tokens += num_tokens
        elif self._state == _START:
            self._pending_tokens += num_tokens
        self._held += text
        reasoning, content = "", ""
        if self._state == _START:
            self._decide_start()
        if self._state == _THINK:
            reasoning = self._take_reasoning()
        if self._state == _ANSWER:
            content = self._take_content()
        return reasoning, content

    def finish(self) -> tuple[str, str]:
        """End of generation: flush held text (a partial tag that never completed is plain text)."""
        if self._finished:
            return "", ""
        self._finished = True
        held, self._held = self._held, ""
        if self._state == _START:  # only whitespace or a partial "<think>": that was the answer
            self._state = _ANSWER
            return "", held
        if self._state == _THINK:  # unclosed section: the held tail is reasoning, minus trailing blanks
            return (held.lstrip() if self._strip_lead else held).rstrip(), ""
        return "", held

    # -- states ---------------------------------------------------------------------------------------

    def _decide_start(self) -> None:
        head = self._held.lstrip()
        if head.startswith(self._open):  # the model opened a section
            self._held = head[len(self._open) :]
            self._state, self._opened, self._strip_lead = _THINK, True, True
            self._reasoning_tokens += self._pending_tokens
        elif not self._open.startswith(head):  # anything else at the start: no section, all content
            self._state = _ANSWER
        else:
            return  # still whitespace or a partial open tag: wait for more
        self._pending_tokens = 0

    def _take_reasoning(self) -> str:
        if self._strip_lead:
            self._held = self._held.lstrip()
            if not self._held:
                return ""
            self._strip_lead = False
        idx = self._held.find(self._close)
        if idx >= 0:  # section closes here; the rest is the answer
            reasoning = self._held[:idx].rstrip()
            self._held = self._held[idx + len(self._close) :]
            self._state, self._closed, self._strip_lead = _ANSWER, True, True
            return reasoning
        # Hold a possible partial "</think>" and the whitespace before it (stripped if the tag completes).
        keep = partial_tag_len(self._held, self._close)
        cut = len(self._held[: len(self._held) - keep].rstrip())
        reasoning, self._held = self._held[:cut], self._held[cut:]
        return reasoning

    def _take_content(self) -> str:
        if self._strip_lead:
            self._held = self._held.lstrip("\r\n")
            if not self._held:
                return ""
            self._strip_lead = False
        content, self._held = self._held, ""
        return content


def prompt_opens_think(prompt_text: str, open_tag: str = THINK_OPEN, close_tag: str = THINK_CLOSE) -> bool:
    """True when the template-rendered prompt leaves a reasoning section open for the model (R1-0528 style).

    Looks only at the prompt's tail: it must end with `open_tag` (trailing whitespace allowed). A template
    that closes the section itself (``<think>\\n\\n</think>``, thinking disabled) does not open one.
    """
    # Only the very end counts: a user's "<think>" sits before the assistant prefix the template appends.
    tail = prompt_text.rstrip()
    return tail.endswith(open_tag) and not tail.endswith(close_tag)


def split_text(text: str, *, prompt_opened: bool) -> tuple[str | None, str, ThinkOutcome]:
    """Split a whole completion: (reasoning or None when no section opened, content, outcome)."""
    splitter = ThinkSplitter(prompt_opened=prompt_opened)
    r1, c1 = splitter.feed(text)
    r2, c2 = splitter.finish()
    reasoning = r1 + r2 if splitter.outcome != "none" else None
    return reasoning, c1 + c2, splitter.outcome
