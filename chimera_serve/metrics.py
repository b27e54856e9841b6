"""Every Prometheus metric of the server, in one registry of its own.

Why a registry of our own: at engine start vLLM unregisters collectors of the default registry that look
like its own (0.32: names starting "vllm:"; older releases: any name containing "vllm"). Ours live apart
and join the default registry, where vLLM's ``vllm:*`` metrics are, only when ``/metrics`` is rendered.
One ``ServerMetrics`` per app, no globals.

Names (label ``model`` on all; base units)
    chimera_prompt_tokens_total, chimera_completion_tokens_total, chimera_reasoning_tokens_total
    chimera_requests_total{endpoint, status, finish_reason}
    chimera_time_to_first_token_seconds, chimera_inter_token_latency_seconds,
    chimera_e2e_request_latency_seconds, chimera_output_tokens_per_request (histograms)
    chimera_think_responses_total{outcome="complete"|"unclosed"|"none"}
    chimera_think_rate, chimera_think_window_responses, chimera_output_tokens_per_second,
    chimera_projected_tokens_per_day (sliding window, computed at scrape time)
    chimera_requests_in_flight, chimera_requests_queued

Sliding window (default 300 s)
    ``chimera_think_rate`` = responses with a reasoning section (outcome ``complete`` or ``unclosed``: an
    answer cut by max_tokens while thinking did reason inside <think>) / responses with an outcome, both
    over the window; NaN when the window holds none (so "rate < x" alerts stay quiet when idle; the count
    is in ``chimera_think_window_responses``). ``chimera_output_tokens_per_second`` = tokens streamed in
    the window / the window's length (or the time since start, if shorter); tokens/day = 86400 x tokens/s.
    Events sit in 1-second bins, so memory stays bounded at any traffic; values are computed when scraped
    and decay to 0 (rate: NaN) once traffic stops.

Label values are bounded: unknown endpoints become "other", finish reasons outside the known set "other";
never a user id or an API key.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from chimera_serve.reasoning import ThinkOutcome

ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/models"})
FINISH_REASONS = frozenset({"stop", "length", "abort", "error", "tool_calls", "timeout", "none"})
OUTCOMES: tuple[ThinkOutcome, ...] = ("complete", "unclosed", "none")

# Buckets follow vLLM's, with finer low ends for fast GPUs.
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 640)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5, 5, 10, 80)
_E2E_BUCKETS = (0.1, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 45, 60, 120, 240, 480, 960, 1920, 7680)
_TOKENS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000)


class _Window:
    """Sums of a few values over the last `window_s` seconds, kept in 1-second bins."""

    def __init__(self, window_s: float, width: int) -> None:
        self.window_s = window_s
        self._width = width
        self._bins: deque[list[float]] = deque()  # [bin_start, v0, v1, ...], oldest first

    def add(self, now: float, *values: float) -> None:
        start = math.floor(now)
        if not self._bins or self._bins[-1][0] != start:
            self._bins.append([start] + [0.0] * self._width)
        last = self._bins[-1]
        for i, v in enumerate(values, start=1):
            last[i] += v

    def sums(self, now: float) -> list[float]:
        # A bin leaves the window once all of it is older than window_s: values stay at most 1 s longer.
        while self._bins and self._bins[0][0] + 1 <= now - self.window_s:
            self._bins.popleft()
        return [sum(b[i] for b in self._bins) for i in range(1, self._width + 1)]


class ServerMetrics:
    """The server's collectors for one served model; call from request handlers, render on /metrics.

    `vllm_registry` is rendered after ours: prometheus_client's default registry, where vLLM's in-process
    stat logger puts ``vllm:*`` (pass vLLM's ``get_prometheus_registry()`` in multiprocess mode, or None).
    """

    def __init__(
        self,
        model: str,
        *,
        window_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        vllm_registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        if not window_s > 0:
            raise ValueError(f"metrics window must be > 0 seconds, got {window_s}; e.g. 300")
        self.model = model
        self.registry = CollectorRegistry()
        self._vllm_registry = vllm_registry
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()  # scrapes may run in a worker thread
        self._tokens = _Window(window_s, 1)  # [tokens]
        self._think = _Window(window_s, 2)  # [responses with a section, responses with an outcome]

        reg, lm = self.registry, {"model": model}

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, ("model",), registry=reg).labels(**lm)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, ("model",), buckets=buckets, registry=reg).labels(**lm)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, ("model",), registry=reg).labels(**lm)

        self._prompt_tokens = counter("chimera_prompt_tokens", "Prompt tokens processed.")
        self._completion_tokens = counter("chimera_completion_tokens", "Completion tokens (with reasoning).")
        self._reasoning_tokens = counter("chimera_reasoning_tokens", "Completion tokens of reasoning.")
        self._requests = Counter(
            "chimera_requests",
            "Requests by endpoint, HTTP status and finish reason (rejected ones included).",
            ("model", "endpoint", "status", "finish_reason"),
            registry=reg,
        )
        self._ttft = histogram("chimera_time_to_first_token_seconds", "Time to first token.", _TTFT_BUCKETS)
        self._itl = histogram("chimera_inter_token_latency_seconds", "Between output tokens.", _ITL_BUCKETS)
        self._e2e = histogram("chimera_e2e_request_latency_seconds", "Arrival to last byte.", _E2E_BUCKETS)
        self._out_tokens = histogram("chimera_output_tokens_per_request", "Tokens out.", _TOKENS_BUCKETS)
        think = Counter(
            "chimera_think_responses",
            "Responses by reasoning section: complete, unclosed (cut while thinking) or none.",
            ("model", "outcome"),
            registry=reg,
        )
        self._think_outcomes = {o: think.labels(model=model, outcome=o) for o in OUTCOMES}
        self._in_flight = gauge("chimera_requests_in_flight", "Requests admitted and not finished.")
        self._queued = gauge("chimera_requests_queued", "Requests waiting for the engine.")
        # Sliding-window values are computed when scraped, so they decay when traffic stops.
        windowed = {
            "chimera_think_rate": (
                "Share of responses that reasoned inside <think> (NaN: none).",
                self.think_rate,
            ),
            "chimera_think_window_responses": ("Responses counted in chimera_think_rate.", self._think_count),
            "chimera_output_tokens_per_second": ("Output tokens per second.", self.tokens_per_second),
            "chimera_projected_tokens_per_day": ("Output tokens per day at that rate.", self.tokens_per_day),
        }
        for name, (doc, f) in windowed.items():
            gauge(name, f"{doc} Over the last {window_s:g} s.").set_function(f)

    # -- request lifecycle ----------------------------------------------------------------------------

    def request_started(self) -> None:
        """A request was admitted (passed auth and validation); pair with request_finished."""
        self._in_flight.inc()

    def queued(self, delta: int) -> None:
        """+1 when a request starts waiting for the engine, -1 when it leaves the queue (output or abort)."""
        self._queued.inc(delta)

    def record_first_token(self, ttft_s: float) -> None:
        self._ttft.observe(ttft_s)

    def record_tokens(self, n: int, itl_s: float | None) -> None:
        """`n` output tokens just streamed (one engine chunk), for the throughput window.

        `itl_s`: seconds since the previous chunk of this request (None for the first); it is spread evenly
        over the chunk's `n` tokens, one observation per token.
        """
        if n <= 0:
            return
        now = self._clock()
        with self._lock:
            self._tokens.add(now, n)
        if itl_s is None:
            return
        if n == 1:  # vLLM's delta mode: one token per chunk (called per token: keep it lean)
            self._itl.observe(itl_s)
            return
        for _ in range(n):
            self._itl.observe(itl_s / n)

    def request_finished(
        self,
        *,
        endpoint: str,
        status: int,
        finish_reason: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        reasoning_tokens: int,
        outcome: ThinkOutcome | None,
        e2e_s: float,
    ) -> None:
        """An admitted request ended (any status). `outcome` None (errors, disconnects) leaves the think
        counters and the think-rate window alone; tokens the engine did produce are still counted."""
        self._in_flight.dec()
        self._count_request(endpoint, status, finish_reason)
        self._prompt_tokens.inc(prompt_tokens)
        self._completion_tokens.inc(completion_tokens)
        self._reasoning_tokens.inc(reasoning_tokens)
        self._out_tokens.observe(completion_tokens)
        self._e2e.observe(e2e_s)
        if outcome is not None:
            self._think_outcomes[outcome].inc()
            with self._lock:
                self._think.add(self._clock(), float(outcome != "none"), 1.0)

    def request_rejected(self, *, endpoint: str, status: int) -> None:
        """A request refused before it was admitted (400/401/404/413/429/503): counted by status only."""
        self._count_request(endpoint, status, None)

    def _count_request(self, endpoint: str, status: int, finish_reason: str | None) -> None:
        reason = "none" if finish_reason is None else finish_reason
        self._requests.labels(
            model=self.model,
            endpoint=endpoint if endpoint in ENDPOINTS else "other",
            status=str(int(status)),
            finish_reason=reason if reason in FINISH_REASONS else "other",
        ).inc()

    # -- sliding-window values (computed at scrape time) ----------------------------------------------

    def think_rate(self) -> float:
        with self._lock:
            thinking, total = self._think.sums(self._clock())
        return thinking / total if total else math.nan

    def _think_count(self) -> float:
        with self._lock:
            return self._think.sums(self._clock())[1]

    def tokens_per_second(self) -> float:
        with self._lock:
            now = self._clock()
            (tokens,) = self._tokens.sums(now)
        span = max(min(self._tokens.window_s, now - self._started), 1.0)
        return tokens / span

    def tokens_per_day(self) -> float:
        return 86400.0 * self.tokens_per_second()

    # -- exposition -----------------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """(body, content type) for GET /metrics: our metrics, then vLLM's (text format 0.0.4)."""
        body = generate_latest(self.registry)
        if self._vllm_registry is not None:
            body += generate_latest(self._vllm_registry)
        return body, CONTENT_TYPE_PLAIN_0_0_4
