"""chimera-load: load tests of OpenAI-compatible chat endpoints that know about reasoning models.

Why beside guidellm, aiperf, locust and `vllm bench serve`: those measure TTFT as the first token of any kind and
count output tokens; for a reasoning model the user waits for the first *answer* token, and what a Chimera child
changes is how many tokens it thinks. This tool times both (TTFT and time to first answer token), counts reasoning
and answer tokens apart (from `reasoning_content` / `reasoning` deltas and `usage.completion_tokens_details`),
reports the think-tag rate, checks its counts against the server's own /metrics counters, and turns the best
load that meets an SLO into tokens/day and replicas. It is small (aiohttp, numpy, pydantic, rich; matplotlib if
there) and its stream parser sustains tens of thousands of tokens per second on one core.

Library use (what the CLI does):

    from benchmarks.load import LoadConfig, Concurrency, SyntheticWorkload, Fixed, run_load, write_report
    cfg = LoadConfig(url="http://127.0.0.1:8000", shape=Concurrency(concurrency=32), max_requests=500,
                     workload=SyntheticWorkload(input_len=Fixed(value=256), output_len=Fixed(value=256)))
    result = run_load(cfg)            # LoadResult: .levels (figures per level), .capacity, .crosscheck, .partial
    write_report(result, Path("benchmarks/results"), "load-my-run", command="...")

Modules: config (pydantic models), workload (prompts), client (one streaming request, SSE parsing), scheduler
(load shapes and bounds), stats (a level's figures), sweep (saturation, best SLO load, capacity), crosscheck
(/metrics), runner (`run_load`), progress (live display), report and plots (files), cli (`chimera-load`);
fake_server (a canned-token endpoint for tests and the generator benchmark), servers (starting real servers for
benchmarks), generator_bench and vllm_bench (benchmarks of the tool itself).
"""

from benchmarks.load.config import (
    Concurrency,
    Fixed,
    JsonlWorkload,
    LabWorkload,
    LoadConfig,
    LogNormal,
    Rate,
    Slo,
    Sweep,
    SyntheticWorkload,
    Uniform,
)
from benchmarks.load.errors import ConfigError, CrossCheckError, EndpointError, LoadError, RunAborted
from benchmarks.load.report import write_report
from benchmarks.load.runner import LoadResult, arun_load, run_load

__all__ = [
    "Concurrency",
    "ConfigError",
    "CrossCheckError",
    "EndpointError",
    "Fixed",
    "JsonlWorkload",
    "LabWorkload",
    "LoadConfig",
    "LoadError",
    "LoadResult",
    "LogNormal",
    "Rate",
    "RunAborted",
    "Slo",
    "Sweep",
    "SyntheticWorkload",
    "Uniform",
    "arun_load",
    "run_load",
    "write_report",
]
