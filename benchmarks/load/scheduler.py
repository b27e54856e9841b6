"""Load shapes: how requests are started, bounded in count and time, and stopped when the server goes away.

Fixed concurrency: N workers, each sending its next request as soon as its last one ends (a closed loop:
the load adapts to the server). Rate: requests start at scheduled times, evenly spaced or with exponential
gaps (a Poisson process, seeded), whatever the server does (an open loop, as traffic behaves); a client-side
cap on requests in flight keeps the client bounded, and every arrival it delays is counted as late.

Bounds hold per level: at most `max_requests` requests; none starts after `max_duration_s`; requests still
in flight then get `drain_s` more, after which they are cancelled (and counted). `abort_after_failures`
consecutive connection failures mean the server is gone: the level stops, marked partial, with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
import numpy as np

from benchmarks.load.client import TRANSPORT_KINDS, RequestResult, Target, send
from benchmarks.load.workload import Prompt


@dataclass(frozen=True)
class LoadPoint:
    """One level of load: a concurrency, or a request rate with its arrival process."""

    kind: str  # "concurrency" | "rate"
    value: float
    arrivals: str = ""  # for rates: "constant" | "poisson"

    @property
    def label(self) -> str:
        if self.kind == "concurrency":
            return f"concurrency {int(self.value)}"
        return f"{self.arrivals} rate {self.value:.3g}/s"


@dataclass
class Counters:
    """Live figures of the running level, for the progress display (written here, read there)."""

    label: str = ""
    issued: int = 0
    done: int = 0
    errors: int = 0
    tokens: int = 0
    in_flight: int = 0
    started: float = field(default_factory=time.perf_counter)


@dataclass
class LevelRun:
    """What one level produced: every request (failed and cancelled ones included) and its time span."""

    load: LoadPoint
    results: list[RequestResult]
    t_start: float
    t_end: float
    steady: tuple[float, float]  # the window in which the load was fully applied (see stats.steady_tokens)
    stopped_by: str  # "requests" | "duration" | "aborted"
    late_starts: int = 0
    abort_reason: str | None = None

    @property
    def partial(self) -> bool:
        return self.abort_reason is not None


class Level:
    """Shared state of one level's run: results, counters, bounds and the failure breaker."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        target: Target,
        prompts: Sequence[Prompt],
        *,
        max_requests: int,
        max_duration_s: float,
        abort_after_failures: int,
        counters: Counters,
        stop: asyncio.Event,
    ) -> None:
        self.session, self.target, self.prompts = session, target, prompts
        self.bodies = [target.encode(p) for p in prompts]  # encoded once: JSON off the hot path
        self.max_requests = max_requests
        self.deadline = time.perf_counter() + max_duration_s
        self.abort_after = abort_after_failures
        self.counters = counters
        self.stop = stop  # set by the breaker or by the user (Ctrl-C)
        self.results: list[RequestResult] = []
        self.abort_reason: str | None = None
        self._failures = 0

    def may_start(self) -> bool:
        return (
            len(self.results) < self.max_requests
            and time.perf_counter() < self.deadline
            and not self.stop.is_set()
        )

    async def one(self) -> None:
        i = len(self.results)
        r = RequestResult(i, time.perf_counter(), expected=self.prompts[i % len(self.prompts)].expected)
        self.results.append(r)
        c = self.counters
        c.issued += 1
        c.in_flight += 1
        try:
            await send(self.session, self.target, self.bodies[i % len(self.bodies)], r)
        finally:
            c.in_flight -= 1
            c.done += 1
            if r.error is None:
                c.tokens += r.output_tokens
                self._failures = 0
            else:
                c.errors += 1
                self._breaker(r)

    def _breaker(self, r: RequestResult) -> None:
        if r.error_kind not in TRANSPORT_KINDS:
            self._failures = 0
            return
        self._failures += 1
        if self._failures >= self.abort_after and not self.stop.is_set():
            self.abort_reason = (
                f"the server went away mid-run ({self._failures} connection failures in a row, "
                f"last: {r.error})"
            )
            self.stop.set()

    def run_result(self, load: LoadPoint, t0: float, steady: tuple[float, float], late: int = 0) -> LevelRun:
        t_end = max((r.end for r in self.results), default=t0)
        if self.abort_reason is None and self.stop.is_set():
            self.abort_reason = "interrupted by the user"
        by = (
            "aborted"
            if self.abort_reason
            else "requests"
            if len(self.results) >= self.max_requests
            else "duration"
        )
        return LevelRun(load, self.results, t0, t_end, steady, by, late, self.abort_reason)


async def _finish(tasks: set[asyncio.Task[None]], lv: Level, drain_s: float) -> None:
    """Wait for `tasks` until the bound (or drain) ends or the run is stopped, then cancel what is left."""
    if not tasks:
        return
    stop_wait = asyncio.ensure_future(lv.stop.wait())
    remaining = max(lv.deadline - time.perf_counter(), 0.0) + drain_s
    pending = set(tasks)
    try:
        while pending and remaining > 0 and not lv.stop.is_set():
            t0 = time.perf_counter()
            _, pending = await asyncio.wait(
                pending | {stop_wait}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            pending.discard(stop_wait)
            remaining -= time.perf_counter() - t0
    finally:
        stop_wait.cancel()
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def run_concurrency(lv: Level, concurrency: int, drain_s: float) -> LevelRun:
    """`concurrency` closed-loop workers until a bound is reached."""
    t0 = time.perf_counter()

    async def worker() -> None:
        while lv.may_start():
            await lv.one()

    tasks = {asyncio.ensure_future(worker()) for _ in range(concurrency)}
    await _finish(tasks, lv, drain_s)
    # Steady window: from the start of the `concurrency`-th request (all workers busy) to the start of the
    # last request (after it, workers fall idle one by one).
    starts = sorted(r.start for r in lv.results)
    steady = (starts[min(concurrency, len(starts)) - 1], starts[-1]) if starts else (t0, t0)
    return lv.run_result(LoadPoint("concurrency", concurrency), t0, steady)


def arrival_offsets(rate: float, arrivals: str, n: int, seed: int) -> np.ndarray:
    """Start times (s after the first) of `n` requests at `rate`/s: even spacing or exponential gaps."""
    if arrivals == "constant":
        return np.arange(n) / rate
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=n)
    gaps[0] = 0.0
    return np.cumsum(gaps)


async def run_rate(
    lv: Level, rate: float, arrivals: str, max_in_flight: int, seed: int, drain_s: float
) -> LevelRun:
    """Requests started at scheduled times (open loop) until a bound is reached."""
    t0 = time.perf_counter()
    offsets = arrival_offsets(rate, arrivals, lv.max_requests, seed)
    tasks: set[asyncio.Task[None]] = set()
    late = 0
    for off in offsets:
        delay = t0 + off - time.perf_counter()
        if delay > 0.05:  # a long gap: wake early if the run is stopped (Ctrl-C, server gone)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lv.stop.wait(), timeout=delay)
        elif delay > 0:
            await asyncio.sleep(delay)
        if not lv.may_start():
            break
        if lv.counters.in_flight >= max_in_flight:  # the client's cap, not the server's doing
            late += 1
            while lv.counters.in_flight >= max_in_flight and not lv.stop.is_set():
                await asyncio.sleep(0.001)
        task = asyncio.ensure_future(lv.one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    last_start = max((r.start for r in lv.results), default=t0)
    await _finish(set(tasks), lv, drain_s)
    # Steady window: requests in flight build up for about one request's duration, and stay until the last
    # start; from then on they drain.
    e2e = [r.end - r.start for r in lv.results if r.ok]
    ramp = float(np.median(e2e)) if e2e else 0.0
    return lv.run_result(LoadPoint("rate", rate, arrivals), t0, (t0 + ramp, last_start), late)
