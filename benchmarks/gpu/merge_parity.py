"""Does `chimera-merge --device cuda` compute the same bits as the CPU? Step by step, on random parents.

For three FP8 parents (full expert shape, and an edge shape that is not a multiple of 128) and three bf16
parents, merged with the benchmark's weights: the float32 interpolation, the block scales (amax / 448, and
the same through torch's CUDA division by a Python number), and the child's bytes, CUDA vs CPU: elements whose
bytes differ. Prints a table; saves benchmarks/results/merge-parity-gpu.{json,md}.

    PYTHONPATH=/tmp/site:. python3 -m benchmarks.gpu.merge_parity [SEEDS]
"""

from __future__ import annotations

import sys

import torch

from benchmarks._common import command_line, markdown_table, write_results
from merge import fp8, mix

WEIGHTS = (0.2, 0.4, 0.4)
SHAPES = ((2048, 7168), (576, 7168))


def differing(a: torch.Tensor, b: torch.Tensor) -> int:
    """Elements whose bytes differ (NaN payloads included)."""
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[a.element_size()]
    return int((a.cpu().view(ints) != b.cpu().view(ints)).sum())


def case(shape: tuple[int, int], seed: int, dtype: torch.dtype) -> dict[str, int | str]:
    g = torch.Generator().manual_seed(seed)
    cpu: list[mix.Part] = []
    for w in WEIGHTS:
        x = torch.randn(shape, generator=g) * 0.02
        cpu.append((w, *fp8.quantize(x)) if dtype == fp8.FP8_DTYPE else (w, x.to(dtype), None))
    gpu = [(w, t.cuda(), s.cuda() if s is not None else None) for w, t, s in cpu]
    x_cpu, x_gpu = mix.interpolate(cpu), mix.interpolate(gpu)
    amax = fp8.block_amax(x_cpu)
    out: dict[str, int | str] = {"shape": str(list(shape)), "dtype": str(dtype), "seed": seed}
    out["elements"] = x_cpu.numel()
    out["interpolation f32"] = differing(x_cpu, x_gpu)
    out["scales: amax_to_scale"] = differing(fp8.amax_to_scale(amax), fp8.amax_to_scale(amax.cuda()))
    out["scales: amax / 448.0"] = differing(amax / fp8.FP8_MAX, amax.cuda() / fp8.FP8_MAX)
    (q_cpu, s_cpu), (q_gpu, s_gpu) = mix.merge(cpu, dtype), mix.merge(gpu, dtype)
    out["child"] = differing(q_cpu, q_gpu)
    if s_cpu is not None and s_gpu is not None:
        out["child scales"] = differing(s_cpu, s_gpu)
    return out


def main() -> int:
    seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    rows = [
        case(shape, seed, dtype)
        for dtype in (fp8.FP8_DTYPE, torch.bfloat16)
        for shape in SHAPES
        for seed in range(seeds)
    ]
    keys = list(rows[0])
    md = markdown_table(keys, [[r.get(k, "-") for k in keys] for r in rows])
    write_results("merge-parity-gpu", {"command": command_line(), "weights": WEIGHTS, "cases": rows}, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
