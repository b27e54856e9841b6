"""`run_load(config) -> LoadResult`: the library entry point behind the CLI.

1. preflight   GET /v1/models (the model's name when none is given), then one short streaming request;
               a refusal here raises `EndpointError` with a one-line message (nothing measured yet)
2. warm-up     `warmup_requests`, not measured
3. /metrics    read before the measured levels (the cross-check's baseline)
4. levels      one (fixed concurrency or rate) or a sweep; a server that goes away stops the run, and
               what was measured is kept, marked partial (`LoadResult.partial`, `abort_reason`)
5. /metrics    read again; the counters' increase against the client's counts (`LoadResult.crosscheck`)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from benchmarks.load import crosscheck, sweep
from benchmarks.load.client import JSON_DECODER, RequestResult, Target, send
from benchmarks.load.config import Concurrency, LoadConfig, Rate, Sweep, SyntheticWorkload
from benchmarks.load.errors import ConfigError, EndpointError
from benchmarks.load.scheduler import Counters, Level, LevelRun, run_concurrency, run_rate
from benchmarks.load.stats import summarize
from benchmarks.load.workload import Prompt, build_prompts


class Display(Protocol):
    """What the runner tells a progress display (benchmarks.load.progress)."""

    def level_started(self, counters: Counters) -> None: ...
    def level_finished(self, stats: dict[str, Any]) -> None: ...
    def refresh(self) -> None: ...


@dataclass
class LoadResult:
    """One run: the endpoint, every level's figures, the sweep's verdict, the cross-check, and whether the
    run finished (`partial` False) or stopped early (`abort_reason`). `runs` keeps every request."""

    config: LoadConfig
    endpoint: dict[str, Any]
    levels: list[dict[str, Any]] = field(default_factory=list)
    runs: list[LevelRun] = field(default_factory=list)
    sweep: dict[str, Any] | None = None
    capacity: dict[str, Any] | None = None
    crosscheck: dict[str, Any] | None = None
    abort_reason: str | None = None
    started_utc: str = ""
    wall_s: float = 0.0
    client_cpu_s: float = 0.0

    @property
    def partial(self) -> bool:
        return self.abort_reason is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": "chimera-load",
            "started_utc": self.started_utc,
            "config": self.config.redacted(),
            "endpoint": self.endpoint,
            "partial": self.partial,
            "abort_reason": self.abort_reason,
            "wall_s": self.wall_s,
            "client_cpu_s": self.client_cpu_s,
            "client": client_info(self.config),
            "levels": self.levels,
            "sweep": self.sweep,
            "capacity": self.capacity,
            "crosscheck": self.crosscheck,
        }


def run_load(
    config: LoadConfig, *, display: Display | None = None, handle_sigint: bool = False
) -> LoadResult:
    """Run `config` to the end (or until the server goes away) and return every figure."""
    _raise_fd_limit(config)
    factory, _ = loop_factory(config.event_loop)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(arun_load(config, display=display, handle_sigint=handle_sigint))


def _raise_fd_limit(config: LoadConfig) -> None:
    """One socket per stream: lift the soft open-files limit toward the hard one when the load needs it."""
    shape = config.shape
    need = 256 + (
        shape.concurrency if isinstance(shape, Concurrency)
        else shape.max_in_flight if isinstance(shape, Rate)
        else 4 * shape.max_concurrency
    )  # fmt: skip
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (need if hard == resource.RLIM_INFINITY else min(need, hard), hard)
        )


def loop_factory(choice: str) -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """The event loop to run on and its name: uvloop where asked for or (auto) installed, else asyncio's."""
    if choice != "asyncio":
        try:
            import uvloop

            return uvloop.new_event_loop, "uvloop"
        except ImportError:
            if choice == "uvloop":
                raise ConfigError("event_loop uvloop: uvloop is not installed (pip install uvloop)") from None
    return None, "asyncio"


def client_info(config: LoadConfig) -> dict[str, Any]:
    """What the client ran on: it bounds how many tokens/s it can read."""
    return {
        "event_loop": loop_factory(config.event_loop)[1],
        "json_decoder": JSON_DECODER,
        "aiohttp": aiohttp.__version__,
    }


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _session(config: LoadConfig) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(total=config.request_timeout_s, sock_connect=30)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)


async def arun_load(
    config: LoadConfig, *, display: Display | None = None, handle_sigint: bool = False
) -> LoadResult:
    """`run_load` inside a running event loop."""
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    t0, cpu0 = time.perf_counter(), _cpu_s()
    synthetic = isinstance(config.workload, SyntheticWorkload)
    stop = asyncio.Event()
    if handle_sigint:  # Ctrl-C stops the run; what was measured is still reported
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    prompts = build_prompts(
        config.workload, _levels_max(config) * config.max_requests + config.warmup_requests + 1
    )
    headers = {"Content-Type": "application/json"}
    if config.api_key is not None:
        headers["Authorization"] = f"Bearer {config.api_key.get_secret_value()}"
    async with _session(config) as session:
        models = await _models(session, config, headers)
        model = config.model or _first_model(models, config.url)
        body: dict[str, Any] = {"temperature": config.temperature, **config.extra_body}
        if config.eos_ignored:
            body["ignore_eos"] = True
        keep = config.keep_text or any(p.expected is not None for p in prompts)
        target = Target(config.url, model, headers, body, keep_text=keep)
        await _preflight(session, target, prompts[-1], config.url)
        warm = prompts[len(prompts) - config.warmup_requests - 1 : -1] if config.warmup_requests else []
        await asyncio.gather(*(send(session, target, target.encode(p), RequestResult(-1, time.perf_counter()))
                               for p in warm))  # fmt: skip
        measured = prompts[: len(prompts) - config.warmup_requests - 1] if synthetic else prompts
        before = (
            await crosscheck.scrape_settled(session, config.url, headers, model)
            if config.crosscheck
            else None
        )
        kind = crosscheck.server_kind(before)
        endpoint = {"url": config.url, "model": model, "models": models, "server_kind": kind}
        result = LoadResult(config, endpoint, started_utc=started)
        await _levels(result, session, target, measured, stop, display)
        if config.crosscheck and before is not None:
            after = await crosscheck.scrape_settled(session, config.url, headers, model)
            totals = crosscheck.client_totals([r for run in result.runs for r in run.results])
            result.crosscheck = crosscheck.compare(before, after, model, totals)
        elif config.crosscheck:
            result.crosscheck = crosscheck.compare(None, None, model, {})
    if handle_sigint:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)
    result.wall_s, result.client_cpu_s = time.perf_counter() - t0, _cpu_s() - cpu0
    return result


async def _levels(
    result: LoadResult,
    session: aiohttp.ClientSession,
    target: Target,
    prompts: list[Prompt],
    stop: asyncio.Event,
    display: Display | None,
) -> None:
    """Run the configured shape's levels into `result`."""
    cfg, shape = result.config, result.config.shape

    async def level(point: Concurrency | Rate) -> dict[str, Any]:
        label = (
            f"concurrency {point.concurrency}"
            if isinstance(point, Concurrency)
            else f"rate {point.rate:.3g}/s"
        )
        # Each level starts further into the prompts: a prefix cache must not have seen them.
        offset = len(result.runs) * cfg.max_requests
        offset %= len(prompts)
        lv = Level(session, target, prompts[offset:] + prompts[:offset], max_requests=cfg.max_requests,
                   max_duration_s=cfg.max_duration_s, abort_after_failures=cfg.abort_after_failures,
                   counters=(counters := Counters(label=label)), stop=stop)  # fmt: skip
        ticker = asyncio.ensure_future(_tick(display, counters)) if display else None
        cpu0 = _cpu_s()
        try:
            if isinstance(point, Concurrency):
                run = await run_concurrency(lv, point.concurrency, cfg.drain_s)
            else:
                run = await run_rate(
                    lv, point.rate, point.arrivals, point.max_in_flight, point.seed, cfg.drain_s
                )
        finally:
            if ticker:
                ticker.cancel()
        stats = summarize(run, cfg.slo)
        stats["client_cpu_s"] = _cpu_s() - cpu0
        result.runs.append(run)
        result.levels.append(stats)
        if run.abort_reason:
            result.abort_reason = run.abort_reason
        if display:
            display.level_finished(stats)
        return stats

    if isinstance(shape, Concurrency | Rate):
        stats = await level(shape)
        if not stats["partial"]:  # a capacity figure needs a level that ran to its bound
            result.capacity = sweep.capacity(stats, cfg.target_tokens_per_day)
        return
    stopped = None
    if shape.over == "concurrency":
        for c in sweep.concurrency_levels(shape):
            await level(Concurrency(concurrency=c))
            reason = sweep.stop_reason(result.levels, shape.saturation_gain)
            if reason and (result.partial or not shape.run_all_levels):
                stopped = reason
                break
    else:
        probe = await level(Concurrency(concurrency=shape.max_concurrency))
        probe["probe"] = True
        for rate in sweep.rate_levels(shape, probe["requests_s"]):
            if result.partial or probe["requests_s"] <= 0:
                break
            await level(Rate(rate=rate, arrivals=shape.arrivals, max_in_flight=4 * shape.max_concurrency))
        stopped = f"aborted: {result.abort_reason}" if result.partial else None
    result.sweep = sweep.summarize_sweep(result.levels, shape, cfg.target_tokens_per_day, stopped)
    result.capacity = result.sweep["best"]


def _levels_max(config: LoadConfig) -> int:
    """How many levels the shape can run (each gets fresh synthetic prompts)."""
    shape = config.shape
    if not isinstance(shape, Sweep):
        return 1
    if shape.over == "rate":
        return 1 + len(shape.rate_fractions)
    return len(sweep.concurrency_levels(shape))


async def _tick(display: Display, counters: Counters) -> None:
    display.level_started(counters)
    while True:
        display.refresh()
        await asyncio.sleep(0.25)


# -- preflight -------------------------------------------------------------------------------------------


async def _models(session: aiohttp.ClientSession, config: LoadConfig, headers: dict[str, str]) -> Any:
    """GET /v1/models: its JSON, or None where the endpoint has no such route (a router may not)."""
    url = f"{config.url}/v1/models"
    try:
        async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(30)) as r:
            if r.status in (401, 403):
                raise EndpointError(_auth_msg(config.url, r.status))
            if r.status != 200:
                return None
            with contextlib.suppress(ValueError, aiohttp.ContentTypeError):
                return await r.json()
            return None
    except aiohttp.ClientConnectorError as e:
        raise EndpointError(
            f"cannot reach {config.url}: {e.os_error or e}; is the server up and the URL right?"
        ) from None
    except (aiohttp.ClientError, TimeoutError) as e:
        raise EndpointError(
            f"{config.url} did not answer GET /v1/models: {type(e).__name__} {e}".strip()
        ) from None


def _first_model(models: Any, url: str) -> str:
    try:
        return str(models["data"][0]["id"])
    except (TypeError, KeyError, IndexError):
        raise EndpointError(
            f"{url} is not an OpenAI-compatible endpoint: GET /v1/models lists no model; pass --model NAME "
            "if it serves chat completions anyway"
        ) from None


def _auth_msg(url: str, status: int) -> str:
    return f"{url} refused the request ({status}): pass --api-key KEY (or set CHIMERA_LOAD_API_KEY) with a key it accepts"


async def _preflight(session: aiohttp.ClientSession, target: Target, prompt: Prompt, url: str) -> None:
    """One short streaming request; any failure becomes an `EndpointError` saying what is wrong."""
    r = await send(
        session, target, target.encode(prompt, max_tokens=4), RequestResult(-1, time.perf_counter())
    )
    if r.ok and (r.chunks or r.completion_tokens):
        return
    if r.ok:
        raise EndpointError(f"{url} is not an OpenAI-compatible endpoint: its stream carried no tokens")
    if r.error_kind == "connect":
        raise EndpointError(f"cannot reach {url}: {r.error}; is the server up and the URL right?")
    if r.status in (401, 403):
        raise EndpointError(_auth_msg(url, r.status))
    if r.status in (404, 405, 501) or r.error_kind == "protocol":
        raise EndpointError(
            f"{url} is not an OpenAI-compatible endpoint: POST /v1/chat/completions: {r.error}"
        )
    hint = (
        " (if it refuses a field chimera-load sends: --no-ignore-eos, --extra-body)"
        if r.status == 400
        else ""
    )
    raise EndpointError(f"{url}: the first request failed: {r.error}{hint}")
