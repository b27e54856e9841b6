"""Fused CPU kernels (numba) for merge.mix: each row of the child computed once, in registers and L1.

The torch path in merge.mix makes ~8 elementwise passes per chunk (decode each parent, scale, accumulate, amax,
amin, divide, cast); here one loop nest does it all: for each row, decode every part (FP8 and bf16 by integer
arithmetic, float32 as stored), multiply by its factor (block scale x weight, or the weight) and accumulate in
float32; then either encode bf16 / store float32 at once, or, once a 128-row block row is done, take each
block's amax on the bit patterns, set scale = amax / 448, divide and encode e4m3fn.

Bit-identical to the torch path, which stays the reference (tests compare both) and the path for other
devices and dtypes. That takes doing torch's arithmetic step for step:
  - f = float32(scale) * float32(w), rounded once, as merge.mix folds w into the block scales;
  - acc = x_0 * f_0, then acc = acc + x_i * f_i; torch's AVX2/AVX-512 builds fuse `addcmul_` and
    `add_(alpha=)` into one FMA, its baseline build does not: `torch_fuses()` asks torch, the kernels follow;
  - an edge block's amax includes torch's zero padding (0 x a NaN/Inf scale is NaN: the NaN check fires);
  - e4m3fn as torch 2.13 casts: round half to even, NaN stays NaN, past 464 (Inf too) saturates to +-448
    (torch 2.11's CPU cast gives NaN past 464; a merge never gets there: |x / scale| <= 448 up to a rounding);
    bf16: round half to even (NaN -> 0x7FC0; torch's vector cast writes 0xFFFF: a NaN either way, and a NaN
    child fails the merge's finite check).

The kernels release the GIL (`nogil`): merge's worker threads run them side by side, one tensor each. numba
compiles them on first use (seconds, per kernel and number of parts) and caches the machine code on disk:
NUMBA_CACHE_DIR, else __pycache__ next to this file, else the user's cache; where none is writable they compile
in every process. merge.mix imports this module only when it computes on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from merge import fp8
from merge.fp8 import BLOCK, FP8_DTYPE, scale_shape

if TYPE_CHECKING:
    from merge.mix import Part

KINDS = {FP8_DTYPE: 0, torch.bfloat16: 1, torch.float32: 2}  # how a part's bytes decode (kinds[p] below)
OUT_DTYPES = (FP8_DTYPE, torch.bfloat16, torch.float32)
TILE = 1024  # columns per tile of a row: the row, the decoded part and its factors stay in L1 across parts
U32 = np.uint32  # numba widens uint32 arithmetic to 64 bits; truncating each step back keeps 32-bit lanes


# ---------------------------------------------------------------- called by merge.mix


def supported(parts: list[Part], dtype: torch.dtype) -> bool:
    """Whether the kernels compute this merge: CPU, 2-D parts of one shape and known dtypes, scales that fit."""
    t0 = parts[0][1]
    if dtype not in OUT_DTYPES or t0.dim() != 2:
        return False
    for _, t, s in parts:
        if t.shape != t0.shape or t.device.type != "cpu" or t.dtype not in KINDS:
            return False
        if s is not None and (
            t.dtype != FP8_DTYPE or s.device.type != "cpu" or tuple(s.shape) != scale_shape(t.shape)
        ):
            return False
    return True


@cache
def torch_fuses() -> tuple[bool, bool]:
    """Whether torch's CPU `addcmul_` and `add_(alpha=)` round once (FMA), called as merge.mix calls them.
    -1 + (1 + 2^-12)^2 = 2^-11 + 2^-24 survives only an FMA (the product alone rounds the 2^-24 away)."""
    e = 1.0 + 2.0**-12
    want = torch.tensor(2.0**-11 + 2.0**-24)
    acc = torch.full((1, BLOCK, 1, BLOCK), -1.0)
    acc.addcmul_(torch.full((1, BLOCK, 1, BLOCK), e), torch.full((1, 1, 1, 1), e))
    acc2 = torch.full((BLOCK, BLOCK), -1.0).add_(torch.full((BLOCK, BLOCK), e), alpha=e)
    return bool((acc == want).all()), bool((acc2 == want).all())


def _operands(parts: list[Part]) -> tuple[Any, ...]:
    """Kernel arguments: each part's bytes (flat uint8), kinds [P], fma [P] (accumulate with one rounding),
    factors float32 [P, rb, cb]."""
    fma_scaled, fma_alpha = torch_fuses()
    factors = torch.empty((len(parts), *scale_shape(parts[0][1].shape)), dtype=torch.float32)
    for p, (w, _, s) in enumerate(parts):
        # folded as merge.mix folds it: float32 scale x w (w rounded to float32)
        factors[p] = s.to(torch.float32) * w if s is not None else w
    return (
        tuple(t.contiguous().view(torch.uint8).reshape(-1).numpy() for _, t, _ in parts),
        np.array([KINDS[t.dtype] for _, t, _ in parts], np.int8),
        np.array([fma_scaled if s is not None else fma_alpha for _, _, s in parts], np.bool_),
        factors.numpy(),
    )


def merge(
    parts: list[Part], dtype: torch.dtype, buf: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """merge.mix.merge of `supported` parts, the same bits. buf: float32 [128, cols] scratch (a block row)."""
    rows, cols = parts[0][1].shape
    args = _operands(parts)
    if dtype == FP8_DTYPE:
        out = torch.empty(rows, cols, dtype=torch.uint8)
        scale = torch.empty(scale_shape((rows, cols)), dtype=torch.float32)
        _requantize(*args, buf.numpy(), out.numpy(), scale.numpy())
        return out.view(FP8_DTYPE), scale
    if dtype == torch.bfloat16:
        out = torch.empty(rows, cols, dtype=torch.int16)
        _to_bf16(*args, out.numpy().view(np.uint16))
        return out.view(torch.bfloat16), None
    out = torch.empty(rows, cols, dtype=torch.float32)
    _to_f32(*args, out.numpy())
    return out, None


def fill(parts: list[Part], r0: int, chunk: torch.Tensor) -> None:
    """chunk = merge.mix's padded float32 chunk of the block rows from r0 (r0 a multiple of 128)."""
    rows, cols = parts[0][1].shape
    _fill(*_operands(parts), rows, cols, r0 // BLOCK, chunk.numpy())


def all_finite(bits: np.ndarray, mask: int) -> bool:
    """No element of the 1-D integer array has every bit of `mask` set (mask: a float format's exponent bits,
    all of them set = NaN/Inf)."""
    return bool(_all_finite(bits, bits.dtype.type(mask)))


# ---------------------------------------------------------------- the kernels (one call per tensor or chunk)


def _njit(fn: Callable[..., Any]) -> Any:
    """numba.njit for a kernel: without the GIL; IEEE division (x / 0 is Inf as in torch, not Python's
    ZeroDivisionError, whose check also keeps a loop from vectorizing); cached on disk where numba finds a
    writable cache (where it finds none it raises at decoration, and the kernel compiles in each process)."""
    options = {"nogil": True, "error_model": "numpy"}
    try:
        return numba.njit(cache=True, **options)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available" (read-only install, no HOME)
        return numba.njit(cache=False, **options)(fn)


@_njit
def _requantize(data, kinds, fma, factors, buf, out, scale):
    """out [rows, cols] uint8 (e4m3fn bits) and scale [rb, cb] (merge.fp8's block-scale policy), one block row
    at a time in buf [128, cols] float32."""
    rows, cols = out.shape
    tmp, fcol = np.empty(cols, np.float32), np.empty((len(data), cols), np.float32)
    colmax, div = np.empty(cols, np.uint32), np.empty(cols, np.float32)
    for bi in range(scale.shape[0]):
        nr = min(BLOCK, rows - bi * BLOCK)
        _columns(factors, bi, fcol)
        colmax[:] = 0
        for r in range(nr):
            row = buf[r]
            _row(data, kinds, fma, fcol, bi * BLOCK + r, row, tmp)
            # max |x| on the bit patterns: NaN sorts above Inf, so a NaN wins as in torch.amax
            for c in range(cols):
                colmax[c] = max(colmax[c], U32(_bits(row[c]) & U32(0x7FFFFFFF)))
        for bj in range(scale.shape[1]):
            a = _float(colmax[bj * BLOCK : (bj + 1) * BLOCK].max())
            if (nr < BLOCK or cols - bj * BLOCK < BLOCK) and np.isnan(_pad(fma, factors, bi, bj)):
                a = np.float32(np.nan)
            scale[bi, bj] = _block_scale(a)
            div[bj * BLOCK : (bj + 1) * BLOCK] = scale[bi, bj]
        for r in range(nr):
            row, o = buf[r], out[bi * BLOCK + r]
            for c in range(cols):
                o[c] = _e4m3(row[c] / div[c])


@_njit
def _to_bf16(data, kinds, fma, factors, out):
    """out [rows, cols] uint16 (bf16 bits), row by row."""
    rows, cols = out.shape
    tmp, row, fcol = (
        np.empty(cols, np.float32),
        np.empty(cols, np.float32),
        np.empty((len(data), cols), np.float32),
    )
    for i in range(rows):
        if i % BLOCK == 0:
            _columns(factors, i // BLOCK, fcol)
        _row(data, kinds, fma, fcol, i, row, tmp)
        o = out[i]
        for c in range(cols):
            o[c] = _bf16(row[c])


@_njit
def _to_f32(data, kinds, fma, factors, out):
    """out [rows, cols] float32, row by row."""
    rows, cols = out.shape
    tmp, fcol = np.empty(cols, np.float32), np.empty((len(data), cols), np.float32)
    for i in range(rows):
        if i % BLOCK == 0:
            _columns(factors, i // BLOCK, fcol)
        _row(data, kinds, fma, fcol, i, out[i], tmp)


@_njit
def _fill(data, kinds, fma, factors, rows, cols, b0, chunk):
    """chunk [nb * 128, cb * 128] float32 = block rows b0.. of the sum, padded as merge.mix pads its chunks."""
    tmp, fcol = np.empty(cols, np.float32), np.empty((len(data), cols), np.float32)
    cb = factors.shape[2]
    for k in range(min(chunk.shape[0] // BLOCK, factors.shape[1] - b0)):
        bi = b0 + k
        _columns(factors, bi, fcol)
        for r in range(BLOCK):
            i, row = bi * BLOCK + r, chunk[k * BLOCK + r]
            if i < rows:
                _row(data, kinds, fma, fcol, i, row[:cols], tmp)
                row[cols:] = _pad(fma, factors, bi, cb - 1)
            else:
                for bj in range(cb):
                    row[bj * BLOCK : (bj + 1) * BLOCK] = _pad(fma, factors, bi, bj)


@_njit
def _all_finite(bits, mask):
    """Blocks of 16K values, each an OR-reduction that vectorizes; stops at the first block with a hit."""
    for b0 in range(0, bits.size, 1 << 14):
        block, hit = bits[b0 : b0 + (1 << 14)], False
        for c in range(block.size):
            hit |= (block[c] & mask) == mask
        if hit:
            return False
    return True


# ---------------------------------------------------------------- one row of the sum
# Loops run over slices from index 0: numba's negative-index wraparound on a computed index (row[c0 + c])
# keeps LLVM from vectorizing them (measured 4-8x slower).


@numba.njit(inline="always")
def _decode(raw, kind, start, tmp):
    """tmp[:] = float32 of the tmp.size stored values from element `start` of a part's bytes."""
    n = tmp.size
    if kind == 0:
        src8 = raw[start : start + n]
        for c in range(n):
            tmp[c] = _from_e4m3(src8[c])
    elif kind == 1:
        src16 = raw.view(np.uint16)[start : start + n]
        for c in range(n):
            tmp[c] = _float(U32(U32(src16[c]) << U32(16)))
    else:
        src32 = raw.view(np.float32)[start : start + n]
        for c in range(n):
            tmp[c] = src32[c]


@numba.njit(inline="always")
def _columns(factors, bi, out):
    """out[p, c] = factors[p, bi, c // 128]: per-column factors of block row bi (loops then need no blocks)."""
    for p in range(out.shape[0]):
        for c in range(out.shape[1]):
            out[p, c] = factors[p, bi, c // BLOCK]


@numba.njit(inline="always")
def _row(data, kinds, fma, fcol, i, row, tmp):
    """row[:] = row i of sum_p fcol_p x decode(part p), rounded as torch rounds it (fcol: `_columns`).

    The sum starts at -0.0: -0 + x*f is x*f exactly (-0 included), so the first part needs no case of its own."""
    cols = row.size
    for t0 in range(0, cols, TILE):
        acc, x = row[t0 : t0 + TILE], tmp[: min(TILE, cols - t0)]
        acc[:] = np.float32(-0.0)
        for p in range(len(data)):
            _decode(data[p], kinds[p], i * cols + t0, x)
            f = fcol[p, t0 : t0 + TILE]
            if fma[p]:
                for c in range(acc.size):
                    acc[c] = _fma(x[c], f[c], acc[c])
            else:
                for c in range(acc.size):
                    acc[c] = acc[c] + x[c] * f[c]


@numba.njit(inline="always")
def _pad(fma, factors, bi, bj):
    """The value torch's zero padding of block (bi, bj) takes: -0 + 0 x f_p, so NaN where a factor is NaN/Inf."""
    acc = np.float32(-0.0)
    for p in range(factors.shape[0]):
        f = factors[p, bi, bj]
        acc = _fma(np.float32(0.0), f, acc) if fma[p] else acc + np.float32(0.0) * f
    return acc


# ---------------------------------------------------------------- scalar helpers (inlined into the kernels)

# The one block-scale policy (zero block, tiny amax), compiled from merge.fp8's own function. numba's disk cache
# keys on this file only: after changing merge.fp8, clear NUMBA_CACHE_DIR / __pycache__ so the kernels recompile.
_block_scale = numba.njit(inline="always")(fp8.block_scale)


@intrinsic
def _fma(typingctx: Any, x: Any, y: Any, z: Any) -> Any:
    """x * y + z rounded once (llvm.fma: the FMA instruction on x86-64 with FMA)."""

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        fnty = ir.FunctionType(ir.FloatType(), [ir.FloatType()] * 3)
        return builder.call(cgutils.get_or_insert_function(builder.module, fnty, "llvm.fma.f32"), args)

    return types.float32(types.float32, types.float32, types.float32), codegen


@intrinsic
def _bits(typingctx: Any, x: Any) -> Any:
    """The bit pattern of a float32."""

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@intrinsic
def _float(typingctx: Any, u: Any) -> Any:
    """The float32 of a bit pattern."""

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@numba.njit(inline="always")
def _from_e4m3(b):
    """e4m3fn bits -> float32, the values (and NaN bits) of torch's cast, without a table: a gather per
    element costs 4x this arithmetic."""
    mag = U32(U32(b) & U32(0x7F))
    if mag == 0x7F:
        bits = U32(0x7FF00000)
    elif mag >= 8:  # normal: move exponent and mantissa into place, rebias 7 -> 127
        bits = U32(U32(mag << U32(20)) + U32(120 << 23))
    else:  # subnormal: mantissa x 2^-9 (no float32 subnormals, so no flush-to-zero mode can interfere)
        bits = _bits(np.float32(mag) * np.float32(2.0**-9))
    return _float(U32(bits | U32(U32(U32(b) & U32(0x80)) << U32(24))))


@numba.njit(inline="always")
def _e4m3(x):
    """float32 -> e4m3fn bits as torch 2.13 casts: round half to even, NaN kept, past 464 (and Inf) -> +-448.
    (a + c) - c with c = max(2^(exponent of a + 20), 2^14) rounds a to the e4m3 step of its binade (2^-9
    below 2^-6), half to even, in one float add."""
    a = abs(x)
    a = a if a < np.float32(1024.0) else np.float32(1024.0)  # NaN too (set below): keeps c finite
    c = _float(U32(U32(_bits(a) & U32(0x7F800000)) + U32(20 << 23)))
    c = c if c > np.float32(16384.0) else np.float32(16384.0)
    r = (a + c) - c
    if r < np.float32(2.0**-6):
        code = np.int32(r * np.float32(512.0))
    else:
        code = min(np.int32(np.int32(U32(_bits(r) >> U32(20))) - np.int32(120 << 3)), np.int32(0x7E))
    if x != x:
        code = np.int32(0x7F)
    return np.uint8(U32(code) | U32(U32(_bits(x) >> U32(24)) & U32(0x80)))


@numba.njit(inline="always")
def _bf16(x):
    """float32 -> bf16 bits, round half to even (c10's round_to_nearest_even; NaN -> 0x7FC0)."""
    u = _bits(x)
    if U32(u & U32(0x7FFFFFFF)) > U32(0x7F800000):
        return np.uint16(0x7FC0)
    return np.uint16(U32(U32(u + U32(0x7FFF)) + U32(U32(u >> U32(16)) & U32(1))) >> U32(16))
