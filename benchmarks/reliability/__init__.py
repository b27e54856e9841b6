"""Reliability figures of `chimera-serve` (issue 18): the real server, HTTP and signals, in five scenarios.

Every scenario starts its own `chimera-serve` subprocess (`python -m chimera_serve.cli`) on the demo child
(merge/recipes/mini-chimera.yaml, built by the merge stage if missing) with vLLM's CPU engine, drives it with
real clients and checks what the README's Server section promises:

1. schemathesis  the server's own OpenAPI document, `--checks all`, all phases, 200 examples per operation, a
                 fixed seed: 0 server errors and 0 undocumented statuses; the other checks reported by reason.
2. hang-ups      1,000 streams at the server's capacity (4 running + 4 queued) that hang up at seeded random
                 points (before reading a byte, mid-reasoning, mid-answer): afterwards the engine holds 0
                 requests, the in-flight and queued gauges are 0, the RSS of the server's processes is within
                 5% of its value after a warm-up, and "What is 27+48?" still gets "75".
3. saturation    twice the capacity of clients looping for 60 s: the excess gets 429 with `Retry-After`, no
                 5xx, every admitted stream completes, and afterwards "75" through the official openai client.
4. SIGTERM       50 long streams in flight (5 running, 45 queued), a 20 s drain grace: every stream ends with
                 `[DONE]` or a `service_unavailable` error event, never cut; exit 0 within the grace + 10 s.
5. engine kill   SIGKILL of the engine's processes under load: streams end with an `engine_dead` error event,
                 new requests get 503, /health turns non-200 (how fast), the process exits non-zero (when).

    python -m benchmarks.reliability [--quick] [--only hangups,sigterm] [--model build/mini-chimera]

`--quick` (100 hang-ups, 10 s of saturation, 10 streams at SIGTERM, 8 schemathesis examples) takes a few
minutes plus the engine starts. The full run writes benchmarks/results/reliability.{json,md} (command,
machine, date, code version); `--quick` or `--only` write reliability-dev.* instead. Exit 1 when a must-hold
figure is missed, after writing the results.
"""
