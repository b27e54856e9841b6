"""merge.kernels against the torch path of merge.mix (the reference): the same bits, case by case."""

from __future__ import annotations

import os
import subprocess
import sys

import numba
import numpy as np
import pytest
import torch
from merge_helpers import ROOT

from merge import fp8, kernels, mix

FP8 = torch.float8_e4m3fn
SHAPES = [(256, 384), (200, 130), (7, 5), (128, 1), (1, 300), (300, 257)]
INT = {FP8: torch.uint8, torch.bfloat16: torch.int16, torch.float32: torch.int32}


def _parent(kind: str, shape: tuple[int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random weights with what makes rounding interesting: exact zeros and -0, rows 1e4x smaller than the
    rest (subnormal e4m3 codes after requantizing), an all-zero 128x128 block where the shape has one."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.logspace(-2, 0, shape[1])
    x[::7] *= 1e-4
    x.view(-1)[::11] = 0.0
    x.view(-1)[5::13] = -0.0
    if shape[0] >= 256 and shape[1] >= 256:
        x[128:256, 128:256] = 0.0
    if kind == "fp8":
        return fp8.quantize(x)
    if kind == "fp8-no-scale":
        return (x * 100).to(FP8), None
    return x.to(torch.bfloat16 if kind == "bf16" else torch.float32), None


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.dtype == b.dtype and torch.equal(a.view(INT[a.dtype]), b.view(INT[b.dtype]))


def _assert_same(parts: list[mix.Part], dtype: torch.dtype) -> None:
    assert kernels.supported(parts, dtype)
    (q, s), (q_ref, s_ref) = mix.merge(parts, dtype), mix.merge(parts, dtype, fused=False)
    assert _same(q, q_ref) and _same(s, s_ref)


MIXES = {
    "fp8 x1": (["fp8"], [1.0]),
    "fp8 x2": (["fp8", "fp8"], [0.3, 0.7]),
    "fp8 x3": (["fp8", "fp8", "fp8"], [0.2, 0.5, 0.3]),
    "fp8 + bf16": (["fp8", "bf16"], [0.25, 0.75]),
    "bf16 first, w 1": (["bf16", "fp8", "f32"], [1.0, -0.5, 0.5]),
    "f32 + fp8 without scale": (["f32", "fp8-no-scale"], [0.6, 0.4]),
    "bf16 x3, a zero weight": (["bf16", "bf16", "bf16"], [0.5, 0.0, 0.5]),
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mixture", list(MIXES))
def test_kernels_match_torch_bit_for_bit(shape: tuple[int, int], mixture: str) -> None:
    kinds, weights = MIXES[mixture]
    parts = [(w, *_parent(k, shape, i)) for i, (k, w) in enumerate(zip(kinds, weights, strict=True))]
    for dtype in (FP8, torch.bfloat16, torch.float32):
        _assert_same(parts, dtype)
    r, r_ref = mix.distance(parts, parts[:1]), mix.distance(parts, parts[:1], fused=False)
    assert r == r_ref and (r > 0 or mixture == "fp8 x1")


def test_chunked_distance_matches_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mix, "CHUNK_BYTES", 1)  # one 128-row block row per chunk, a partial one last
    parts = [(w, *_parent("fp8", (700, 300), i)) for i, w in enumerate([0.3, 0.7])]
    base = [(1.0, *_parent("bf16", (700, 300), 5))]
    assert mix.distance(parts, base) == mix.distance(parts, base, fused=False)


def test_nonfinite_values_reach_the_scale() -> None:
    """A NaN weight or a NaN/Inf block scale makes its block's scale non-finite on both paths, also through
    the zero padding of edge blocks (0 x Inf = NaN); finite blocks keep identical bits."""
    (qa, sa), (qb, sb) = _parent("fp8", (300, 257), 0), _parent("fp8", (300, 257), 1)
    qa.view(torch.uint8)[5, 5] = 0x7F  # NaN in block (0, 0)
    sb[1, 2], sb[2, 0] = float("inf"), float("nan")  # an inner block and a (partial) edge block
    x = torch.zeros(200, 130)
    x[150, 129] = float("inf")  # the bf16 path: Inf in the partial corner block
    for parts in ([(0.5, qa, sa), (0.5, qb, sb)], [(1.0, x, None)]):
        (q, s), (q_ref, s_ref) = mix.merge(parts, FP8), mix.merge(parts, FP8, fused=False)
        assert s is not None and s_ref is not None
        bad = ~torch.isfinite(s)
        assert torch.equal(bad, ~torch.isfinite(s_ref)) and bool(bad.any()) and not mix.is_finite(s)
        assert torch.equal(s[~bad], s_ref[~bad])
        ok = ~bad.repeat_interleave(128, 0)[: q.shape[0]].repeat_interleave(128, 1)[:, : q.shape[1]]
        assert torch.equal(q.view(torch.uint8)[ok], q_ref.view(torch.uint8)[ok])
    assert (s == 1.0).sum() == s.numel() - 1  # all-zero blocks get scale 1.0


@numba.njit
def _encode(x: np.ndarray, out: np.ndarray) -> None:
    for i in range(x.size):
        out[i] = kernels._e4m3(x[i])


def _dense_floats() -> torch.Tensor:
    """Every upper half of a float32 (sign, exponent, 7 mantissa bits) with lower halves at and around the
    rounding points of bf16 (bit 15) and e4m3 (bit 19 and below): 1M values, all ties and near-ties."""
    hi = torch.arange(1 << 16, dtype=torch.int64) << 16
    lo = torch.tensor([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF, 0x1234, 0xC0DE])
    bits = (hi[:, None] | lo[None, :]).reshape(-1)
    return torch.where(bits >= 1 << 31, bits - (1 << 32), bits).int().view(torch.float32)


def test_e4m3_encoder_matches_torch_cast_densely() -> None:
    """Ties to even, subnormals, 448 < x <= 464 (rounds to 448), NaN: as torch casts, on every release.
    Past 464 and Inf (never reached by a merge: |x / scale| <= 448 up to a rounding) the encoder saturates to
    +-448 as torch 2.13's CPU cast does; torch 2.11's gives NaN there (seen on the GPU host), so that range is
    checked against the definition, not against the installed torch."""
    x = _dense_floats()
    out = np.empty(x.numel(), np.uint8)
    _encode(x.numpy(), out)
    big = (x.abs() > 464).numpy() & ~np.isnan(x.numpy())
    assert np.array_equal(out[~big], x.to(FP8).view(torch.uint8).numpy()[~big])
    assert big.sum() > 0 and np.array_equal(
        out[big], np.where(x.numpy()[big] > 0, 0x7E, 0xFE).astype(np.uint8)
    )


def test_bf16_encoder_and_fp8_decoder_match_torch() -> None:
    x = _dense_floats().view(-1, 1024)
    got = kernels.merge([(1.0, x, None)], torch.bfloat16, torch.empty(128, 1024))[0]
    nan = torch.isnan(x)
    assert torch.equal(got.view(torch.int16)[~nan], x.to(torch.bfloat16).view(torch.int16)[~nan])
    assert bool(torch.isnan(got[nan]).all())
    codes = torch.arange(256, dtype=torch.uint8).view(FP8).view(2, 128)  # every e4m3fn value, NaN included
    got32 = kernels.merge([(1.0, codes, None)], torch.float32, torch.empty(128, 128))[0]
    assert torch.equal(got32.view(torch.int32), codes.to(torch.float32).view(torch.int32))


@pytest.mark.parametrize("dtype", list(mix.NONFINITE_BITS))
def test_is_finite_reads_every_bit_pattern(dtype: torch.dtype) -> None:
    info = torch.finfo(dtype)
    # 40K values: 3 of the kernel's 16K blocks, the bad value in the last
    x = torch.tensor([info.max, -info.max, info.tiny, -0.0, 1.0], dtype=torch.float64).repeat(8_000).to(dtype)
    assert mix.is_finite(x)
    for bad in (float("nan"), float("inf"), float("-inf")):
        y = x.clone()
        y[-1] = bad
        assert mix.is_finite(y) == bool(torch.isfinite(y.float()).all())  # e4m3fn has no Inf: +-448
        assert not mix.is_finite(y) or dtype == FP8


def test_unsupported_inputs_take_the_torch_path() -> None:
    q, s = _parent("fp8", (200, 130), 0)
    assert not kernels.supported([(1.0, q.to(torch.float16), None)], FP8)
    assert not kernels.supported([(1.0, q, s)], torch.float16)
    assert not kernels.supported([(1.0, q, s[:1])], FP8)  # a scale that does not fit the weight
    assert not kernels.supported([(0.5, q, s), (0.5, q[:128], s[:1])], FP8)
    assert not kernels.supported([(1.0, q.reshape(-1), None)], torch.bfloat16)


CHECK = """
import torch
from merge import kernels, mix, fp8
(q, s), (q2, s2) = fp8.quantize(torch.randn(300, 257)), fp8.quantize(torch.randn(300, 257) * 3)
b = torch.randn(300, 257).bfloat16()
for parts in ([(0.3, q, s), (0.7, q2, s2)], [(0.3, b, None), (0.7, q, s)]):
    for dtype in (torch.float8_e4m3fn, torch.bfloat16):
        (x, sx), (y, sy) = mix.merge(parts, dtype), mix.merge(parts, dtype, fused=False)
        assert torch.equal(x.view(torch.uint8), y.view(torch.uint8)), dtype
        assert sx is None or torch.equal(sx, sy)
print(kernels.torch_fuses(), type(kernels._requantize._cache).__name__)
"""


def _run(env: dict[str, str], preamble: str = "") -> str:
    out = subprocess.run([sys.executable, "-W", "error", "-c", preamble + CHECK], cwd=ROOT,
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_torch_without_fma_is_matched_too() -> None:
    """torch's baseline CPU kernels (no AVX2) round the product and the sum separately; the kernels ask
    torch_fuses() and do the same."""
    assert _run({"ATEN_CPU_CAPABILITY": "default"}).startswith("(False, False)")


def test_no_writable_cache_compiles_without_warnings() -> None:
    """Where numba finds no cache directory (read-only install, no writable HOME) the kernels still run,
    uncached, and nothing warns (warnings are errors here)."""
    no_locator = (  # every cache locator declines, as where no directory is writable
        "from numba.core import caching\n"
        "(getattr(caching, 'CacheImpl', None) or caching._CacheImpl)._locator_classes = []\n"
    )
    assert _run({}, no_locator).endswith("NullCache")
