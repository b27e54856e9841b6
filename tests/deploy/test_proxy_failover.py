"""Two chimera-serve replicas on the demo child behind a real Envoy (the gateway's config); SIGTERM one under load.

Replica A is small on purpose (2 sequences, no queue): under the steady load it answers some requests 429, which
Envoy must retry on B. Then A gets SIGTERM while it streams tokens: its /ready turns 503 (health checks eject
it), requests that still reach it get 503 (retried on B), and its streams in flight finish before it exits 0.
The client must see none of this: every response 200 and complete, reasoning split as the server split it.
The longer run with figures is benchmarks/proxy_failover.py.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks._common import build_demo_child
from benchmarks.proxy_cluster import (
    API_KEY,
    MODEL_NAME,
    Load,
    ProxyCluster,
    sigterm_mid_stream,
    wait_exit,
)

pytestmark = pytest.mark.engine
SMALL = ["--max-num-seqs", "2", "--max-queued", "0"]  # replica A: a third concurrent request gets 429
AUTH = {"Authorization": f"Bearer {API_KEY}"}
DRAIN_HOOK = Path(__file__).resolve().parents[2] / "docker/gateway-drain.py"  # the gateway's preStop


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyCluster]:
    chosen = os.environ.get("CHIMERA_TEST_MODEL")
    model = Path(chosen) if chosen else build_demo_child(tmp_path_factory.mktemp("demo") / "mini-chimera")
    c = ProxyCluster(model, tmp_path_factory.mktemp("proxy"), extra={"A": SMALL})
    try:
        c.start()
        yield c
    finally:
        c.close()


def test_models_metadata_through_the_proxy(cluster: ProxyCluster) -> None:
    r = httpx.get(f"{cluster.url}/v1/models", headers=AUTH, timeout=10)
    assert r.status_code == 200
    card = r.json()["data"][0]
    # The fields OpenRouter's provider contract reads, with values from the server's settings and engine.
    assert card["id"] == card["name"] == MODEL_NAME
    assert card["hugging_face_id"] == "chimera/mini-chimera"
    assert card["context_length"] == card["max_model_len"] == 256
    assert card["pricing"]["prompt"] == "0.0000005" and card["pricing"]["completion"] == "0.00000215"
    assert card["quantization"] == "bf16" and card["max_output_length"] == 256
    assert "reasoning" in card["supported_features"] and "max_tokens" in card["supported_sampling_parameters"]
    upstream = cluster.replica(r.headers["x-chimera-upstream"])
    direct = httpx.get(f"{upstream.url}/v1/models", headers=AUTH, timeout=10).json()
    assert r.json() == direct  # the proxy passes the body through untouched
    assert httpx.get(f"{cluster.url}/v1/models", timeout=10).status_code == 401  # auth is the server's


def test_reasoning_fields_intact_through_the_proxy(cluster: ProxyCluster) -> None:
    body = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": "What is 27+48?"}],
        "temperature": 0,
    }
    via = httpx.post(f"{cluster.url}/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    upstream = cluster.replica(via.headers["x-chimera-upstream"])
    direct = httpx.post(f"{upstream.url}/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    msg, ref = via.json()["choices"][0]["message"], direct.json()["choices"][0]["message"]
    assert msg == ref  # greedy on the same replica: the same bytes, proxied or not
    assert msg["reasoning_content"] and msg["reasoning"] == msg["reasoning_content"]
    assert msg["content"].strip() == "75" and "think>" not in msg["content"]


async def _failover(cluster: ProxyCluster) -> dict:
    victim = cluster.replicas[0]
    load = Load(cluster.url, concurrency=6)
    run = asyncio.ensure_future(load.run())
    await asyncio.sleep(3.0)  # both replicas serving; A overflows into 429s
    busy = await sigterm_mid_stream(cluster, victim, load)
    t_term = time.monotonic()
    assert victim.proc is not None
    code = await wait_exit(victim.proc, timeout_s=90)
    t_exit = time.monotonic()
    await asyncio.sleep(2.0)  # the survivor alone
    load.stop.set()
    await run
    return {"streams": load.done, "busy": busy, "code": code, "t_term": t_term, "t_exit": t_exit}


def test_sigterm_one_replica_under_load_no_client_errors(cluster: ProxyCluster) -> None:
    out = asyncio.run(_failover(cluster))
    streams, t_term, t_exit = out["streams"], out["t_term"], out["t_exit"]
    stats = cluster.stats()

    bad = [(s.prompt, s.upstream, p) for s in streams for p in s.problems()]
    assert bad == [], bad[:5]  # 0 client-visible errors, every stream complete, reasoning split
    assert out["code"] == 0, cluster.replicas[0].log_path.read_text(errors="replace")[-3000:]
    assert out["busy"] >= 1  # the SIGTERM landed while A streamed tokens to the client

    on_a = [s for s in streams if cluster.by_upstream(s.upstream) == "A"]
    drained = [s for s in on_a if s.start < t_term < (s.end or 0)]
    assert drained, "no stream of A was in flight at SIGTERM"  # ...and they finished (no problems above)
    assert all(cluster.by_upstream(s.upstream) == "B" for s in streams if s.start > t_exit)
    assert stats.get("retry.upstream_rq_429", 0) >= 1  # A's full queue, retried on B
    assert stats.get("upstream_rq_retry_overflow", 0) == 0
    assert stats["membership_healthy"] == 1  # A ejected, B serving

    # Not buffered by the proxy: a stream's tokens arrive spread over its generation, the first long before the
    # last. (On a starved machine the server itself may coalesce a stream's tokens into one chunk now and then,
    # so this is asked of nearly every stream, not of each.)
    spread = [s.last - s.first for s in streams if s.first is not None and s.last is not None]
    assert len(spread) == len(streams)
    assert sum(d > 0.01 for d in spread) >= 0.9 * len(spread), sorted(spread)[:10]
    assert statistics.median(spread) > 0.05 and statistics.median(s.chunks for s in streams) >= 5


async def _drain_gateway(cluster: ProxyCluster) -> tuple[int, int, float, list]:
    load = Load(cluster.url, concurrency=3)
    run = asyncio.ensure_future(load.run())
    while not [s for s in load.in_flight() if s.first]:  # streams flowing through Envoy
        await asyncio.sleep(0.01)
    busy = len(load.in_flight())
    env = {**os.environ, "ENVOY_ADMIN": f"http://127.0.0.1:{cluster.admin_port}"}
    drain = await asyncio.create_subprocess_exec(sys.executable, str(DRAIN_HOOK), "60", env=env)
    load.stop.set()  # each client finishes the stream it has and starts no other
    code = await drain.wait()
    t_done = time.monotonic()
    await run
    return busy, code, t_done, load.done


def test_gateway_prestop_drain_waits_for_streams_in_flight(cluster: ProxyCluster) -> None:
    """The gateway pod's preStop hook (docker/gateway-drain.py) returns only when Envoy's streams are done."""
    busy, code, t_done, streams = asyncio.run(_drain_gateway(cluster))
    assert code == 0 and busy >= 1
    assert [p for s in streams for p in s.problems()] == []
    last = max(s.end or 0 for s in streams)
    assert last <= t_done <= last + 5  # waited for the last stream, and not much longer
