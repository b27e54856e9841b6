"""The pure merge math against float64 and against merge.fp8's definition."""

from __future__ import annotations

import pytest
import torch
from merge_helpers import dequant64, fp8_bound

from merge import fp8, mix

SHAPES = [(256, 384), (200, 130), (576, 192), (7, 5), (128, 1)]


def _parent(shape: tuple[int, int], seed: int, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return fp8.quantize(torch.randn(shape, generator=g) * scale)


@pytest.mark.parametrize("shape", SHAPES)
def test_interpolation_matches_float64(shape: tuple[int, int]) -> None:
    (qa, sa), (qb, sb), (qc, sc) = _parent(shape, 0), _parent(shape, 1, 3.0), _parent(shape, 2, 0.01)
    got = mix.interpolate([(0.2, qa, sa), (0.5, qb, sb), (0.3, qc, sc)])
    want = 0.2 * dequant64(qa, sa) + 0.5 * dequant64(qb, sb) + 0.3 * dequant64(qc, sc)
    # float32 accumulation of three terms: a few ulps of the largest term
    assert torch.allclose(got.double(), want, rtol=1e-6, atol=1e-6 * float(want.abs().max()))


def test_mixed_fp8_and_bf16_parts() -> None:
    qa, sa = _parent((200, 130), 3)
    b = torch.randn(200, 130, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    got = mix.interpolate([(0.25, qa, sa), (0.75, b, None)])
    want = 0.25 * dequant64(qa, sa) + 0.75 * b.double()
    assert torch.allclose(got.double(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_requantize_is_bit_identical_to_fp8_quantize(shape: tuple[int, int]) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5)) * 0.05
    x[0, 0] = 0.0  # zeros and a whole zero block must work too
    if shape[0] > 128:
        x[128:256, :] = 0
    q1, s1 = mix.quantize(x)
    q2, s2 = fp8.quantize(x)
    assert torch.equal(q1.view(torch.uint8), q2.view(torch.uint8))
    assert torch.equal(s1, s2)
    assert bool((s1 > 0).all())


@pytest.mark.parametrize("shape", SHAPES)
def test_fp8_round_trip_error_bound(shape: tuple[int, int]) -> None:
    x = (
        torch.randn(shape, generator=torch.Generator().manual_seed(6)) * torch.logspace(-3, 1, shape[1])
    ).double()
    q, s = mix.quantize(x.float())
    err = (dequant64(q, s) - x).abs()
    assert bool((err <= fp8_bound(x, s)).all()), float((err / fp8_bound(x, s)).max())
    assert float(err.max()) > 0  # the test can fail: quantization does lose precision
    # each block uses the full e4m3 range: its largest magnitude maps to 448
    assert float(q.to(torch.float32).abs().max()) == 448.0


def test_t0_and_t1_reproduce_parents_exactly() -> None:
    (qa, sa), (qb, sb) = _parent((200, 130), 7), _parent((200, 130), 8)
    for t, (q, s) in ((0.0, (qa, sa)), (1.0, (qb, sb))):
        parts = [(w, qq, ss) for w, qq, ss in ((1 - t, qa, sa), (t, qb, sb)) if w > 0]
        q2, s2 = mix.merge(parts, torch.float8_e4m3fn)
        assert s2 is not None
        assert torch.equal(q2.view(torch.uint8), q.view(torch.uint8)) and torch.equal(s2, s)


def test_distance_and_normalize() -> None:
    a = torch.ones(10, 10)
    assert mix.relative_distance(a * 1.5, a) == pytest.approx(0.5)
    assert mix.relative_distance(a, a) == 0.0
    assert mix.relative_distance(torch.zeros(3), torch.zeros(3)) == 0.0
    assert mix.relative_distance(torch.ones(3), torch.zeros(3)) == float("inf")
    assert mix.normalize([1.0, 2.0, 4.0]) == [0.5, 1.0, 2.0]
    assert mix.normalize([0.0, 0.0, 1.0]) == [0.0, 0.0, float("inf")]


def test_chunked_merge_and_distance_match_whole_tensor_math(monkeypatch: pytest.MonkeyPatch) -> None:
    (qa, sa), (qb, sb) = _parent((700, 300), 9), _parent((700, 300), 10)
    monkeypatch.setattr(mix, "CHUNK_BYTES", 1)  # one 128-row block row per chunk, a partial one last
    assert mix.chunk_rows(300) == 128
    parts = [(0.3, qa, sa), (0.7, qb, sb)]
    q, s = mix.merge(parts, torch.float8_e4m3fn)
    want = 0.3 * dequant64(qa, sa) + 0.7 * dequant64(qb, sb)
    q2, s2 = fp8.quantize(want.float())
    assert s is not None and torch.allclose(s, s2, rtol=1e-6)
    assert float((q.float() != q2.float()).float().mean()) < 0.01  # ties can round either way
    r = mix.distance(parts, [(1.0, qa, sa)])
    assert r == pytest.approx(float((want - dequant64(qa, sa)).norm() / dequant64(qa, sa).norm()), rel=1e-5)
    bf, none = mix.merge(parts, torch.bfloat16)
    assert none is None and torch.equal(bf, mix.interpolate(parts).to(torch.bfloat16))


def test_nonfinite_detected() -> None:
    x = torch.zeros(4, 4)
    assert mix.is_finite(x)
    x[2, 3] = float("nan")
    assert not mix.is_finite(x)
    assert not mix.is_finite(x.to(torch.float8_e4m3fn)) and mix.is_finite(
        torch.zeros(3).to(torch.float8_e4m3fn)
    )
    _q, s = mix.merge([(1.0, x, None)], torch.float8_e4m3fn)
    assert s is not None and not mix.is_finite(s)  # a NaN block keeps a NaN scale: never silently hidden


def test_block_scale_is_correctly_rounded() -> None:
    """amax / 448 rounded once: a float32 quotient computed in float64 and rounded is the correctly rounded one.
    (torch's CUDA division by a Python number multiplies by 1/448 instead and misses in ~2/3 of blocks.)"""
    amax = torch.rand(4096, generator=torch.Generator().manual_seed(9)) * 10
    assert torch.equal(fp8.amax_to_scale(amax), (amax.double() / fp8.FP8_MAX).float())


def test_chunks_are_small_on_the_cpu_and_whole_tensors_on_a_gpu() -> None:
    assert mix.chunk_rows(7168) == mix.chunk_rows(7168, torch.device("cpu")) == 128  # ~4 MB of float32
    assert mix.chunk_rows(7168, torch.device("cuda")) >= 2048  # a routed expert [2048, 7168] in one chunk
    assert mix.chunk_rows(7168, torch.device("cuda")) % fp8.BLOCK == 0


def _three_quantizers(x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """merge.fp8's reference, merge.mix's chunked torch path, and merge.kernels (mix.quantize on the CPU)."""
    torch_path = mix.merge([(1.0, x, None)], torch.float8_e4m3fn, fused=False)
    assert torch_path[1] is not None
    return [fp8.quantize(x), (torch_path[0], torch_path[1]), mix.quantize(x)]


def test_tiny_blocks_get_a_normal_scale_and_no_nan() -> None:
    """A block whose amax / 448 underflows (float32 subnormals, e.g. 1e-44) used to get scale 0 and NaN bytes; one
    just above it a subnormal scale that overflows the e4m3 range. Every quantizer now gives the same bits."""
    x = torch.randn(256, 384, generator=torch.Generator().manual_seed(11))
    x[:128, :128] = 1e-44  # amax / 448 == 0 in float32: a 0 scale, and 0 / 0 = NaN bytes for its zeros
    x[:64, :128] = 0.0
    x[:128, 128:256] *= 1e-39  # subnormal amax
    x[128:, 256:] = 0.0  # an all-zero block keeps scale 1.0
    x[128:, :128] *= 1e-37  # normal amax, subnormal amax / 448
    results = _three_quantizers(x)
    for q, s in results:
        assert mix.is_finite(q) and mix.is_finite(s)
        assert bool((s >= fp8.MIN_SCALE).all()) and float(s[1, 2]) == 1.0
        # tiny values round to 0 or to a nearby e4m3 step, never to NaN: the usual bound holds in every block
        err = (dequant64(q, s) - x.double()).abs()
        assert bool((err <= fp8_bound(x.double(), s)).all())
    (q0, s0), *rest = results
    for q, s in rest:
        assert torch.equal(q.view(torch.uint8), q0.view(torch.uint8)) and torch.equal(s, s0)


def test_block_scale_policy_is_one_definition() -> None:
    """The scalar form (compiled into merge.kernels) and the tensor form agree on every edge case, NaN included."""
    amax = torch.tensor([0.0, 1e-45, 1e-44, 5e-36, 5.3e-36, 6e-36, 1e-30, 1.0, 448.0, 3e38, float("nan")])
    vector = fp8.block_scales(amax)
    scalar = torch.tensor([fp8.block_scale(float(a)) for a in amax], dtype=torch.float32)
    assert torch.equal(vector, scalar) or (
        torch.equal(vector[:-1], scalar[:-1]) and vector[-1].isnan() and scalar[-1].isnan()
    )
    assert float(vector[0]) == 1.0 and float(vector[1]) == fp8.MIN_SCALE and vector[-1].isnan()
    _, s = fp8.quantize(torch.full((4, 4), float("nan")))
    assert s.isnan().all()  # a NaN block keeps a NaN scale in the reference quantizer too
