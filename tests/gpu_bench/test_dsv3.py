"""DeepSeek-V3 widths, byte budgets and the widened tokenizer of the GPU benchmarks (no GPU needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.gpu import dsv3, fp8_child, serve_throughput


def test_full_checkpoint_bytes_match_deepseek_v3() -> None:
    # DeepSeek-V3's 163 shards hold 688,574,839,360 tensor bytes (shared/reference/aoe.md).
    assert dsv3.checkpoint_bytes(dsv3.config("dsv3", 61, mtp=1), fp8=True) == 688_574_839_360


def test_moe_layer_bytes_are_experts_plus_the_rest() -> None:
    per = dsv3.layer_bytes("dsv3", dsv3.VOCAB_REAL, True)
    expert = 3 * 2048 * 7168 + 3 * (16 * 56) * 4  # gate, up, down in FP8 + their float32 128x128 scale grids
    assert per["moe"] > 256 * expert
    assert per["moe"] - 256 * expert < 0.4e9  # attention, shared expert, router: ~0.25 GB
    assert per["fixed"] == 2 * 129_280 * 7168 * 2 + 7168 * 2  # bf16 embedding and head, final norm
    assert dsv3.layer_bytes("dsv3", 8192, False)["moe"] > 1.9 * per["moe"]


def test_kv_bytes_follow_mla_widths() -> None:
    assert dsv3.kv_bytes_per_token_layer(dsv3.DSV3_WIDTHS) == (512 + 64) * 2


def test_tokenizer_widened_to_the_model_vocab(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    from merge.lab.tokenizer import build_tokenizer

    dsv3.write_tokenizer(tmp_path, 300, 256)
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert tok.get_vocab_size() == 300
    assert tok.decode([250]) == "<f250>"
    assert tok.encode("12+30").ids == build_tokenizer().encode("12+30").ids
    with pytest.raises(ValueError, match="smaller"):
        dsv3.write_tokenizer(tmp_path, 50, 256)


def test_agreement_counts_first_tokens_and_common_prefix() -> None:
    a = [[1, 2, 3, 4], [5, 6, 7, 8]]
    b = [[1, 2, 0, 4], [9, 6, 7, 8]]
    assert dsv3.agreement(a, b) == {"first_token": 0.5, "common_prefix": round((2 + 0) / 8, 4)}
    assert dsv3.agreement(a, a) == {"first_token": 1.0, "common_prefix": 1.0}


def test_fp8_child_depth_puts_parents_in_ram_when_the_disk_is_short() -> None:
    gb = 10**9
    plan = fp8_child.plan_depth("dsv3", 8192, 3, disk_free=58 * gb, ram_free=62 * gb)
    assert (plan["dense"], plan["moe"], plan["parents_in"]) == (3, 1, "ram")
    b = plan["bytes"]
    assert b["child_fp8"] + b["child_bf16"] <= 58 * gb - fp8_child.RESERVE
    roomy = fp8_child.plan_depth("dsv3", 8192, 3, disk_free=400 * gb, ram_free=0)
    assert roomy["parents_in"] == "disk" and roomy["moe"] >= 5
    with pytest.raises(SystemExit, match="no depth fits"):
        fp8_child.plan_depth("dsv3", 8192, 3, disk_free=20 * gb, ram_free=10 * gb)


def test_throughput_depth_fills_the_gpu_and_no_more() -> None:
    gpu, util, reserve, kv_tokens = 143_771 * 2**20, 0.92, 12 * 2**30, 256 * 1024
    plan = serve_throughput.plan_depth("dsv3", dsv3.VOCAB_REAL, 3, gpu, util, reserve, kv_tokens)
    per = dsv3.layer_bytes("dsv3", dsv3.VOCAB_REAL, True)
    used = plan["weight_bytes"] + plan["kv_bytes"] + reserve
    assert used <= util * gpu < used + per["moe"] + plan["kv_bytes"] / plan["layers"]
    assert plan["dense"] == 3 and plan["moe"] >= 8
