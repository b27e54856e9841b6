"""Block-FP8 weights as DeepSeek-V3 stores them, and the arithmetic the merge does on them.

Layout. A quantized linear weight `W` of shape [rows, cols] is stored as two tensors:
  - `<name>.weight`            float8_e4m3fn [rows, cols]
  - `<name>.weight_scale_inv`  float32 [ceil(rows/128), ceil(cols/128)]
Block (i, j) covers rows 128*i .. 128*i+127 and cols 128*j .. 128*j+127; edge blocks are simply smaller
(kv_a_proj_with_mqa [576, 7168] has scales [5, 56]). Despite its name, `weight_scale_inv` *multiplies*:
dequantized = fp8 value x its block's scale. DeepSeek's quantizer picks scale = block amax / 448 (448 is
the largest finite e4m3 value), so every block uses the full FP8 range.

The merge. Parents are dequantized to float32, interpolated there (never in bf16 or fp8, so rounding
happens once), and an FP8 child is requantized with fresh per-block scales: the parents' scales cannot be
reused because the interpolated block has a different amax. bf16 tensors (norms, router, embeddings) never
touch this module. Everything here is a pure function on tensors, on whatever device they live on.

Block scales (one policy for every quantizer: `quantize` here, merge.mix's chunked one, merge.kernels' loops).
scale = amax / 448, except: an all-zero block gets 1.0 (any positive scale reproduces zeros, and loaders check
that scales are positive), and a scale below the smallest normal float32 (2^-126, blocks with amax under
~5e-36) is raised to it: amax / 448 would otherwise be a subnormal that loses precision or underflows to 0,
and a 0 scale turns the block into 0/0 = NaN bytes that only a full verify would catch. A NaN amax keeps a
NaN scale, so a non-finite block is never hidden.
"""

from __future__ import annotations

from typing import Any

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
BLOCK = 128
MIN_SCALE = 2.0**-126  # smallest normal float32
# config.json's quantization_config of a DeepSeek block-FP8 checkpoint.
QUANTIZATION_CONFIG: dict[str, Any] = {
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "weight_block_size": [BLOCK, BLOCK],
}


def scale_shape(shape: tuple[int, ...] | torch.Size, block: int = BLOCK) -> tuple[int, int]:
    """Shape of the `weight_scale_inv` for a 2-D weight of `shape`: ceil(rows/block) x ceil(cols/block)."""
    rows, cols = shape
    return (-(-rows // block), -(-cols // block))


def _expand(scale: torch.Tensor, rows: int, cols: int, block: int) -> torch.Tensor:
    """[rb, cb] block scales -> [rows, cols], cropping the padded edge blocks."""
    return scale.repeat_interleave(block, dim=0)[:rows].repeat_interleave(block, dim=1)[:, :cols]


def dequantize(weight: torch.Tensor, scale_inv: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """FP8 weight [rows, cols] and its block scales -> float32 [rows, cols]."""
    rows, cols = weight.shape
    if tuple(scale_inv.shape) != scale_shape((rows, cols), block):
        raise ValueError(
            f"scale shape {tuple(scale_inv.shape)} does not fit weight {tuple(weight.shape)} "
            f"with {block}x{block} blocks (expected {scale_shape((rows, cols), block)})"
        )
    return weight.to(torch.float32) * _expand(scale_inv.to(torch.float32), rows, cols, block)


def block_amax(w: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """Largest magnitude of each block of a float [rows, cols] tensor: [ceil(rows/block), ceil(cols/block)]."""
    rows, cols = w.shape
    rb, cb = scale_shape((rows, cols), block)
    padded = torch.nn.functional.pad(w, (0, cb * block - cols, 0, rb * block - rows))
    return padded.view(rb, block, cb, block).abs().amax(dim=(1, 3))


def amax_to_scale(amax: torch.Tensor) -> torch.Tensor:
    """amax / 448, correctly rounded on every device. Not `amax / FP8_MAX`: torch's CUDA kernels turn division
    by a Python number into multiplication by its float32 reciprocal (1/448 is inexact), which on an H200 moved
    scales by one ulp against the CPU's and changed the child's bytes."""
    return amax / torch.full((), FP8_MAX, dtype=amax.dtype, device=amax.device)


def block_scales(amax: torch.Tensor) -> torch.Tensor:
    """float32 block amax -> block scales under the policy of the module docstring (NaN stays NaN)."""
    scale = amax_to_scale(amax)
    scale = torch.where(scale < MIN_SCALE, MIN_SCALE, scale)  # NaN < x is false: NaN is kept
    return torch.where(amax == 0, 1.0, scale)


def block_scale(amax: float) -> float:
    """`block_scales` of one amax (merge.kernels compiles this function for its loops). amax / 448 in float64,
    rounded to float32 when stored: the correctly rounded float32 quotient, as `amax_to_scale` computes it."""
    if amax == 0:
        return 1.0
    scale = amax / FP8_MAX
    return MIN_SCALE if scale < MIN_SCALE else scale


def quantize(weight: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """float weight [rows, cols] -> (float8_e4m3fn [rows, cols], float32 scale_inv [rb, cb]), scales by
    `block_scales`."""
    rows, cols = weight.shape
    w = weight.to(torch.float32)
    scale = block_scales(block_amax(w, block))
    q = (w / _expand(scale, rows, cols, block)).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale
