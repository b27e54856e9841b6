"""Server metrics: exact counter moves, sliding windows on a fake clock, exposition that parses."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.parser import text_string_to_metric_families

from chimera_serve.metrics import ServerMetrics


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def scrape(metrics: ServerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(metrics: ServerMetrics, name: str, **labels: str) -> float:
    return scrape(metrics)[(name, tuple(sorted({"model": metrics.model, **labels}.items())))]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metrics(clock: FakeClock) -> ServerMetrics:
    return ServerMetrics("mini-r1", window_s=300, clock=clock, vllm_registry=None)


def finish(metrics: ServerMetrics, **overrides) -> None:
    args = dict(
        endpoint="/v1/chat/completions", status=200, finish_reason="stop", prompt_tokens=11,
        completion_tokens=7, reasoning_tokens=3, outcome="complete", e2e_s=0.5,
    )  # fmt: skip
    metrics.request_finished(**{**args, **overrides})


def test_counters_move_by_exact_amounts(metrics):
    metrics.request_started()
    finish(metrics)
    metrics.request_started()
    finish(
        metrics,
        prompt_tokens=5,
        completion_tokens=20,
        reasoning_tokens=20,
        outcome="unclosed",
        finish_reason="length",
    )
    metrics.request_started()
    finish(metrics, endpoint="/v1/completions", completion_tokens=4, reasoning_tokens=0, outcome="none")
    assert value(metrics, "chimera_prompt_tokens_total") == 27
    assert value(metrics, "chimera_completion_tokens_total") == 31
    assert value(metrics, "chimera_reasoning_tokens_total") == 23
    for outcome in ("complete", "unclosed", "none"):
        assert value(metrics, "chimera_think_responses_total", outcome=outcome) == 1
    chat = {"endpoint": "/v1/chat/completions", "status": "200"}
    assert value(metrics, "chimera_requests_total", **chat, finish_reason="stop") == 1
    assert value(metrics, "chimera_requests_total", **chat, finish_reason="length") == 1
    assert (
        value(
            metrics, "chimera_requests_total", endpoint="/v1/completions", status="200", finish_reason="stop"
        )
        == 1
    )
    assert value(metrics, "chimera_output_tokens_per_request_count") == 3
    assert value(metrics, "chimera_output_tokens_per_request_sum") == 31
    assert value(metrics, "chimera_output_tokens_per_request_bucket", le="5.0") == 1
    assert value(metrics, "chimera_e2e_request_latency_seconds_sum") == 1.5
    assert value(metrics, "chimera_requests_in_flight") == 0


def test_rejected_requests_count_by_status_only(metrics):
    metrics.request_rejected(endpoint="/v1/chat/completions", status=401)
    metrics.request_rejected(endpoint="/v1/chat/completions", status=429)
    metrics.request_rejected(endpoint="/admin/../etc/passwd", status=404)  # unknown paths share one label
    samples = scrape(metrics)
    rejected = {"model": "mini-r1", "finish_reason": "none"}
    for endpoint, status in [
        ("/v1/chat/completions", "401"),
        ("/v1/chat/completions", "429"),
        ("other", "404"),
    ]:
        key = tuple(sorted({**rejected, "endpoint": endpoint, "status": status}.items()))
        assert samples[("chimera_requests_total", key)] == 1
    for name in (
        "chimera_prompt_tokens_total",
        "chimera_completion_tokens_total",
        "chimera_requests_in_flight",
    ):
        assert value(metrics, name) == 0
    for outcome in ("complete", "unclosed", "none"):
        assert value(metrics, "chimera_think_responses_total", outcome=outcome) == 0
    assert math.isnan(value(metrics, "chimera_think_rate"))


def test_errors_count_tokens_but_not_think(metrics):
    metrics.request_started()
    finish(metrics, status=500, finish_reason="weird", outcome=None, completion_tokens=2, reasoning_tokens=2)
    assert value(metrics, "chimera_completion_tokens_total") == 2
    assert value(metrics, "chimera_think_window_responses") == 0
    labels = {"endpoint": "/v1/chat/completions", "status": "500", "finish_reason": "other"}
    assert value(metrics, "chimera_requests_total", **labels) == 1


def test_in_flight_and_queued(metrics):
    metrics.request_started()
    metrics.request_started()
    metrics.queued(+1)
    metrics.queued(+1)
    metrics.queued(-1)
    assert value(metrics, "chimera_requests_in_flight") == 2
    assert value(metrics, "chimera_requests_queued") == 1
    finish(metrics)
    assert value(metrics, "chimera_requests_in_flight") == 1


def test_think_rate_window_and_decay(metrics, clock):
    for outcome in ("complete", "unclosed", "none", "none"):
        metrics.request_started()
        finish(metrics, outcome=outcome)
    assert metrics.think_rate() == 0.5  # complete and unclosed both reasoned inside <think>
    clock.t += 200
    metrics.request_started()
    finish(metrics, outcome="complete")
    assert value(metrics, "chimera_think_rate") == pytest.approx(3 / 5)
    assert value(metrics, "chimera_think_window_responses") == 5
    clock.t += 101  # the first four left the window
    assert value(metrics, "chimera_think_rate") == 1.0
    assert value(metrics, "chimera_think_window_responses") == 1
    clock.t += 300  # traffic stopped: no data, not a stale rate
    assert math.isnan(value(metrics, "chimera_think_rate"))
    assert value(metrics, "chimera_think_responses_total", outcome="complete") == 2  # counters never decay


def test_tokens_per_second_and_per_day(metrics, clock):
    clock.t += 10
    metrics.record_first_token(0.25)
    for _ in range(50):
        metrics.record_tokens(2, 0.02)
    clock.t += 10  # 100 tokens, 20 s since start (shorter than the window)
    assert metrics.tokens_per_second() == pytest.approx(5.0)
    assert value(metrics, "chimera_output_tokens_per_second") == pytest.approx(5.0)
    assert value(metrics, "chimera_projected_tokens_per_day") == pytest.approx(86400 * 5.0)
    clock.t += 580  # 600 s since start: the window is full length, the tokens 590 s old
    assert value(metrics, "chimera_output_tokens_per_second") == 0
    metrics.record_tokens(600, None)
    clock.t += 100
    assert metrics.tokens_per_second() == pytest.approx(2.0)
    assert metrics.tokens_per_day() == pytest.approx(86400 * 2.0)
    assert value(metrics, "chimera_time_to_first_token_seconds_count") == 1
    assert (
        value(metrics, "chimera_inter_token_latency_seconds_count") == 100
    )  # one per token, first chunk none
    assert value(metrics, "chimera_inter_token_latency_seconds_sum") == pytest.approx(50 * 0.02)


def test_render_includes_vllm_registry_and_parses(clock):
    vllm_registry = CollectorRegistry()
    Gauge("vllm:num_requests_running", "fake vLLM gauge", registry=vllm_registry).set(3)
    metrics = ServerMetrics("mini-v3", clock=clock, vllm_registry=vllm_registry)
    names = {f.name for f in text_string_to_metric_families(metrics.render()[0].decode())}
    assert "vllm:num_requests_running" in names
    assert {
        "chimera_prompt_tokens", "chimera_requests", "chimera_think_responses", "chimera_think_rate",
        "chimera_output_tokens_per_second", "chimera_projected_tokens_per_day", "chimera_requests_in_flight",
        "chimera_requests_queued", "chimera_time_to_first_token_seconds",
        "chimera_inter_token_latency_seconds",
        "chimera_e2e_request_latency_seconds", "chimera_output_tokens_per_request",
    } <= names  # fmt: skip


def test_two_instances_do_not_collide(clock):
    a = ServerMetrics("a", clock=clock, vllm_registry=None)
    b = ServerMetrics("b", clock=clock, vllm_registry=None)
    a.request_rejected(endpoint="/v1/models", status=401)
    assert b"chimera_requests_total{" not in b.render()[0]


def test_default_render_includes_process_registry(clock):
    body, _ = ServerMetrics("m", clock=clock).render()
    assert b"chimera_think_rate" in body and b"python_info" in body  # the default registry came along


def test_window_must_be_positive():
    with pytest.raises(ValueError, match="window"):
        ServerMetrics("m", window_s=0)
