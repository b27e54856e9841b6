"""One streaming chat completion: send it with aiohttp, parse its SSE stream, time every token.

The parser is the hot path (tens of thousands of events per second on one core), so it stays lean: bytes are
split into events with `bytes.split`, comment lines (`: PROCESSING`, keep-alives) are skipped by their first
byte, each data payload is decoded once with the standard `json`, and the timing of every event read in one
socket read is that read's timestamp (they arrived together).

What a stream tells, per request:
  ttft   first token of any kind (reasoning or answer), from the send
  ttfa   first answer token (non-whitespace `content` after any reasoning)
  itl    gaps between consecutive token-bearing events
  usage  prompt, completion and reasoning tokens (`usage.completion_tokens_details.reasoning_tokens`)
Reasoning arrives as `reasoning_content` / `reasoning` deltas (chimera-serve, vLLM with a reasoning parser) or
inline as `<think>...</think>` in `content` (servers without one); both count as thinking.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from benchmarks.load.workload import Prompt


def _json_decoder() -> Callable[[bytes], Any]:
    """msgspec's decoder where it is installed (vLLM and chimera-serve bring it; ~2x the standard library's
    speed on a stream chunk), else the standard library's C scanner without json.loads' per-call checks."""
    try:
        import msgspec
    except ImportError:
        raw = json.JSONDecoder().raw_decode
        return lambda b: raw(b.decode())[0]
    return msgspec.json.Decoder().decode


_decode = _json_decoder()
JSON_DECODER = "msgspec" if _decode.__class__.__name__ != "function" else "json"

TAIL_S = 5.0  # how long the end of a body may trail its [DONE]

# Failures that mean the server (or the path to it) is gone, not that it refused one request.
TRANSPORT_KINDS = frozenset({"connect", "disconnected"})


class StreamError(Exception):
    """The stream broke the protocol or carried an error frame."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(slots=True)
class RequestResult:
    """One request's measurements; times are seconds (perf_counter), `error` None means it succeeded."""

    index: int
    start: float
    end: float = 0.0
    ttft: float | None = None
    ttfa: float | None = None
    status: int = 0
    error: str | None = None
    error_kind: str | None = (
        None  # http_<status> | connect | disconnected | timeout | stream | protocol | cancelled
    )
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_tokens: int | None = None  # from usage; None when the server does not report it
    chunks: int = 0  # token-bearing events
    reads: int = 0  # socket reads that brought stream bytes (events per read shows batching)
    reasoning_chunks: int = 0
    think: bool = False
    itl: list[float] = field(default_factory=list)
    text: str | None = None  # the content (answer) text, when kept
    expected: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def output_tokens(self) -> int:
        """Completion tokens from usage, else the token-bearing events seen (one token each, usually)."""
        return self.completion_tokens if self.completion_tokens is not None else self.chunks

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first: (e2e - ttft) / (tokens - 1), vLLM's definition."""
        n = self.output_tokens
        if self.ttft is None or n < 2:
            return None
        return (self.end - self.start - self.ttft) / (n - 1)


class StreamParser:
    """Feeds the bytes of one SSE response into a `RequestResult`; `feed` returns True at `[DONE]`."""

    __slots__ = ("_answered", "_buf", "_last", "_parts", "_raw_think", "done", "r")

    def __init__(self, r: RequestResult, keep_text: bool = False) -> None:
        self.r = r
        self.done = False
        self._buf = b""
        self._last = 0.0
        self._raw_think = False  # inside a <think> block that arrives as content
        self._answered = False
        self._parts: list[str] | None = [] if keep_text else None

    def feed(self, data: bytes, now: float) -> bool:
        if self._buf:
            data = self._buf + data
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        events = data.split(b"\n\n")
        self._buf = events.pop()
        for ev in events:
            if ev[:6] == b"data: " and b"\n" not in ev:
                payload = ev[6:]
            elif ev[:1] == b":" and b"\n" not in ev:  # a comment line alone (keep-alive)
                continue
            else:
                payload = _data_lines(ev)
                if payload is None:
                    continue
            if payload == b"[DONE]":
                self.done = True
                self.r.end = now
                return True
            try:
                obj = _decode(payload)
            except ValueError:
                raise StreamError("protocol", f"an SSE data line is not JSON: {payload[:80]!r}") from None
            if type(obj) is not dict:
                raise StreamError("protocol", f"an SSE data line is not a JSON object: {payload[:80]!r}")
            self._event(obj, now)
        return False

    def _event(self, obj: dict[str, Any], now: float) -> None:
        choices = obj.get("choices")
        if choices:
            delta = choices[0].get("delta")
            if delta:
                reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                content = delta.get("content")
                if reasoning or content:
                    self._token(reasoning, content, now)
        usage = obj.get("usage")
        if usage:
            r = self.r
            r.prompt_tokens = usage.get("prompt_tokens")
            r.completion_tokens = usage.get("completion_tokens")
            details = usage.get("completion_tokens_details")
            if details and details.get("reasoning_tokens") is not None:
                r.reasoning_tokens = details["reasoning_tokens"]
        if "error" in obj:
            err = obj["error"]
            msg = err.get("message", err) if isinstance(err, dict) else err
            raise StreamError("stream", f"error frame in the stream: {msg}")

    def _token(self, reasoning: str | None, content: str | None, now: float) -> None:
        r = self.r
        if r.ttft is None:
            r.ttft = now - r.start
        else:
            r.itl.append(now - self._last)
        self._last = now
        r.chunks += 1
        if reasoning:
            r.reasoning_chunks += 1
            r.think = True
        if not content:
            return
        if self._parts is not None:
            self._parts.append(content)
        if self._answered:
            return
        if self._raw_think:  # reasoning inline as content: the answer starts after </think>
            r.reasoning_chunks += 1
            if "</think>" in content:
                self._raw_think = False
                if content.split("</think>", 1)[1].strip():
                    self._answer(now)
        elif "<think>" in content:
            self._raw_think = r.think = True
            r.reasoning_chunks += 1
            if "</think>" in content:  # a whole block in one event
                self._raw_think = False
                if content.split("</think>", 1)[1].strip():
                    self._answer(now)
        elif content.strip():
            self._answer(now)

    def _answer(self, now: float) -> None:
        self._answered = True
        self.r.ttfa = now - self.r.start

    def finish(self) -> None:
        if self._parts is not None:
            self.r.text = "".join(self._parts)


def _data_lines(event: bytes) -> bytes | None:
    """The data of a multi-line event (comments and `event:` lines dropped), or None when it has none."""
    data = [ln[5:].removeprefix(b" ") for ln in event.split(b"\n") if ln[:5] == b"data:"]
    return b"\n".join(data) if data else None


@dataclass(frozen=True)
class Target:
    """Where and how to send: the chat URL, headers, and the request body's fixed fields."""

    base_url: str
    model: str
    headers: dict[str, str]
    body: dict[str, Any]  # temperature, ignore_eos, extra fields
    keep_text: bool = False

    @property
    def chat_url(self) -> str:
        return f"{self.base_url}/v1/chat/completions"

    def encode(self, prompt: Prompt, max_tokens: int | None = None) -> bytes:
        body = {
            "model": self.model,
            "messages": list(prompt.messages),
            "max_tokens": max_tokens or prompt.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            **self.body,
        }
        return json.dumps(body).encode()


async def send(
    session: aiohttp.ClientSession, target: Target, body: bytes, r: RequestResult
) -> RequestResult:
    """POST one streaming request and fill `r` (created by the caller, so a cancelled request is recorded)."""
    parser = StreamParser(r, target.keep_text)
    try:
        async with session.post(target.chat_url, data=body, headers=target.headers) as resp:
            r.status = resp.status
            if resp.status != 200:
                r.error, r.error_kind = await _http_error(resp), f"http_{resp.status}"
                return r
            ctype = resp.headers.get("Content-Type", "")
            if not ctype.startswith("text/event-stream"):
                r.error_kind = "protocol"
                r.error = (
                    f"answered {ctype or 'without a content type'}, not an SSE stream (text/event-stream)"
                )
                return r
            read = resp.content.readany
            while data := await read():
                r.reads += 1
                if parser.feed(data, time.perf_counter()):
                    break
            if not parser.done:
                r.error, r.error_kind = "the stream ended before [DONE]", "disconnected"
            elif not resp.content.at_eof():  # read the body's end, so the connection can be reused (bounded:
                with contextlib.suppress(TimeoutError):  # a server holding it open past [DONE] loses it)
                    await asyncio.wait_for(resp.content.read(), TAIL_S)
    except StreamError as e:
        r.error, r.error_kind = str(e), e.kind
    except TimeoutError:
        r.error, r.error_kind = "timed out", "timeout"
    except aiohttp.ClientConnectorError as e:
        r.error, r.error_kind = f"cannot connect: {e.os_error or e}", "connect"
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError) as e:
        r.error, r.error_kind = f"connection lost: {type(e).__name__}: {e}", "disconnected"
    except aiohttp.ClientError as e:
        r.error, r.error_kind = f"{type(e).__name__}: {e}", "protocol"
    except asyncio.CancelledError:
        r.error, r.error_kind = "cancelled (run stopped)", "cancelled"
        raise
    finally:
        if not r.end:
            r.end = time.perf_counter()
        parser.finish()
    return r


async def _http_error(resp: aiohttp.ClientResponse) -> str:
    """A one-line description of a non-200 answer: the OpenAI error message when there is one."""
    raw = await resp.content.read(2000)
    text = raw.decode(errors="replace")
    try:
        err = json.loads(text).get("error")
        msg = err.get("message") if isinstance(err, dict) else err
    except (ValueError, AttributeError):
        msg = None
    if not msg:
        msg = " ".join(text.split())[:160] or resp.reason or "no body"
    return f"HTTP {resp.status}: {msg}"
