"""Pure merge math: weighted interpolation of (possibly block-FP8) parents in float32, distances, requantizing.

A part is (w, t, scale): weight w, stored tensor t (float8_e4m3fn with its [ceil(r/128), ceil(c/128)] float32
block scale, or any float dtype with scale None). The child is sum_i w_i x dequant(t_i), computed in float32
and cast once: to bf16/f32, or requantized to block FP8 with fresh scales (block amax / 448), bit-identical to
`merge.fp8.quantize` of the same float32 values.

Speed. On the CPU, 2-D merges and distances run in merge.kernels: numba loops that do all the elementwise work
of a row in one pass, bit-identical to the torch code below (~3x less CPU per tensor, and free of the GIL).
That torch code is the reference and the path for other devices: 2-D tensors are processed in chunks of whole
128-row block rows (~4 MB of float32 on the CPU; whole tensors up to 256 MB on a GPU), so the ~8 passes of
elementwise work (decode, scale, accumulate, amax, amin, divide, cast) run in cache instead of streaming a
full-size float32 tensor through memory 8 times; w_i is folded into the block scales; FP8 decodes through a
256-entry table (a gather is ~2x faster than torch's CPU cast); and each worker reuses its scratch buffers (a
fresh tensor costs page faults on first touch). Nothing here knows about files; tensors may live on any device.
"""

from __future__ import annotations

import math
import statistics
from types import ModuleType

import torch

from merge.fp8 import BLOCK, FP8_DTYPE, block_scales, scale_shape

Part = tuple[float, torch.Tensor, "torch.Tensor | None"]
CHUNK_BYTES = 4 << 20  # float32 bytes per chunk of block rows on the CPU (measured best of 1-32 MB)
# On a GPU what costs is the ~10 kernel launches per chunk, not memory traffic: one expert merge took 5.97 ms in
# 4 MB chunks and 0.58 ms whole on an H200 (benchmarks/results/merge-speed-gpu.md). Capped so that a worker's
# scratch stays small next to the weights (an embedding is 3.7 GB of float32).
GPU_CHUNK_BYTES = 256 << 20


class Workspace:
    """Scratch buffers reused from tensor to tensor by one worker thread (sized to the largest chunk seen).

    `trim()` after each tensor frees buffers above `keep_bytes`: a worker that read an embedding (1.85 GB at V3
    size) must not hold that much for the rest of the build."""

    def __init__(self, keep_bytes: int = 256 << 20) -> None:
        self._bufs: dict[str, torch.Tensor] = {}
        self.keep_bytes = keep_bytes

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._bufs.values())

    def trim(self) -> None:
        for key in [k for k, b in self._bufs.items() if b.numel() * b.element_size() > self.keep_bytes]:
            del self._bufs[key]

    def get(
        self, key: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, *, pin: bool = False
    ) -> torch.Tensor:
        """pin: page-locked host memory (copies to a GPU from it run at full DMA speed, without staging)."""
        n = math.prod(shape)
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < n or (buf.dtype, buf.device, buf.is_pinned()) != (dtype, device, pin):
            buf = self._bufs[key] = torch.empty(n, dtype=dtype, device=device, pin_memory=pin)
        return buf[:n].view(shape)


_LUT: dict[torch.device, torch.Tensor] = {}


def _fp8_lut(device: torch.device) -> torch.Tensor:
    """float32 value of each of the 256 e4m3fn bit patterns (NaN included)."""
    if device not in _LUT:
        _LUT[device] = torch.arange(256, dtype=torch.uint8, device=device).view(FP8_DTYPE).to(torch.float32)
    return _LUT[device]


def _blocks(buf: torch.Tensor) -> torch.Tensor:
    return buf.view(buf.shape[0] // BLOCK, BLOCK, buf.shape[1] // BLOCK, BLOCK)


def _fill(dst: torch.Tensor, rows: torch.Tensor, ws: Workspace) -> None:
    """dst[:n, :cols] = float32(rows) (dst is a zero-padded chunk)."""
    n, cols = rows.shape
    if rows.dtype == FP8_DTYPE and dst.shape == rows.shape and rows.device.type == "cpu":
        idx = ws.get("idx", (rows.numel(),), torch.int32, rows.device)
        idx.copy_(rows.reshape(-1).view(torch.uint8))
        torch.index_select(_fp8_lut(rows.device), 0, idx, out=dst.view(-1))
    else:
        dst[:n, :cols].copy_(rows)


def chunk_rows(cols: int, device: torch.device | None = None) -> int:
    """Rows per chunk: whole 128-row blocks, about CHUNK_BYTES of float32 (GPU_CHUNK_BYTES off the CPU)."""
    padded = scale_shape((1, cols))[1] * BLOCK
    budget = CHUNK_BYTES if device is None or device.type == "cpu" else GPU_CHUNK_BYTES
    return max(1, budget // (padded * 4 * BLOCK)) * BLOCK


def _chunk(parts: list[Part], r0: int, r1: int, ws: Workspace, key: str, fused: bool) -> torch.Tensor:
    """float32 interpolation of rows r0:r1 (r0 a multiple of 128), zero-padded to whole blocks."""
    t0 = parts[0][1]
    rows, cols = t0.shape
    n = min(r1, rows) - r0
    shape = (-(-n // BLOCK) * BLOCK, scale_shape((1, cols))[1] * BLOCK)
    acc = ws.get(key, shape, torch.float32, t0.device)
    if kernels := _kernels(parts, torch.float32, fused):
        kernels.fill(parts, r0, acc)
        return acc
    tmp = ws.get(key + ".tmp", shape, torch.float32, t0.device) if len(parts) > 1 else acc
    b0, b1 = r0 // BLOCK, r0 // BLOCK + shape[0] // BLOCK
    for i, (w, t, s) in enumerate(parts):
        dst = acc if i == 0 else tmp
        if shape != (n, cols):
            dst.zero_()
        _fill(dst, t[r0 : r0 + n], ws)
        factor = (s[b0:b1].to(torch.float32) * w)[:, None, :, None] if s is not None else None
        if i == 0:
            if factor is not None:
                _blocks(acc).mul_(factor)
            elif w != 1.0:
                acc.mul_(w)
        elif factor is not None:
            _blocks(acc).addcmul_(_blocks(tmp), factor)
        else:  # acc + w x t in one step: the float32 arithmetic of mergekit's linear merge (addcmul_)
            acc.add_(tmp, alpha=w)
    return acc


def _flat(parts: list[Part]) -> torch.Tensor:
    """Interpolation of tensors that are not 2-D (norms, biases): small, done whole."""
    w0, t0, _ = parts[0]
    out = t0.to(torch.float32, copy=True)
    if w0 != 1.0:
        out.mul_(w0)
    for w, t, _ in parts[1:]:
        out.add_(t.to(torch.float32), alpha=w)
    return out


def _quantize_chunk(chunk: torch.Tensor) -> torch.Tensor:
    """Block scales of a padded float32 chunk; divides it in place. No clamp needed: |x| / (amax / 448)
    exceeds 448 by at most a rounding error, which the cast rounds to 448 exactly as a clamp would."""
    blocks = _blocks(chunk)
    amax = torch.maximum(blocks.amax(dim=(1, 3)), blocks.amin(dim=(1, 3)).neg_())
    scale = block_scales(amax)
    blocks.div_(scale[:, None, :, None])
    return scale


def _kernels(parts: list[Part], dtype: torch.dtype, fused: bool) -> ModuleType | None:
    """merge.kernels where it computes this merge (CPU tensors of the dtypes it knows), else None: torch's path.
    Imported on first use, so the CLI's other commands never load numba."""
    if not fused or parts[0][1].device.type != "cpu":
        return None
    from merge import kernels

    return kernels if kernels.supported(parts, dtype) else None


def merge(
    parts: list[Part], dtype: torch.dtype, ws: Workspace | None = None, *, fused: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """sum_i w_i x dequant(t_i), cast to `dtype`: (tensor, None), or for float8_e4m3fn (weight, block scale).

    Non-finite values make the result non-finite (check with `is_finite` on the tensor, or on the FP8 scale).
    fused=False computes with torch ops only (the reference the kernels are tested against).
    """
    ws = ws or Workspace()
    t0 = parts[0][1]
    if kernels := _kernels(parts, dtype, fused):
        return kernels.merge(parts, dtype, ws.get("rows", (BLOCK, t0.shape[1]), torch.float32, t0.device))
    if t0.dim() != 2:
        if dtype == FP8_DTYPE:
            raise ValueError(f"block FP8 needs a 2-D weight, got shape {list(t0.shape)}")
        return _flat(parts).to(dtype), None
    rows, cols = t0.shape
    out = torch.empty(rows, cols, dtype=dtype, device=t0.device)
    scale = (
        torch.empty(scale_shape((rows, cols)), dtype=torch.float32, device=t0.device)
        if dtype == FP8_DTYPE
        else None
    )
    step = chunk_rows(cols, t0.device)
    for r0 in range(0, rows, step):
        n = min(r0 + step, rows) - r0
        chunk = _chunk(parts, r0, r0 + step, ws, "acc", fused=False)
        if scale is not None:
            scale[r0 // BLOCK : r0 // BLOCK + chunk.shape[0] // BLOCK] = _quantize_chunk(chunk)
        out[r0 : r0 + n].copy_(chunk[:n, :cols])
    return out, scale


def distance_sums(
    parts: list[Part],
    base: list[Part],
    ws: Workspace | None = None,
    *,
    fused: bool = True,
    acc: tuple[float, float] = (0.0, 0.0),
) -> tuple[float, float]:
    """acc + (||W* - W_base||_F^2, ||W_base||_F^2) of two 2-D interpolations, chunk by chunk in float64.
    Rows split at multiples of `chunk_rows`, each window's sums added to the running `acc` in order, give the
    same bits as the whole tensor: merge.engine reads big tensors in such windows."""
    ws = ws or Workspace()
    t0 = parts[0][1]
    diff2, norm2 = acc
    step = chunk_rows(t0.shape[1], t0.device)
    for r0 in range(0, t0.shape[0], step):
        m = _chunk(parts, r0, r0 + step, ws, "acc", fused)
        b = _chunk(base, r0, r0 + step, ws, "base", fused)
        norm2 += float(torch.linalg.vector_norm(b, dtype=torch.float64)) ** 2
        diff2 += float(torch.linalg.vector_norm(m.sub_(b), dtype=torch.float64)) ** 2
    return diff2, norm2


def ratio(diff2: float, norm2: float) -> float:
    """sqrt(diff2 / norm2); 0/0 -> 0, x/0 -> inf."""
    if norm2 == 0.0:
        return 0.0 if diff2 == 0.0 else float("inf")
    return math.sqrt(diff2 / norm2)


def distance(
    parts: list[Part], base: list[Part], ws: Workspace | None = None, *, fused: bool = True
) -> float:
    """r = ||W* - W_base||_F / ||W_base||_F of two interpolations, chunk by chunk (float64 sums)."""
    if parts[0][1].dim() != 2:
        return relative_distance(_flat(parts), _flat(base))
    return ratio(*distance_sums(parts, base, ws, fused=fused))


def interpolate(parts: list[Part]) -> torch.Tensor:
    """sum_i w_i x dequant(t_i) as float32, whole (for diffs and tests)."""
    return merge(parts, torch.float32)[0]


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-FP8 quantization of a float [rows, cols] tensor: same bits as `merge.fp8.quantize`."""
    q, s = merge([(1.0, x, None)], FP8_DTYPE)
    if s is None:
        raise RuntimeError("merge() returned no scale for an FP8 result")
    return q, s


def relative_distance(merged: torch.Tensor, base: torch.Tensor) -> float:
    """r = ||merged - base||_F / ||base||_F (accumulation in float64). 0/0 -> 0, x/0 -> inf."""
    diff = torch.linalg.vector_norm(merged - base, dtype=torch.float64).item()
    norm = torch.linalg.vector_norm(base, dtype=torch.float64).item()
    if norm == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / norm


def normalize(rs: list[float]) -> list[float]:
    """d_l = r_l / median(r) over one rule's tensors (median 0: 0 stays 0, anything else is inf)."""
    if not rs:
        return []
    med = statistics.median(rs)
    if med == 0.0:
        return [0.0 if r == 0.0 else float("inf") for r in rs]
    return [r / med for r in rs]


# Exponent bits per stored dtype: a value is NaN/Inf iff all of them are set (e4m3fn: S.1111.111 only).
NONFINITE_BITS: dict[torch.dtype, tuple[torch.dtype, int]] = {
    FP8_DTYPE: (torch.uint8, 0x7F),
    torch.float8_e5m2: (torch.uint8, 0x7C),
    torch.bfloat16: (torch.int16, 0x7F80),
    torch.float16: (torch.int16, 0x7C00),
    torch.float32: (torch.int32, 0x7F800000),
    torch.float64: (torch.int64, 0x7FF0000000000000),
}


def is_finite(x: torch.Tensor) -> bool:
    """No NaN/Inf in `x`. CPU tensors: one pass over the bit patterns in merge.kernels (no scratch; 10+ GB/s on
    one core, where numpy's masked max ran at 0.4-6); other devices: the float32 sum (NaN or Inf anywhere makes
    it non-finite)."""
    if x.numel() == 0:
        return True
    if x.device.type == "cpu" and x.dtype in NONFINITE_BITS and x.is_contiguous():
        from merge import kernels

        int_dtype, mask = NONFINITE_BITS[x.dtype]
        return kernels.all_finite(x.view(int_dtype).reshape(-1).numpy(), mask)
    if not x.is_floating_point():
        return True
    return bool(torch.isfinite(x.float().sum()))
