"""The four load scenarios: streams that hang up, 2x saturation, SIGTERM under streams, the engine killed.

Each starts its own server (`harness.serving`), drives it with real HTTP clients and returns an `Outcome`:
figures, and the checks that must hold by the README's Server section.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import aiohttp

from benchmarks.load.servers import Server
from benchmarks.reliability.harness import (
    ANSWER,
    LONG_TOKENS,
    SMALL,
    Outcome,
    Reply,
    answers,
    ask,
    chat,
    engine_processes,
    examples,
    hang_up_unread,
    held,
    leftovers,
    logged_at,
    median,
    rss_bytes,
    serving,
    session,
    settle,
    tally,
    wait_exit,
    wait_held,
)

RSS_TOLERANCE = 0.05
HEALTH_WITHIN_S = 1.0  # README: "If the engine dies, /health turns 503 within a second"
EXIT_SLACK_S = 10.0  # after the drain grace: 5 s for aborted streams' error frames, then the shutdown itself
UNAVAILABLE = "error event service_unavailable/"  # + the code (`draining` when a drain ends a stream)
DEAD = ("error event service_unavailable/engine_dead", "HTTP 503 engine_dead")
FORCED = "force killing remaining processes"  # vLLM's process manager, when the engine ignores SIGTERM 5 s
GONE = ("refused", "no response")  # the process is exiting: the connection fails before a response byte


def teardown_s(srv: Server, t0_wall: float, exit_s: float) -> float | None:
    """Seconds between the server logging 'Finished server process' (uvicorn is done, the engine shut down)
    and its exit, `exit_s` after `t0_wall`: the interpreter's own teardown."""
    finished = logged_at(srv.log_path, "Finished server process")
    return None if finished is None else round(exit_s - (finished - t0_wall), 2)


def pair(rng: random.Random) -> tuple[int, int]:
    return rng.randint(10, 99), rng.randint(10, 99)


async def pool(jobs: list[Callable[[], Awaitable[Reply]]], concurrency: int) -> list[Reply]:
    """Run `jobs` with `concurrency` workers, each taking the next job when its last one ended."""
    todo, out = iter(jobs), []

    async def worker() -> None:
        for job in todo:
            out.append(await job())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def mib(n: int) -> float:
    return round(n / 2**20, 1)


def correct(got: dict[str, str | None]) -> bool:
    return got["content"] == ANSWER and got["streamed_content"] == ANSWER


# -- 2. hang-ups ---------------------------------------------------------------------------------------------


async def admitted(s: aiohttp.ClientSession, base: str, body: dict, hang: tuple[str, int]) -> Reply:
    """`chat`, sent again after a 429 (for up to 30 s): a hang-up needs an admitted stream to hang up on."""
    refusals, deadline = 0, time.monotonic() + 30
    while (r := await chat(s, base, body, hang)).status == 429 and time.monotonic() < deadline:
        refusals += 1
        await asyncio.sleep(0.05)
    r.refusals = refusals
    return r


def hang_jobs(
    s: aiohttp.ClientSession, base: str, rng: random.Random, n: int, shape: dict[str, float]
) -> list[Callable[[], Awaitable[Reply]]]:
    """`n` hang-ups at seeded random points: before the first byte (at U(0, TTFT) after sending), after the
    k-th reasoning delta (k ~ U(1, median reasoning deltas)), after the k-th answer delta (likewise)."""
    jobs: list[Callable[[], Awaitable[Reply]]] = []
    for _ in range(n):
        body = ask(*pair(rng), max_tokens=64)
        where = rng.choice(("unread", "reasoning", "answers"))
        if where == "unread":
            jobs.append(partial(hang_up_unread, base, body, rng.uniform(0, shape["ttft_s"])))
        else:
            jobs.append(
                partial(admitted, s, base, body, (where, rng.randint(1, max(1, round(shape[where])))))
            )
    return jobs


def hangups(model: Path, logs: Path, n: int, warmup: int, rng: random.Random) -> Outcome:
    with serving(model, logs, *SMALL) as srv:
        return asyncio.run(_hangups(srv, n, warmup, rng))


async def _hangups(srv: Server, n: int, warmup: int, rng: random.Random) -> Outcome:
    base, capacity = srv.base_url, sum(SMALL)
    async with session(capacity) as s, session(auth=False) as http:
        # 1. Whole streams: how many reasoning and answer deltas a stream has, and its time to first token.
        whole = await pool(
            [partial(chat, s, base, ask(*pair(rng), max_tokens=64)) for _ in range(warmup)], capacity
        )
        done = [r for r in whole if r.done]
        shape = {
            "reasoning": median([r.reasoning for r in done], 1),
            "answers": median([r.answers for r in done], 1),
            "ttft_s": median([r.first_token - r.start for r in done if r.first_token], 0.1),
        }
        print(f"  stream shape (median of {len(done)} whole streams): {shape}")
        # 2. Warm-up hang-ups, then the RSS baseline once the server holds nothing.
        await pool(hang_jobs(s, base, rng, warmup, shape), capacity)
        await settle(http, base)
        rss0, api0 = rss_bytes(srv.proc.pid)
        # 3. The hang-ups, then what the server still holds.
        t0 = time.monotonic()
        replies = await pool(hang_jobs(s, base, rng, n, shape), capacity)
        wall = time.monotonic() - t0
        after, settle_s = await settle(http, base)
        rss1, api1 = rss_bytes(srv.proc.pid)
        got = await answers(base)
    endings = tally(replies)
    unexpected = {k: v for k, v in endings.items() if not k.startswith("hung up") and k != "[DONE]"}
    change = rss1 / rss0 - 1
    figures = {
        "hang-ups": n, "concurrency (= capacity)": capacity, "seconds": round(wall, 1), "endings": endings,
        "429s before admission (sent again)": sum(r.refusals for r in replies),
        "held afterwards": after, "seconds until nothing held": settle_s,
        "RSS after warm-up (MiB)": mib(rss0), "RSS afterwards (MiB)": mib(rss1),
        "RSS change": f"{change:+.2%}", "API process alone (MiB)": f"{mib(api0)} -> {mib(api1)}",
        "answer afterwards": got,
    }  # fmt: skip
    checks = {
        "no error, 5xx or cut stream": not unexpected,
        "engine holds 0 requests": after["engine_requests"] == 0,
        "in-flight and queued gauges 0": after["chimera_requests_in_flight"]
        == after["chimera_requests_queued"]
        == 0,
        "RSS within 5% of the warm-up's": abs(change) <= RSS_TOLERANCE,
        f"answers {ANSWER!r} afterwards": correct(got),
    }
    details = {"stream_shape": shape, "warmup_endings": tally(whole), "messages": examples(replies)}
    return Outcome(figures, checks, details)


# -- 3. saturation -------------------------------------------------------------------------------------------


def saturation(model: Path, logs: Path, seconds: float, rng: random.Random) -> Outcome:
    with serving(model, logs, *SMALL) as srv:
        return asyncio.run(_saturation(srv, seconds, rng))


async def _saturation(srv: Server, seconds: float, rng: random.Random) -> Outcome:
    base, capacity = srv.base_url, sum(SMALL)
    replies: list[Reply] = []
    peak = 0.0
    deadline = time.monotonic() + seconds

    async def client(crng: random.Random) -> None:  # a closed loop: the next request as soon as one ends
        while time.monotonic() < deadline:
            replies.append(await chat(s, base, ask(*pair(crng), max_tokens=64)))

    async def watch() -> None:  # admitted requests must never exceed the capacity
        nonlocal peak
        while time.monotonic() < deadline:
            peak = max(peak, (await held(http, base))["admitted"])
            await asyncio.sleep(0.25)

    async with session() as s, session(auth=False) as http:
        clients = [client(random.Random(rng.random())) for _ in range(2 * capacity)]
        await asyncio.gather(watch(), *clients)
        after, settle_s = await settle(http, base)
        got = await answers(base)
    by_status = dict(Counter(str(r.status) for r in replies).most_common())
    too_many = [r for r in replies if r.status == 429]
    streams = [r for r in replies if r.status == 200]
    figures = {
        "clients (2x capacity)": 2 * capacity, "seconds": seconds, "requests": len(replies),
        "requests/s": round(len(replies) / seconds, 1), "by status": by_status,
        "429 without Retry-After": sum(r.retry_after is None for r in too_many),
        "Retry-After values": sorted({r.retry_after for r in too_many if r.retry_after}),
        "200 streams by ending": tally(streams), "peak admitted": peak,
        "held afterwards": after, "seconds until nothing held": settle_s, "answer afterwards": got,
    }  # fmt: skip
    checks = {
        "no 5xx": not any(r.status >= 500 for r in replies),
        "only 200 and 429 (and 429s seen)": set(by_status) <= {"200", "429"} and bool(too_many),
        "every 429 has Retry-After": all(r.retry_after for r in too_many),
        "every 200 stream ends with [DONE]": all(r.done for r in streams),
        "admitted never above capacity": peak <= capacity,
        "nothing held afterwards": not any(after.values()),
        f"answers {ANSWER!r} afterwards": correct(got),
    }
    return Outcome(figures, checks, {"messages": examples(replies)})


# -- 4. SIGTERM ----------------------------------------------------------------------------------------------


def sigterm(model: Path, logs: Path, n: int, grace_s: float, rng: random.Random) -> Outcome:
    # A tenth run at a time, the rest wait in the queue: ten stream lengths outlast the grace on a 2-core
    # machine, so both endings happen, [DONE] for the first waves and the error event for what the grace cuts.
    with serving(model, logs, max(1, n // 10), n - max(1, n // 10), "--drain-grace-s", f"{grace_s:g}") as srv:
        return asyncio.run(_sigterm(srv, n, grace_s, rng))


async def _sigterm(srv: Server, n: int, grace_s: float, rng: random.Random) -> Outcome:
    base = srv.base_url
    async with session() as s, session(auth=False) as http:
        body = partial(ask, max_tokens=LONG_TOKENS, ignore_eos=True)
        streams = [asyncio.create_task(chat(s, base, body(*pair(rng)))) for _ in range(n)]
        await wait_held(http, base, "admitted", n)  # every stream admitted (running or queued)
        # SIGTERM, and what a client sees while the server drains.
        t0, t0_wall = time.monotonic(), time.time()
        srv.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        async with http.get(f"{base}/ready") as resp:
            ready = resp.status
        async with http.get(f"{base}/health") as resp:
            health = f"{resp.status} {(await resp.json())['status']}"
        late = await chat(s, base, ask(27, 48))
        replies = await asyncio.gather(*streams)
        code, t_exit = await wait_exit(srv, grace_s + 120)
    left = leftovers()
    endings = tally(replies)
    completed = [round(r.end - t0, 2) for r in replies if r.done]
    errored = [round(r.end - t0, 2) for r in replies if r.ending.startswith(UNAVAILABLE)]
    figures = {
        "streams in flight at SIGTERM": n, "drain grace (s)": grace_s, "endings": endings,
        "seconds from SIGTERM to the last [DONE]": max(completed, default=None),
        "seconds from SIGTERM to the error events": [min(errored), max(errored)] if errored else None,
        "/ready while draining": ready, "/health while draining": health,
        "new request while draining": late.ending,
        "exit code": code, "seconds from SIGTERM to exit": round(t_exit - t0, 2),
        "of which after 'Finished server process' (log)": teardown_s(srv, t0_wall, t_exit - t0),
        "vLLM force-killed its engine at shutdown (server log)": FORCED in srv.log_path.read_text(),
        "processes left 10 s after the exit": left,
    }  # fmt: skip
    checks = {
        "every stream [DONE] or a service_unavailable error event": all(
            e == "[DONE]" or e.startswith(UNAVAILABLE) for e in endings
        ),
        "/ready 503 while draining": ready == 503,
        "new requests 503 while draining": late.status == 503,
        "exit code 0": code == 0,
        "no process left behind": not left,
        f"exit within the grace + {EXIT_SLACK_S:g} s": code is not None
        and t_exit - t0 <= grace_s + EXIT_SLACK_S,
    }
    return Outcome(figures, checks, {"messages": examples([*replies, late])})


# -- 5. engine killed ----------------------------------------------------------------------------------------


def engine_kill(model: Path, logs: Path, rng: random.Random) -> Outcome:
    with serving(model, logs, *SMALL) as srv:
        return asyncio.run(_engine_kill(srv, rng))


async def first_unhealthy(http: aiohttp.ClientSession, base: str, since: float) -> tuple[float | None, str]:
    """Seconds from `since` until /health answers non-200 (polled every 20 ms), and what it answered."""
    while time.monotonic() - since < 60:
        try:
            async with http.get(f"{base}/health", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                if resp.status != 200:
                    return time.monotonic() - since, f"{resp.status} {(await resp.json())['status']}"
        except (aiohttp.ClientError, TimeoutError) as e:
            return time.monotonic() - since, f"no answer ({type(e).__name__})"
        await asyncio.sleep(0.02)
    return None, "200 for 60 s"


async def _engine_kill(srv: Server, rng: random.Random) -> Outcome:
    base, capacity = srv.base_url, sum(SMALL)
    replies: list[Reply] = []
    stop = asyncio.Event()

    async def client(crng: random.Random) -> None:  # long streams in a loop until the server is gone
        while not stop.is_set():
            replies.append(
                r := await chat(s, base, ask(*pair(crng), max_tokens=LONG_TOKENS, ignore_eos=True))
            )
            if r.status == 0:
                return

    async with session() as s, session(auth=False) as http:
        clients = [asyncio.create_task(client(random.Random(rng.random()))) for _ in range(capacity)]
        await wait_held(http, base, "engine_requests", SMALL[0])  # the engine full of streams
        await asyncio.sleep(1.0)
        victims = engine_processes(srv.proc.pid)
        names = sorted(p.name() for p in victims)
        t_kill, t_kill_wall = time.monotonic(), time.time()
        for p in victims:
            p.kill()
        health_s, health = await first_unhealthy(http, base, t_kill)
        code, t_exit = await wait_exit(srv, 120)
        stop.set()
        await asyncio.gather(*clients)
    left = leftovers()
    in_flight = [r for r in replies if r.start < t_kill < r.end]
    after = [r for r in replies if r.start >= t_kill]
    figures = {
        "killed (SIGKILL)": names, "streams in flight at the kill": len(in_flight),
        "their endings": tally(in_flight), "requests sent after the kill": tally(after),
        "seconds until their error": round(max((r.end - t_kill for r in in_flight), default=0), 2),
        "/health answered": health, "seconds until /health non-200": health_s and round(health_s, 3),
        "exit code": code, "seconds until exit": round(t_exit - t_kill, 2),
        "of which after 'Finished server process' (log)": teardown_s(srv, t_kill_wall, t_exit - t_kill),
        "processes left 10 s after the exit": left,
    }  # fmt: skip
    checks = {
        "streams in flight end with engine_dead (or [DONE])": bool(in_flight)
        and set(tally(in_flight)) <= {"[DONE]", *DEAD},
        "later requests get a 503 (or no connection)": set(tally(after)) <= {*DEAD, *GONE},
        f"/health non-200 within {HEALTH_WITHIN_S:g} s": health_s is not None
        and health_s <= HEALTH_WITHIN_S
        and not health.startswith("no answer"),
        "exit code non-zero": code not in (None, 0),
        "no process left behind": not left,
    }
    before = [r for r in replies if r.end <= t_kill]
    checks["streams before the kill complete"] = all(r.done for r in before)
    return Outcome(figures, checks, {"messages": examples(replies)})
