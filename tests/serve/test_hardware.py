"""CPU defaults for vLLM's environment: KV cache per rank from available memory, thread groups per rank."""

from __future__ import annotations

import pytest

from chimera_serve.hardware import GIB, HardwareError, cpu_engine_env, kv_cache_gib, thread_binding


@pytest.mark.parametrize(
    ("available_gib", "ranks", "expected"),
    [(20, 1, 5), (20, 2, 2), (2, 1, 1), (200, 1, 16), (None, 1, 1)],
)
def test_kv_cache_share(available_gib: int | None, ranks: int, expected: int) -> None:
    assert kv_cache_gib(None if available_gib is None else available_gib * GIB, ranks) == expected


@pytest.mark.parametrize(
    ("cpus", "ranks", "expected"),
    [
        ([0, 1], 2, "0|1"),
        ([0, 1, 2, 3], 2, "0-1|2-3"),
        ([0, 1, 2, 3, 4], 2, "0-2|3-4"),
        ([0, 2, 4, 6], 2, "0,2|4,6"),
        ([3, 1, 2, 0], 1, "0-3"),
    ],
)
def test_thread_binding(cpus: list[int], ranks: int, expected: str) -> None:
    assert thread_binding(cpus, ranks) == expected


def test_more_ranks_than_cores_is_refused() -> None:
    with pytest.raises(HardwareError, match="at least 4 CPU cores"):
        thread_binding([0, 1], 4)


def test_values_already_set_win() -> None:
    env = cpu_engine_env({"VLLM_CPU_KVCACHE_SPACE": "3"}, 2, [0, 1], 20 * GIB)
    assert env == {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}
    assert cpu_engine_env({"VLLM_CPU_OMP_THREADS_BIND": "0"}, 1, [0, 1], 20 * GIB) == {
        "VLLM_CPU_KVCACHE_SPACE": "5"
    }
