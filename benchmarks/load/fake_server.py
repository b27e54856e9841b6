"""A trivial OpenAI-compatible endpoint streaming canned tokens: the server of the generator benchmark and of
the tests that need no model.

    python -m benchmarks.load.fake_server [--port 0] [--itl-ms 20] [--reasoning 0] [--api-key K]
                                          [--keepalive] [--die-after N] [--miscount N] [--cpu C]

Every streaming chat completion gets `max_tokens` tokens (as if `ignore_eos`): first `--reasoning` of them as
`reasoning_content` deltas, then answer `content`, then a usage chunk (with `reasoning_tokens`) and `[DONE]`.
One global ticker emits one token for every open stream each `--itl-ms`, as an engine step emits one token for
every running sequence (`--itl-ms 0`: the whole answer at once). Chunks carry the fields chimera-serve's do, so
they are as long. `--keepalive` adds SSE comment lines (`: keep-alive`) before the first token and between
tokens; `--die-after N` kills the process abruptly once N chat requests have arrived (a crash mid-run);
`--api-key` answers 401 to any other key; `--miscount N` makes /metrics over-count N completion tokens per
response (a server whose counters lie, for the cross-check's test). GET /v1/models, /metrics (chimera_* token counters), /health.

Raw asyncio, no web framework: one core streams several times what the benchmark needs. Prints
`listening on PORT` once bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os

MODEL = "fake"


def _event(obj: dict) -> bytes:
    """One SSE event as one HTTP/1.1 chunk."""
    ev = b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
    return f"{len(ev):x}\r\n".encode() + ev + b"\r\n"


def _token_chunk(kind: str, text: str) -> bytes:
    delta = {kind: text} if kind == "content" else {"reasoning_content": text, "reasoning": text}
    return _event({"id": "chatcmpl-0123456789abcdef0123456789abcdef", "object": "chat.completion.chunk",
                   "created": 1700000000, "model": MODEL, "choices": [{"index": 0, "delta": delta}]})  # fmt: skip


REASONING, CONTENT = _token_chunk("reasoning", " step"), _token_chunk("content", " tok")
KEEPALIVE = b"e\r\n: keep-alive\n\n\r\n"
END = b"0\r\n\r\n"
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
    b"Cache-Control: no-cache\r\n\r\n"
)


class Stream:
    """One response in progress."""

    __slots__ = ("prompt", "proto", "reasoning", "sent", "total")

    def __init__(self, proto: FakeProtocol, total: int, reasoning: int, prompt: int) -> None:
        self.proto, self.total, self.reasoning, self.prompt, self.sent = proto, total, reasoning, prompt, 0


class FakeServer:
    """Shared state: open streams, the ticker, counters, options."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.streams: list[Stream] = []
        self.requests = 0
        self.counts = {"prompt": 0, "completion": 0, "reasoning": 0}
        self.peak_streams = 0

    def start_stream(self, proto: FakeProtocol, body: dict) -> None:
        self.requests += 1
        if self.a.die_after and self.requests > self.a.die_after:
            os._exit(17)  # a crash: no goodbye, every connection reset
        total = max(1, int(body.get("max_tokens") or body.get("max_completion_tokens") or 16))
        prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        s = Stream(proto, total, min(self.a.reasoning, total), prompt)
        proto.transport.write(SSE_HEAD + (KEEPALIVE if self.a.keepalive else b""))
        if self.a.itl_ms <= 0:
            while s.sent < s.total:
                self.emit(s)
            return
        self.streams.append(s)
        self.peak_streams = max(self.peak_streams, len(self.streams))

    def emit(self, s: Stream) -> bool:
        """Write the stream's next token (and its end after the last); True while it goes on."""
        t = s.proto.transport
        if t.is_closing():
            return False
        s.sent += 1
        out = REASONING if s.sent <= s.reasoning else CONTENT
        if self.a.keepalive and s.sent % 10 == 0:
            out += KEEPALIVE
        if s.sent < s.total:
            t.write(out)
            return True
        usage = {"prompt_tokens": s.prompt, "completion_tokens": s.total, "total_tokens": s.prompt + s.total,
                 "completion_tokens_details": {"reasoning_tokens": s.reasoning}}  # fmt: skip
        tail = _event({"id": "chatcmpl-0", "object": "chat.completion.chunk", "created": 1700000000,
                       "model": MODEL, "choices": [], "usage": usage})  # fmt: skip
        done = b"data: [DONE]\n\n"
        t.write(out + tail + f"{len(done):x}\r\n".encode() + done + b"\r\n" + END)
        for k, v in (
            ("prompt", s.prompt),
            ("completion", s.total + self.a.miscount),
            ("reasoning", s.reasoning),
        ):
            self.counts[k] += v
        s.proto.busy = False
        if s.proto.buf:  # a request that arrived while this one streamed
            s.proto.data_received(b"")
        return False

    async def ticker(self) -> None:
        period = self.a.itl_ms / 1000
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        while True:
            next_t += period
            await asyncio.sleep(max(0.0, next_t - loop.time()))
            if self.streams:
                self.streams = [s for s in self.streams if self.emit(s)]

    def metrics(self) -> bytes:
        c, label = self.counts, f'{{model="{MODEL}"}}'
        return (
            f"chimera_prompt_tokens_total{label} {c['prompt']}.0\n"
            f"chimera_completion_tokens_total{label} {c['completion']}.0\n"
            f"chimera_reasoning_tokens_total{label} {c['reasoning']}.0\n"
            f"fake_peak_streams {self.peak_streams}\nfake_requests_total {self.requests}\n"
        ).encode()


def _response(status: str, body: bytes, ctype: str = "application/json") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    )


class FakeProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive, just enough for chimera-load, vllm bench and curl."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.buf = b""
        self.busy = False
        self.transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while not self.busy:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
            length = int(headers.get("content-length", "0"))
            if len(self.buf) < head_end + 4 + length:
                return
            body = self.buf[head_end + 4 : head_end + 4 + length]
            self.buf = self.buf[head_end + 4 + length :]
            method, path = [*head[0].split(" "), "", ""][:2]
            self.handle(method, path, headers, body)

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        a, w = self.server.a, self.transport.write
        if a.api_key and headers.get("authorization") != f"Bearer {a.api_key}":
            err = {"error": {"message": "invalid API key", "type": "invalid_request_error", "code": 401}}
            w(_response("401 Unauthorized", json.dumps(err).encode()))
        elif method == "GET" and path == "/v1/models":
            w(
                _response(
                    "200 OK",
                    json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode(),
                )
            )
        elif method == "GET" and path == "/metrics":
            w(_response("200 OK", self.server.metrics(), "text/plain; version=0.0.4"))
        elif method == "GET" and path == "/health":
            w(_response("200 OK", b'{"status":"ok"}'))
        elif method == "POST" and path == "/v1/chat/completions":
            req = json.loads(body or b"{}")
            if not req.get("stream"):
                w(_response("400 Bad Request", b'{"error":{"message":"this fake server only streams"}}'))
                return
            self.busy = True  # further requests on this connection wait for the stream's end
            self.server.start_stream(self, req)
        else:
            w(_response("404 Not Found", b'{"error":{"message":"not found"}}'))


async def serve(a: argparse.Namespace) -> None:
    server = FakeServer(a)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: FakeProtocol(server), a.host, a.port, backlog=4096)
    print(f"listening on {srv.sockets[0].getsockname()[1]}", flush=True)
    ticker = asyncio.ensure_future(server.ticker()) if a.itl_ms > 0 else None
    async with srv:
        await srv.serve_forever()
    if ticker is not None:
        ticker.cancel()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.load.fake_server", description=__doc__.split("\n")[0]
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--itl-ms", type=float, default=20.0, help="between tokens of a stream (0: all at once)")
    p.add_argument("--reasoning", type=int, default=0, help="reasoning tokens before the answer")
    p.add_argument("--api-key", help="answer 401 to requests without this bearer key")
    p.add_argument("--keepalive", action="store_true", help="send SSE comment lines between tokens")
    p.add_argument("--die-after", type=int, default=0, help="exit abruptly at chat request N+1")
    p.add_argument("--miscount", type=int, default=0, help="count N completion tokens too many per response")
    p.add_argument("--cpu", type=int, help="pin to this core")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop (if installed)")
    a = p.parse_args(argv)
    if a.cpu is not None:
        os.sched_setaffinity(0, {a.cpu})
    if a.uvloop:
        import uvloop

        uvloop.install()
    asyncio.run(serve(a))


if __name__ == "__main__":
    main()
