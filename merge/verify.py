"""`chimera-merge verify`: prove a checkpoint is one vLLM will load as written, before anyone serves it.

Why this exists. vLLM loads a block-FP8 checkpoint in which one linear weight was left in bf16 without its
`weight_scale_inv` without a word: the bf16 bytes are cast into its FP8 parameter, the scale rows stay
uninitialised, and it generates garbage (transformers loads the same files and looks fine). So every FP8
child is checked against the rules vLLM silently relies on:

1. structure (headers only, seconds even for 688 GB): index and shards agree (`Checkpoint.open`), config.json
   has the keys vLLM's DeepSeek-V2/V3 model reads without a default, every linear weight (`*_proj.weight`,
   not MTP's `eh_proj`/`shared_head`) is float8_e4m3fn with a float32 `weight_scale_inv` of shape
   ceil(rows/128) x ceil(cols/128) or is listed in `quantization_config.ignored_layers`, no scale without its
   FP8 weight, and the halves vLLM fuses (`q_a_proj`+`kv_a_proj_with_mqa`, `gate_proj`+`up_proj`, all routed
   experts of a layer) share one precision;
2. values (skipped with `headers_only`): every floating tensor streamed in bounded blocks and tested for
   NaN/Inf on its bit pattern; every scale finite and positive.

A bf16 checkpoint gets the same structural checks minus the FP8 rules. Each defect raises `VerifyError` with one
line that names the tensor and says what to do; the CLI and `chimera-serve` print it without a traceback.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from merge.checkpoint import DTYPES, Checkpoint, TensorInfo
from merge.errors import CheckpointError, VerifyError
from merge.fp8 import BLOCK, QUANTIZATION_CONFIG, scale_shape
from merge.layout import is_fp8_projection, is_scale, scale_name, weight_of
from merge.mix import NONFINITE_BITS

CHUNK_BYTES = 64 * 1024 * 1024  # one read buffer; the only memory the value pass holds

# Keys vLLM's deepseek_v2.py (and transformers' config class) need to build the model's shapes; a missing one
# either fails late inside the engine or, worse, falls back to a default that does not match the weights.
REQUIRED_CONFIG_KEYS = (
    "architectures", "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
    "intermediate_size", "moe_intermediate_size", "n_routed_experts", "n_shared_experts", "num_experts_per_tok",
    "first_k_dense_replace", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
    "rms_norm_eps",
)  # fmt: skip
ARCHITECTURES = {"DeepseekV3ForCausalLM", "DeepseekV2ForCausalLM"}
FUSED_PAIRS = (("q_a_proj", "kv_a_proj_with_mqa"), ("gate_proj", "up_proj"))
_EXPERT = re.compile(r"^(.*\.mlp\.experts)\.\d+\.")


@dataclass
class VerifyReport:
    """What `verify_checkpoint` looked at. `fmt` is "fp8" when any linear weight is block-FP8."""

    path: Path
    fmt: Literal["fp8", "bf16"]
    tensors: int
    total_bytes: int
    fp8_weights: int = 0
    ignored_layers: int = 0
    values_checked: int = 0  # tensors whose values were streamed (0 with headers_only)
    bytes_streamed: int = 0
    seconds: float = 0.0
    headers_only: bool = False
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        mode = (
            "headers only" if self.headers_only else f"{self.bytes_streamed / 1e9:.2f} GB of values streamed"
        )
        return (
            f"OK {self.path}: {self.fmt}, {self.tensors} tensors ({self.total_bytes / 1e9:.2f} GB), "
            f"{self.fp8_weights} FP8 linear weights, {self.ignored_layers} ignored layers, {mode}, "
            f"{self.seconds:.1f} s" + (f", {len(self.warnings)} warning(s)" if self.warnings else "")
        )


def is_linear_weight(name: str) -> bool:
    """DeepSeek-V3 linear weights that DeepSeek quantizes: attention, dense MLP, shared and routed experts; the
    merge's own quantization rule (`merge.layout.is_fp8_projection`, which names kv_a_proj_with_mqa: the name
    filter `*_proj.weight` misses it, the trap this module exists for)."""
    return is_fp8_projection(name)


def _fail(problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more defect(s))" if len(problems) > 1 else ""
        raise VerifyError(problems[0] + more)


def check_config(config: dict[str, Any], tensors: dict[str, TensorInfo]) -> list[str]:
    """Config keys vLLM needs for DeepSeek-V3; the router keys without which it drops `e_score_correction_bias`."""
    if not config:
        return ["config.json: missing or empty; copy the base parent's config.json into the checkpoint"]
    problems = [
        f"config.json: key {k!r} is missing (vLLM's DeepSeek-V3 model needs it); copy it from the base parent's config"
        for k in REQUIRED_CONFIG_KEYS
        if k not in config
    ]
    archs = config.get("architectures") or []
    if "architectures" in config and not set(archs) & ARCHITECTURES:
        problems.append(
            f"config.json: architectures {archs} is not DeepSeek-V3; use ['DeepseekV3ForCausalLM']"
        )
    if any(n.endswith("e_score_correction_bias") for n in tensors):
        for key, want in (("topk_method", "noaux_tc"), ("scoring_func", "sigmoid")):
            if config.get(key) != want:
                problems.append(
                    f"config.json: {key} is {config.get(key)!r} but the checkpoint has e_score_correction_bias "
                    f'tensors, which vLLM only loads with {key} {want!r}; set "{key}": "{want}"'
                )
    return problems


def check_expected(config: dict[str, Any], tensors: dict[str, TensorInfo]) -> list[str]:
    """Every weight the config implies is present (vLLM would fail late, or leave it uninitialised)."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not config.get("tie_word_embeddings", False):
        names.append("lm_head.weight")
    attn = ["kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]
    attn += ["q_a_proj", "q_b_proj"] if config.get("q_lora_rank") else ["q_proj"]
    for i in range(int(config["num_hidden_layers"])):
        p = f"model.layers.{i}"
        names += [f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight"]
        names += [f"{p}.self_attn.{a}.weight" for a in attn]
        if i < int(config["first_k_dense_replace"]):
            names += [f"{p}.mlp.{w}.weight" for w in ("gate_proj", "up_proj", "down_proj")]
            continue
        names.append(f"{p}.mlp.gate.weight")
        names += [
            f"{p}.mlp.experts.{e}.{w}.weight"
            for e in range(int(config["n_routed_experts"]))
            for w in ("gate_proj", "up_proj", "down_proj")
        ]
        if config.get("n_shared_experts"):
            names += [f"{p}.mlp.shared_experts.{w}.weight" for w in ("gate_proj", "up_proj", "down_proj")]
    return [
        f"{n}: missing, though config.json implies it (num_hidden_layers {config['num_hidden_layers']}, "
        f"n_routed_experts {config['n_routed_experts']}); rebuild the checkpoint or fix config.json"
        for n in names
        if n not in tensors
    ]


def _quant_config(config: dict[str, Any], has_fp8: bool) -> tuple[dict[str, Any] | None, list[str]]:
    qc = config.get("quantization_config")
    if qc is None:
        if has_fp8:
            return None, [
                f"config.json: float8 tensors but no quantization_config; add DeepSeek's {json.dumps(QUANTIZATION_CONFIG)}"
            ]
        return None, []
    if not has_fp8:
        return None, [
            "config.json: quantization_config is present but no linear weight is float8; "
            "remove quantization_config for a bf16 checkpoint"
        ]
    if qc.get("quant_method") != "fp8" or list(qc.get("weight_block_size") or []) != [BLOCK, BLOCK]:
        return None, [
            f"config.json: quantization_config {qc} is not DeepSeek block FP8; "
            f"use quant_method 'fp8' with weight_block_size [{BLOCK}, {BLOCK}]"
        ]
    return qc, []


def check_fp8_layout(tensors: dict[str, TensorInfo], ignored: set[str], report: VerifyReport) -> list[str]:
    """Per-weight FP8 rules (dtype, scale presence/dtype/shape, ignored layers) and orphan scales."""
    problems: list[str] = []
    for name, t in tensors.items():
        if is_scale(name):
            w = tensors.get(weight_of(name))
            if w is None or w.dtype != "F8_E4M3":
                what = "does not exist" if w is None else f"is {w.dtype}, not float8"
                problems.append(
                    f"{name}: a scale whose weight {what}; delete the scale or quantize the weight"
                )
            continue
        module = name[: -len(".weight")]
        if not is_linear_weight(name):
            if t.dtype.startswith("F8"):
                problems.append(
                    f"{name}: stored as {t.dtype} but it is not a linear weight; store it in bf16"
                )
            continue
        scale_key = scale_name(name)
        scale = tensors.get(scale_key)
        if module in ignored:
            report.ignored_layers += 1
            if t.dtype.startswith("F8"):
                problems.append(
                    f"{name}: listed in quantization_config.ignored_layers but stored as {t.dtype}; "
                    f"store it in bf16 or remove {module!r} from ignored_layers"
                )
            continue
        if t.dtype != "F8_E4M3":
            problems.append(
                f"{name}: {t.dtype} in an FP8 checkpoint, not float8_e4m3fn and not in quantization_config.ignored_layers "
                f"(vLLM would load it as garbage); quantize it with its weight_scale_inv or list {module!r} there"
            )
            continue
        report.fp8_weights += 1
        if scale is None:
            problems.append(f"{name}: float8 weight without {scale_key}; rebuild it with its block scales")
        elif scale.dtype != "F32":
            problems.append(f"{scale_key}: scale stored as {scale.dtype}; store block scales as float32")
        elif len(t.shape) != 2 or scale.shape != scale_shape(t.shape):
            want = scale_shape(t.shape) if len(t.shape) == 2 else "2-D"
            problems.append(
                f"{scale_key}: shape {list(scale.shape)} does not fit weight {list(t.shape)} "
                f"({BLOCK}x{BLOCK} blocks need {list(want)}); requantize the weight"
            )
    return problems


def check_fused_precision(tensors: dict[str, TensorInfo]) -> list[str]:
    """Halves vLLM fuses into one parameter, and a layer's routed experts (one FusedMoE), share one precision."""
    problems: list[str] = []
    for name, t in tensors.items():
        for a, b in FUSED_PAIRS:
            if name.endswith(f".{a}.weight"):
                other = tensors.get(name[: -len(f"{a}.weight")] + f"{b}.weight")
                if other is not None and (t.dtype == "F8_E4M3") != (other.dtype == "F8_E4M3"):
                    problems.append(
                        f"{other.name}: {other.dtype} while its fused partner {name} is {t.dtype}; vLLM fuses "
                        f"{a} and {b} into one layer, so store both in the same precision"
                    )
    layers: dict[str, dict[bool, str]] = {}  # "model.layers.3.mlp.experts" -> {is_fp8: an example weight}
    for name, t in tensors.items():
        m = _EXPERT.match(name)
        if m and is_linear_weight(name):
            layers.setdefault(m.group(1), {}).setdefault(t.dtype == "F8_E4M3", name)
    for seen in layers.values():
        if len(seen) == 2:
            problems.append(
                f"{seen[False]}: {tensors[seen[False]].dtype} while {seen[True]} is float8; vLLM runs a layer's "
                "routed experts as one fused MoE, so store all of them in the same precision"
            )
    return problems


def _chunks(info: TensorInfo, buf: bytearray) -> Iterator[tuple[int, memoryview]]:
    """(byte offset in the tensor, bytes) blocks of one tensor, at most len(buf) bytes at a time."""
    with info.shard.open("rb") as f:
        f.seek(info.start)
        done = 0
        while done < info.nbytes:
            n = f.readinto(memoryview(buf)[: min(len(buf), info.nbytes - done)])
            if not n:
                raise VerifyError(
                    f"{info.name}: {info.shard.name} ends early while reading it; re-download the shard"
                )
            yield done, memoryview(buf)[:n]
            done += n


def _surely_finite(block: memoryview, dtype: str) -> bool:
    """Fast test (reductions run at GB/s, elementwise masks do not): True means no NaN/Inf in the block.

    Floats: a NaN/Inf anywhere makes the sum NaN/Inf (a False here can also be an overflow of finite values;
    the exact check decides). e4m3fn: its NaNs are the bytes 0x7F and 0xFF, the maxima as int8 and as uint8.
    """
    if dtype == "F8_E4M3":
        u = torch.frombuffer(block, dtype=torch.uint8)
        return int(u.max()) != 0xFF and int(u.view(torch.int8).max()) != 0x7F
    if dtype in ("BF16", "F16", "F32", "F64"):
        return bool(torch.isfinite(torch.frombuffer(block, dtype=DTYPES[dtype][0]).sum()))
    return False


def _first_nonfinite(bits: torch.Tensor, mask: int) -> int | None:
    """Exact, slower: flat index of the first element whose exponent bits are all ones, or None."""
    bad = (bits & mask) == mask
    return int(bad.nonzero()[0, 0]) if bool(bad.any()) else None


def check_values(
    ckpt: Checkpoint, report: VerifyReport, progress: bool, chunk_bytes: int = CHUNK_BYTES
) -> None:
    """Stream every floating tensor in file order; NaN/Inf anywhere and non-positive scales are defects."""
    order = sorted(ckpt.tensors.values(), key=lambda t: (t.shard.name, t.start))
    buf = bytearray(chunk_bytes)
    total = sum(t.nbytes for t in order)
    bar = _progress_bar(total) if progress else None
    for info in order:
        bits = NONFINITE_BITS.get(DTYPES[info.dtype][0])
        if bits is None:  # integers and bools have no NaN/Inf
            continue
        itype, mask = bits
        size = torch.empty((), dtype=itype).element_size()
        for offset, block in _chunks(info, buf):
            if len(block) % size:
                raise VerifyError(
                    f"{info.name}: read a partial element; the shard is damaged, re-download it"
                )
            if not _surely_finite(block, info.dtype):
                bad = _first_nonfinite(torch.frombuffer(block, dtype=itype), mask)
                if bad is not None:
                    raise VerifyError(
                        f"{info.name}: holds NaN/Inf (first at flat index {offset // size + bad}); rebuild the "
                        "checkpoint from finite parents or re-download that shard"
                    )
            report.bytes_streamed += len(block)
            if bar is not None:
                bar[0].update(bar[1], advance=len(block))
        if is_scale(info.name):
            scale = ckpt.get_tensor(info.name)
            if not bool((scale > 0).all()):
                raise VerifyError(f"{info.name}: has zero or negative block scales; requantize its weight")
        report.values_checked += 1
    if bar is not None:
        bar[0].stop()


def _progress_bar(total: int) -> tuple[Any, Any]:
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    p = Progress("verify", BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    p.start()
    return p, p.add_task("values", total=total)


def verify_checkpoint(path: Path, *, headers_only: bool = False, progress: bool = False) -> VerifyReport:
    """Check a checkpoint directory as vLLM will load it; raise VerifyError (one line, names the tensor) if not.

    Structure first (headers, index, config, FP8 layout, fused precision); then, unless `headers_only`, the values
    of every floating tensor, streamed in 64 MiB blocks. Returns what was checked.
    """
    start = time.perf_counter()
    try:
        ckpt = Checkpoint.open(path)
        config = ckpt.config()
    except VerifyError:
        raise
    except CheckpointError as e:  # index/header defects: same message, one exception type for callers
        raise VerifyError(str(e)) from None
    tensors = ckpt.tensors
    has_fp8 = any(t.dtype.startswith("F8") for t in tensors.values())
    report = VerifyReport(Path(path), "fp8" if has_fp8 else "bf16", len(tensors), ckpt.total_bytes)
    report.headers_only = headers_only

    problems = check_config(config, tensors)
    _fail(problems)
    try:
        problems = check_expected(config, tensors)
    except (TypeError, ValueError):
        raise VerifyError(
            "config.json: num_hidden_layers, first_k_dense_replace and n_routed_experts must be integers; "
            "copy them from the base parent's config"
        ) from None
    qc, qproblems = _quant_config(config, has_fp8)
    problems += qproblems
    _fail(problems)
    if qc is not None:
        ignored = set(qc.get("ignored_layers") or qc.get("modules_to_not_convert") or [])
        problems += check_fp8_layout(tensors, ignored, report)
        unknown = sorted(m for m in ignored if m + ".weight" not in tensors)
        if unknown:
            report.warnings.append(
                f"quantization_config.ignored_layers names {len(unknown)} module(s) with no weight, e.g. {unknown[0]}"
            )
    else:
        problems += [
            f"{n}: a weight_scale_inv in a bf16 checkpoint; delete it (its weight is not float8)"
            for n in tensors
            if is_scale(n)
        ]
    problems += check_fused_precision(tensors)
    _fail(problems)
    if ckpt.index is not None:
        declared = (ckpt.index.get("metadata") or {}).get("total_size")
        if declared is not None and str(declared) != str(ckpt.total_bytes):
            report.warnings.append(
                f"index metadata total_size {declared} != {ckpt.total_bytes} bytes of tensors"
            )

    if not headers_only:
        # One intra-op thread: per-block reductions are memory-bound, and torch's thread pool costs ~10 ms per
        # call on a busy machine (measured: 0.05 GB/s on 1 MB blocks with 2 threads, 8-50 GB/s with 1).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            check_values(ckpt, report, progress)
        finally:
            torch.set_num_threads(threads)
    ckpt.close()
    report.seconds = time.perf_counter() - start
    return report


def verify_child(path: Path, *, headers_only: bool) -> None:
    """What a build checks before it is complete (and `publish` before uploading): `verify_checkpoint` for
    DeepSeek-V2/V3 configs; other architectures (merged through `pattern:` rules) get the index and header check."""
    ckpt = Checkpoint.open(path)
    deepseek = set(ckpt.config().get("architectures") or []) & ARCHITECTURES
    ckpt.close()
    if deepseek:
        verify_checkpoint(path, headers_only=headers_only)
