"""What every scenario needs: a real `chimera-serve` on the demo child, a streaming client that can hang up
anywhere, and the server's own account of what it holds (/ready, /metrics, the RSS of its processes)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import psutil
from openai import AsyncOpenAI

from benchmarks.load.servers import Server, chimera_serve

MODEL_NAME = "mini-chimera"
API_KEY = "reliability-key-0123456789abcdef"
QUESTION, ANSWER = "What is 27+48?", "75"  # the demo child's answer, greedy
SMALL = (4, 4)  # max_num_seqs, max_queued: a capacity of 8, reached by a handful of clients
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
LONG_TOKENS = 230  # with ignore_eos: a stream as long as the 256-token context allows (~17-token prompts)


def adopt_orphans() -> None:
    """Make this process the reaper of its descendants' orphans (Linux PR_SET_CHILD_SUBREAPER): engine
    processes that outlive their server stay under this process, where `leftovers` finds and kills them."""
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def leftovers(timeout_s: float = 10.0) -> list[str]:
    """The processes under this one still running after `timeout_s` (a stopped server's orphans): killed."""
    _, alive = psutil.wait_procs(psutil.Process().children(recursive=True), timeout=timeout_s)
    names = []
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            names.append(f"{p.name()} (pid {p.pid})")
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    return names


@contextlib.contextmanager
def serving(model: Path, log_dir: Path, seqs: int, queued: int, *extra: str) -> Iterator[Server]:
    """`chimera-serve` on `model` (max_num_seqs `seqs`, max_queued `queued`), ready to serve.

    Afterwards every process of it is gone, also when it failed to start: SIGTERM (then SIGKILL) for the API
    process, SIGKILL for a process it left behind that is still there 10 s later."""
    flags = ["--max-num-seqs", str(seqs), "--max-queued", str(queued), "--keepalive-interval-s", "1", *extra]
    t0 = time.monotonic()
    try:
        with chimera_serve(model, log_dir, *flags, name=MODEL_NAME, api_key=API_KEY) as srv:
            print(f"  server ready in {time.monotonic() - t0:.0f} s (pid {srv.proc.pid}, log {srv.log_path})")
            yield srv
    finally:
        if left := leftovers():
            print(f"  killed what the server left behind: {', '.join(left)}")


def engine_processes(pid: int) -> list[psutil.Process]:
    """vLLM's processes under the API process: the engine core and its workers (not multiprocessing's
    resource tracker, which is no part of the engine)."""
    kids = psutil.Process(pid).children(recursive=True)
    return [p for p in kids if "resource_tracker" not in " ".join(p.cmdline())]


def rss_bytes(pid: int) -> tuple[int, int]:
    """Resident bytes of the API process and every process under it, and of the API process alone (where
    per-request state lives)."""
    root = psutil.Process(pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total, root.memory_info().rss


def session(concurrency: int = 0, auth: bool = True) -> aiohttp.ClientSession:
    headers = {"Authorization": f"Bearer {API_KEY}"} if auth else {}
    timeout = aiohttp.ClientTimeout(total=600, sock_connect=10)
    return aiohttp.ClientSession(
        headers=headers, timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency)
    )


def ask(a: int, b: int, **fields: Any) -> dict[str, Any]:
    """A streaming chat request for a two-digit sum (what the demo child was trained on)."""
    content = f"What is {a}+{b}?"
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": content}], "stream": True, **fields}


@dataclass
class Reply:
    """One chat request as its client saw it (times on the monotonic clock)."""

    start: float
    status: int = 0  # 0: no HTTP response at all
    retry_after: str | None = None
    done: bool = False  # `data: [DONE]` arrived
    error: dict[str, Any] | None = None  # OpenAI's error object, from the JSON body or an SSE error event
    broken: str | None = None  # the connection failed (before a response, or cutting the stream)
    hung_up: str | None = None  # where this client hung up on purpose
    first_token: float | None = None
    end: float = 0.0
    reasoning: int = 0  # deltas carrying reasoning
    answers: int = 0  # deltas carrying answer text
    content: str = ""
    refusals: int = 0  # 429s answered before this request was admitted (sent again)

    @property
    def ending(self) -> str:
        """How the request ended, in one word or two: the unit of every scenario's tally."""
        if self.hung_up:
            return f"hung up {self.hung_up}"
        if self.status == 0:  # refused: nothing listens; no response: the connection closed before one
            return "refused" if (self.broken or "").startswith("ClientConnectorError") else "no response"
        if self.status != 200:
            code = (self.error or {}).get("code")
            return f"HTTP {self.status} {code}" if code else f"HTTP {self.status}"
        if self.done:
            return "[DONE]"
        if self.error:
            return f"error event {self.error.get('type')}/{self.error.get('code')}"
        return "cut"  # HTTP 200, then neither [DONE] nor an error event: what must never happen


async def chat(
    s: aiohttp.ClientSession, base: str, body: dict[str, Any], hang: tuple[str, int] | None = None
) -> Reply:
    """POST a chat request and read its SSE stream; `hang=("reasoning"|"answers", k)` drops the connection
    after the k-th delta of that kind, as a client that leaves does."""
    r = Reply(start=time.monotonic())
    try:
        async with s.post(f"{base}/v1/chat/completions", json=body) as resp:
            r.status, r.retry_after = resp.status, resp.headers.get("Retry-After")
            if resp.status != 200:
                r.error = json.loads(await resp.read()).get("error")
                return r
            async for line in resp.content:  # one SSE line at a time, as it arrives
                if not line.startswith(b"data: "):
                    continue  # blank separators, `: PROCESSING` / `: THINKING` comments
                if line.strip() == b"data: [DONE]":
                    r.done = True
                    break
                event = json.loads(line[6:])
                if "error" in event:
                    r.error = event["error"]
                    break
                delta = (event["choices"][0].get("delta") or {}) if event.get("choices") else {}
                if delta.get("reasoning_content") or delta.get("content"):
                    r.first_token = r.first_token or time.monotonic()
                r.reasoning += bool(delta.get("reasoning_content"))
                r.answers += bool(delta.get("content"))
                r.content += delta.get("content") or ""
                if hang and getattr(r, hang[0]) >= hang[1]:
                    r.hung_up = "mid-reasoning" if hang[0] == "reasoning" else "mid-answer"
                    resp.close()  # drops the connection with the rest of the stream unread
                    break
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        r.broken = f"{type(e).__name__}: {e}"
    finally:
        r.end = time.monotonic()
    return r


async def hang_up_unread(base: str, body: dict[str, Any], after_s: float) -> Reply:
    """Send a whole chat request on a raw socket and close it `after_s` later without reading a byte."""
    r = Reply(start=time.monotonic(), hung_up="before the first byte")
    url = urlsplit(base)
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    _, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(head.encode() + payload)
    await writer.drain()
    await asyncio.sleep(after_s)
    writer.close()  # a reset if the answer has begun to arrive (it lies unread in the buffer), else a FIN
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    r.end = time.monotonic()
    return r


def sample(metrics_text: str, name: str) -> float:
    """The value of a `model`-labelled gauge in Prometheus text."""
    for line in metrics_text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise ValueError(f"{name} is missing from /metrics")


async def held(http: aiohttp.ClientSession, base: str) -> dict[str, float]:
    """What the server holds: requests in the engine and admitted (/ready), the in-flight and queued gauge."""
    async with http.get(f"{base}/ready") as resp:
        ready = await resp.json()
    async with http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    return {
        "engine_requests": ready.get("engine_requests", -1),
        "admitted": ready.get("in_flight", -1),
        "chimera_requests_in_flight": sample(text, "chimera_requests_in_flight"),
        "chimera_requests_queued": sample(text, "chimera_requests_queued"),
    }


async def wait_held(
    http: aiohttp.ClientSession, base: str, key: str, n: int, timeout_s: float = 120.0
) -> None:
    """Wait until the server holds `n` requests or more by `held`'s `key` (RuntimeError after `timeout_s`)."""
    t0 = time.monotonic()
    while (now := (await held(http, base))[key]) < n:
        if time.monotonic() - t0 > timeout_s:
            raise RuntimeError(f"the server held {now:g} requests ({key}), not {n}, after {timeout_s:g} s")
        await asyncio.sleep(0.05)


async def settle(
    http: aiohttp.ClientSession, base: str, timeout_s: float = 30.0
) -> tuple[dict[str, float], float]:
    """Poll until the server holds nothing (or `timeout_s`): what it holds then, and the seconds it took."""
    t0 = time.monotonic()
    while True:
        now = await held(http, base)
        if not any(now.values()) or time.monotonic() - t0 > timeout_s:
            return now, round(time.monotonic() - t0, 2)
        await asyncio.sleep(0.2)


async def answers(base: str) -> dict[str, str | None]:
    """The answer to QUESTION through the official openai client, plain and streamed (greedy)."""
    client = AsyncOpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    msgs: Any = [{"role": "user", "content": QUESTION}]
    plain = await client.chat.completions.create(model=MODEL_NAME, messages=msgs, temperature=0)
    stream = await client.chat.completions.create(model=MODEL_NAME, messages=msgs, temperature=0, stream=True)
    parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    await client.close()
    return {"content": plain.choices[0].message.content, "streamed_content": "".join(parts)}


async def wait_exit(srv: Server, timeout_s: float) -> tuple[int | None, float]:
    """The exit code (None: still running after `timeout_s`) and when it was seen (monotonic clock)."""
    deadline = time.monotonic() + timeout_s
    while srv.proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return srv.proc.poll(), time.monotonic()


def logged_at(log: Path, text: str) -> float | None:
    """When (epoch seconds) the server logged its first line holding `text` (lines that start with logging's
    `%Y-%m-%d %H:%M:%S,mmm`, the local time); None if it did not."""
    for line in log.read_text(errors="replace").splitlines():
        if text in line and line[:4].isdigit():
            return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def median(xs: list[float], default: float = 0.0) -> float:
    return statistics.median(xs) if xs else default


def tally(replies: list[Reply]) -> dict[str, int]:
    """How many requests ended each way, most common first."""
    return dict(Counter(r.ending for r in replies).most_common())


def examples(replies: list[Reply]) -> dict[str, str]:
    """One client-side message per way of ending that carries one (the error's, or the connection's)."""
    out: dict[str, str] = {}
    for r in replies:
        text = r.broken or (r.error or {}).get("message")
        if text and r.ending not in out:
            out[r.ending] = str(text)[:200]
    return out


@dataclass
class Outcome:
    """A scenario's result: figures (printed and tabled), its must-hold checks, and details for the JSON."""

    figures: dict[str, Any]
    checks: dict[str, bool]
    details: dict[str, Any] = field(default_factory=dict)
