"""`verify_checkpoint`: sound FP8 and bf16 checkpoints pass; each defect class is refused naming its tensor.

Broken copies are made by really editing safetensors files (load, change, rewrite shards and index).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from merge.errors import VerifyError
from merge.fp8 import dequantize
from merge.layout import is_fp8_projection
from merge.synthetic import FP8_QUANTIZATION_CONFIG as FP8_QC
from merge.synthetic import logical_shapes, synthetic_config, write_synthetic_parent
from merge.verify import check_values, is_linear_weight, verify_checkpoint

INDEX = "model.safetensors.index.json"
SCALE = ".weight_scale_inv"

# Odd widths on purpose: hidden 192 makes 128x128 edge blocks (scales [*, 2]); one MTP layer (eh_proj, head).
TINY = synthetic_config(
    hidden_size=192, intermediate_size=320, moe_intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=2, vocab_size=300, n_routed_experts=4, q_lora_rank=96, kv_lora_rank=32,
    qk_rope_head_dim=16, qk_nope_head_dim=16, v_head_dim=16, num_nextn_predict_layers=1,
)  # fmt: skip


def write_checkpoint(out: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Two shards (layers split by parity, the rest in shard 1) and an index, as our writer lays them out."""
    out.mkdir(parents=True, exist_ok=True)
    shards: dict[str, dict[str, torch.Tensor]] = {
        "model-00001-of-00002.safetensors": {},
        "model-00002-of-00002.safetensors": {},
    }
    names = list(shards)
    for name, x in tensors.items():
        odd = name.startswith("model.layers.") and int(name.split(".")[2]) % 2 == 1
        shards[names[odd]][name] = x.contiguous()
    for shard, ts in shards.items():
        save_file(ts, str(out / shard), metadata={"format": "pt"})
    size = sum(x.numel() * x.element_size() for x in tensors.values())
    weight_map = {n: s for s, ts in shards.items() for n in ts}
    (out / INDEX).write_text(json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map}))
    (out / "config.json").write_text(json.dumps(config))
    return out


def load_checkpoint(root: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(root.glob("*.safetensors")):
        tensors |= load_file(str(shard))
    return json.loads((root / "config.json").read_text()), tensors


@pytest.fixture(scope="module")
def sound(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The project's own synthetic parents, FP8 and bf16, in several shards with an index."""
    base = tmp_path_factory.mktemp("sound")
    return {
        fmt: write_synthetic_parent(base / fmt, TINY, seed=0, fp8=fmt == "fp8", shard_size=200_000)
        for fmt in ("fp8", "bf16")
    }


def broken_copy(
    src: Path, dst: Path, edit: Callable[[dict[str, Any], dict[str, torch.Tensor]], None]
) -> Path:
    """Load `src`, let `edit` change config and tensors in place, write a fresh checkpoint at `dst`."""
    config, tensors = load_checkpoint(src)
    edit(config, tensors)
    return write_checkpoint(dst, config, tensors)


# ------------------------------------------------------------------------------------------ sound checkpoints
def test_sound_fp8_passes(sound: dict[str, Path]) -> None:
    report = verify_checkpoint(sound["fp8"])
    assert report.fmt == "fp8"
    # attention in 3 layers (2 + MTP), dense MLP in layer 0, 4 routed + 1 shared expert in layers 1 and 2
    assert report.fp8_weights == 3 * 5 + 3 + 2 * 5 * 3
    assert len(list(sound["fp8"].glob("*.safetensors"))) > 1
    assert report.values_checked == report.tensors and report.bytes_streamed == report.total_bytes
    assert report.warnings == []
    assert "OK" in report.summary()


def test_sound_bf16_passes(sound: dict[str, Path]) -> None:
    report = verify_checkpoint(sound["bf16"])
    assert (report.fmt, report.fp8_weights) == ("bf16", 0)
    assert report.bytes_streamed == report.total_bytes


def test_linear_weight_rule() -> None:
    yes = ["model.layers.3.mlp.experts.7.gate_proj.weight", "model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
           "model.layers.3.mlp.shared_experts.down_proj.weight", "model.layers.0.mlp.up_proj.weight"]  # fmt: skip
    no = ["model.layers.3.mlp.gate.weight", "model.layers.61.eh_proj.weight", "lm_head.weight",
          "model.layers.61.shared_head.head.weight", "model.layers.0.self_attn.kv_a_layernorm.weight",
          "model.layers.3.mlp.gate.e_score_correction_bias", "model.embed_tokens.weight"]  # fmt: skip
    assert all(map(is_linear_weight, yes)) and not any(map(is_linear_weight, no))
    # our rule and the merge's own quantization rule agree on every tensor of a checkpoint with an MTP layer
    for name, _ in logical_shapes(TINY):
        assert is_linear_weight(name) == is_fp8_projection(name), name


# ------------------------------------------------------------------------------------ one defect per class
KV_A = "model.layers.1.self_attn.kv_a_proj_with_mqa"
Q_A = "model.layers.1.self_attn.q_a_proj"
O_PROJ = "model.layers.0.self_attn.o_proj"
EXP = "model.layers.1.mlp.experts.2.down_proj"


def half_quantize(c: dict[str, Any], t: dict[str, torch.Tensor]) -> None:
    """The trap: one weight left in bf16 (here: dequantized back) with its scale dropped."""
    t[KV_A + ".weight"] = dequantize(t[KV_A + ".weight"], t.pop(KV_A + SCALE)).to(torch.bfloat16)


def bf16_ignored(module: str) -> Callable[[dict[str, Any], dict[str, torch.Tensor]], None]:
    def edit(c: dict[str, Any], t: dict[str, torch.Tensor]) -> None:
        t[module + ".weight"] = dequantize(t[module + ".weight"], t.pop(module + SCALE)).to(torch.bfloat16)
        c["quantization_config"]["ignored_layers"] = [module]

    return edit


def set_value(
    name: str, value: float, index: int = 0
) -> Callable[[dict[str, Any], dict[str, torch.Tensor]], None]:
    def edit(c: dict[str, Any], t: dict[str, torch.Tensor]) -> None:
        x = t[name].clone()
        x.view(-1)[index] = value
        t[name] = x

    return edit


FP8_DEFECTS: dict[str, tuple[Callable[[dict[str, Any], dict[str, torch.Tensor]], None], list[str]]] = {
    "half_quantized": (
        half_quantize,
        [KV_A + ".weight", "not float8_e4m3fn", "ignored_layers", "quantize it"],
    ),
    "missing_scale": (
        lambda c, t: t.pop(O_PROJ + SCALE),
        [O_PROJ + ".weight", "without " + O_PROJ + SCALE, "rebuild"],
    ),
    "misshapen_scale": (
        lambda c, t: t.update({O_PROJ + SCALE: torch.ones(1, 1)}),
        [O_PROJ + SCALE, "[1, 1]", "[2, 1]"],
    ),
    "bf16_scale": (
        lambda c, t: t.update({O_PROJ + SCALE: t[O_PROJ + SCALE].bfloat16()}),
        [O_PROJ + SCALE, "float32"],
    ),
    "nonfinite_scale": (
        set_value(O_PROJ + SCALE, float("inf"), 1),
        [O_PROJ + SCALE, "NaN/Inf", "flat index 1"],
    ),
    "nonpositive_scale": (set_value(O_PROJ + SCALE, 0.0), [O_PROJ + SCALE, "zero or negative", "requantize"]),
    "orphan_scale": (
        lambda c, t: t.update({"model.norm.weight_scale_inv": torch.ones(2, 2)}),
        ["model.norm.weight_scale_inv", "weight is BF16", "delete the scale"],
    ),
    "scale_without_weight": (
        lambda c, t: t.update({"model.layers.1.self_attn.x_proj.weight_scale_inv": torch.ones(1, 2)}),
        ["model.layers.1.self_attn.x_proj.weight_scale_inv", "does not exist"],
    ),
    "fused_pair_mixed": (bf16_ignored(KV_A), [KV_A + ".weight", Q_A + ".weight", "same precision"]),
    "experts_mixed": (bf16_ignored(EXP), [EXP + ".weight", "routed experts", "same precision"]),
    "ignored_but_fp8": (
        lambda c, t: c["quantization_config"].update(ignored_layers=[O_PROJ]),
        [O_PROJ + ".weight", "ignored_layers but stored as F8_E4M3"],
    ),
    "fp8_router": (
        lambda c, t: t.update(
            {"model.layers.1.mlp.gate.weight": t["model.layers.1.mlp.gate.weight"].to(torch.float8_e4m3fn)}
        ),
        ["model.layers.1.mlp.gate.weight", "not a linear weight"],
    ),
    "nan_value": (
        set_value("model.layers.1.mlp.experts.3.up_proj.weight", float("nan"), 77),
        ["experts.3.up_proj.weight", "NaN/Inf", "index 77"],
    ),
    "inf_in_bf16": (
        set_value("model.embed_tokens.weight", float("-inf"), 5),
        ["model.embed_tokens.weight", "NaN/Inf"],
    ),
    "missing_expert": (
        lambda c, t: [t.pop(EXP + ".weight"), t.pop(EXP + SCALE)],
        [EXP + ".weight", "missing", "n_routed_experts 4"],
    ),
    "config_key_missing": (lambda c, t: c.pop("kv_lora_rank"), ["'kv_lora_rank' is missing"]),
    "topk_method_missing": (
        lambda c, t: c.pop("topk_method"),
        ["topk_method", "e_score_correction_bias", "noaux_tc"],
    ),
    "no_quantization_config": (
        lambda c, t: c.pop("quantization_config"),
        ["no quantization_config", "weight_block_size"],
    ),
    "wrong_block_size": (
        lambda c, t: c["quantization_config"].update(weight_block_size=[64, 64]),
        ["not DeepSeek block FP8", "[128, 128]"],
    ),
}


@pytest.mark.parametrize("defect", list(FP8_DEFECTS))
def test_fp8_defect_refused(defect: str, sound: dict[str, Path], tmp_path: Path) -> None:
    edit, needles = FP8_DEFECTS[defect]
    broken = broken_copy(sound["fp8"], tmp_path / defect, edit)
    with pytest.raises(VerifyError) as err:
        verify_checkpoint(broken)
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, f"{defect}: {needle!r} not in {message!r}"


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (
            lambda c, t: t.update({O_PROJ + SCALE: torch.ones(2, 1)}),
            [O_PROJ + SCALE, "bf16 checkpoint", "delete it"],
        ),
        (lambda c, t: c.update(quantization_config=FP8_QC), ["quantization_config is present", "remove"]),
        (
            lambda c, t: c.update(architectures=["LlamaForCausalLM"]),
            ["LlamaForCausalLM", "DeepseekV3ForCausalLM"],
        ),
        (
            set_value("model.layers.0.mlp.down_proj.weight", float("nan"), 3),
            ["mlp.down_proj.weight", "NaN/Inf"],
        ),
    ],
    ids=["scale_in_bf16", "quant_config_in_bf16", "wrong_architecture", "nan_in_bf16"],
)
def test_bf16_defect_refused(edit: Any, needles: list[str], sound: dict[str, Path], tmp_path: Path) -> None:
    broken = broken_copy(sound["bf16"], tmp_path / "b", edit)
    with pytest.raises(VerifyError) as err:
        verify_checkpoint(broken)
    for needle in needles:
        assert needle in str(err.value)


# ------------------------------------------------------------------------------------- index versus shards
def other_shard(weight_map: dict[str, str], name: str) -> str:
    return next(s for s in sorted(set(weight_map.values())) if s != weight_map[name])


def _rewrite_index(root: Path, edit: Callable[[dict[str, str]], None]) -> None:
    index = json.loads((root / INDEX).read_text())
    edit(index["weight_map"])
    (root / INDEX).write_text(json.dumps(index))


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (
            lambda m: m.update({O_PROJ + ".weight": other_shard(m, O_PROJ + ".weight")}),
            "but model.safetensors.index.json says",
        ),
        (lambda m: m.pop(O_PROJ + ".weight"), "but model.safetensors.index.json says None"),
        (
            lambda m: m.update({"model.layers.9.mlp.up_proj.weight": m[O_PROJ + ".weight"]}),
            "listed in",
        ),
        (lambda m: m.update({O_PROJ + ".weight": "model-00009-of-00009.safetensors"}), "is missing"),
    ],
    ids=["wrong_shard", "not_in_index", "extra_in_index", "missing_shard"],
)
def test_index_defect_refused(edit: Any, needle: str, sound: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    shutil.copytree(sound["fp8"], root)
    _rewrite_index(root, edit)
    with pytest.raises(VerifyError, match=needle):
        verify_checkpoint(root, headers_only=True)


def test_truncated_shard_refused(sound: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    shutil.copytree(sound["fp8"], root)
    shard = sorted(root.glob("*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(VerifyError, match="truncated"):
        verify_checkpoint(root, headers_only=True)


# --------------------------------------------------------------------------------------- headers-only, streaming
def test_headers_only_skips_values_and_is_fast(sound: dict[str, Path], tmp_path: Path) -> None:
    nan = broken_copy(sound["fp8"], tmp_path / "nan", FP8_DEFECTS["nan_value"][0])
    start = time.perf_counter()
    report = verify_checkpoint(nan, headers_only=True)
    assert time.perf_counter() - start < 1.0
    assert (report.headers_only, report.bytes_streamed, report.values_checked) == (True, 0, 0)
    assert "headers only" in report.summary()
    with pytest.raises(VerifyError, match="NaN/Inf"):
        verify_checkpoint(nan)
    # structural defects are still caught without reading values
    half = broken_copy(sound["fp8"], tmp_path / "half", half_quantize)
    with pytest.raises(VerifyError, match=KV_A):
        verify_checkpoint(half, headers_only=True)


def test_values_streamed_in_small_blocks_find_the_right_element(
    sound: dict[str, Path], tmp_path: Path
) -> None:
    """A NaN deep inside a tensor read in 256-byte blocks: found, with its flat index in the whole tensor."""
    from merge.checkpoint import Checkpoint
    from merge.verify import VerifyReport

    root = broken_copy(
        sound["bf16"], tmp_path / "nan", set_value("model.embed_tokens.weight", float("nan"), 40_001)
    )
    ckpt = Checkpoint.open(root)
    with pytest.raises(VerifyError, match="flat index 40001"):
        check_values(ckpt, VerifyReport(root, "bf16", 0, 0), progress=False, chunk_bytes=256)


def test_negative_fp8_nan_found(sound: dict[str, Path], tmp_path: Path) -> None:
    """e4m3fn has two NaN bytes, 0x7F and 0xFF; the fast path must see the negative one too."""
    name = "model.layers.1.mlp.experts.0.gate_proj.weight"

    def edit(c: dict[str, Any], t: dict[str, torch.Tensor]) -> None:
        x = t[name].clone()
        x.view(torch.uint8).view(-1)[123] = 0xFF
        t[name] = x

    root = broken_copy(sound["fp8"], tmp_path / "nan", edit)
    with pytest.raises(VerifyError, match=rf"{name}: holds NaN/Inf \(first at flat index 123\)"):
        verify_checkpoint(root)


def test_large_finite_values_pass(sound: dict[str, Path], tmp_path: Path) -> None:
    """Finite values whose sum overflows (the fast path's false alarm) are confirmed finite by the exact check."""
    root = broken_copy(
        sound["bf16"],
        tmp_path / "big",
        lambda c, t: t.update({"lm_head.weight": torch.full_like(t["lm_head.weight"], 3e38)}),
    )
    assert verify_checkpoint(root).values_checked > 0
