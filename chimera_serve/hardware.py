"""What the machine is, and the engine settings it implies when the operator gave none.

vLLM's CPU backend needs two things a GPU does not, both read from the environment of the engine processes:

* ``VLLM_CPU_KVCACHE_SPACE`` (GiB per rank). Without it vLLM reserves ``gpu_memory_utilization`` (0.9) of the
  NUMA node's memory at start-up and refuses to start when that much is not free (on a 24 GB machine that has
  been busy a while, page cache alone makes it refuse). We give each rank a share of the memory that is
  actually available: a quarter of it split over the ranks, at least 1 GiB, at most 16 GiB.
* ``VLLM_CPU_OMP_THREADS_BIND`` when there is more than one rank: vLLM binds each rank's OpenMP threads to a
  NUMA node and refuses ("Not enough allowed NUMA nodes") when the machine has fewer nodes than ranks. We
  split the CPUs this process may use into one contiguous group per rank instead (``"0|1"`` on 2 cores).

Both are defaults only: a value already in the environment wins. On a GPU nothing is set here; batch sizes
come from vLLM's own defaults for the device (the OpenAI-server defaults: 1024 sequences on an H100/H200).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

GIB = 1 << 30
KV_SHARE = 0.25  # of MemAvailable, for all ranks together
KV_MIN_GIB, KV_MAX_GIB = 1, 16


class HardwareError(ValueError):
    """The machine cannot run the requested layout (one line, says what to change)."""


def on_cpu() -> bool:
    """vLLM's own platform detection (NVML, not CUDA: the API process must not initialise CUDA before the
    engine starts its processes, or they cannot use it)."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def mem_available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """The kernel's estimate of memory available to new work (MemAvailable), or None if unknown."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def kv_cache_gib(available_bytes: int | None, ranks: int) -> int:
    """GiB of KV cache per CPU rank: a quarter of the available memory over the ranks, clamped to [1, 16]."""
    if available_bytes is None:
        return KV_MIN_GIB
    share = int(available_bytes * KV_SHARE / ranks // GIB)
    return max(KV_MIN_GIB, min(KV_MAX_GIB, share))


def thread_binding(cpus: Sequence[int], ranks: int) -> str:
    """vLLM's OMP binding string: the CPUs in `ranks` contiguous groups, e.g. [0, 1, 2, 3], 2 -> "0-1|2-3"."""
    cpus = sorted(cpus)
    if len(cpus) < ranks:
        raise HardwareError(
            f"{ranks} engine ranks need at least {ranks} CPU cores but this process may use {len(cpus)}; "
            "lower --tensor-parallel-size"
        )
    per, extra = divmod(len(cpus), ranks)
    groups, start = [], 0
    for r in range(ranks):
        size = per + (1 if r < extra else 0)
        group = cpus[start : start + size]
        start += size
        contiguous = group[-1] - group[0] == len(group) - 1
        groups.append(
            f"{group[0]}-{group[-1]}" if contiguous and len(group) > 1 else ",".join(map(str, group))
        )
    return "|".join(groups)


def cpu_engine_env(
    environ: Mapping[str, str], ranks: int, cpus: Sequence[int], available_bytes: int | None
) -> dict[str, str]:
    """Environment variables to add for vLLM's CPU backend (those already set are left alone)."""
    env: dict[str, str] = {}
    if "VLLM_CPU_KVCACHE_SPACE" not in environ:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib(available_bytes, ranks))
    if ranks > 1 and "VLLM_CPU_OMP_THREADS_BIND" not in environ:
        env["VLLM_CPU_OMP_THREADS_BIND"] = thread_binding(cpus, ranks)
    return env


def apply_engine_env(ranks: int) -> dict[str, str]:
    """Set the CPU backend's defaults in this process's environment (engine processes inherit it).

    Returns what was set, for the start-up log. On every machine the engine's processes are spawned, not
    forked: the engine starts from a worker thread while the HTTP server runs, and forking a multi-threaded
    process can deadlock the child.
    """
    env = {} if "VLLM_WORKER_MULTIPROC_METHOD" in os.environ else {"VLLM_WORKER_MULTIPROC_METHOD": "spawn"}
    if on_cpu():
        env |= cpu_engine_env(os.environ, ranks, sorted(os.sched_getaffinity(0)), mem_available_bytes())
    os.environ.update(env)
    return env
