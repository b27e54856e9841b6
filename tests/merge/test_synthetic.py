"""Synthetic parents: DeepSeek-V3's exact naming, dtypes and FP8 layout."""

from __future__ import annotations

import json
from pathlib import Path

from merge_helpers import Ckpt, rel

from merge.checkpoint import Checkpoint
from merge.fp8 import scale_shape
from merge.layout import is_fp8_projection
from merge.synthetic import entry_groups, synthetic_config

FULL_V3 = synthetic_config(vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
                           num_hidden_layers=61, num_nextn_predict_layers=1, first_k_dense_replace=3,
                           n_routed_experts=256, num_attention_heads=128, q_lora_rank=1536, qk_nope_head_dim=128,
                           v_head_dim=128)  # fmt: skip


def test_full_deepseek_v3_layout_matches_the_real_checkpoint() -> None:
    entries = [e for g in entry_groups(FULL_V3, True) for e in g]
    assert len(entries) == 91_991
    assert sum(e.nbytes for e in entries) == 688_574_839_360
    kv = {e.name: e for e in entries}["model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv"]
    assert kv.shape == (5, 56)


def test_fp8_parent_dtypes(parents: dict[str, Path]) -> None:
    ck = Checkpoint.open(parents["a"])
    for name, info in ck.tensors.items():
        if name.endswith("_scale_inv"):
            w = ck.tensors[name.removesuffix("_scale_inv")]
            assert info.dtype == "F32" and info.shape == scale_shape(w.shape)
        elif name.endswith("e_score_correction_bias"):
            assert info.dtype == "F32"
        elif is_fp8_projection(name):
            assert info.dtype == "F8_E4M3", name
            assert name + "_scale_inv" in ck.tensors
        else:
            assert info.dtype == "BF16", name
    assert "model.layers.2.eh_proj.weight" in ck.tensors  # the MTP layer
    cfg = json.loads((parents["a"] / "config.json").read_text())
    assert cfg["quantization_config"]["weight_block_size"] == [128, 128]
    assert (parents["a"] / "generation_config.json").exists()


def test_sharded_bf16_and_related(parents: dict[str, Path]) -> None:
    assert (parents["b"] / "model.safetensors.index.json").exists()
    assert len(list(parents["b"].glob("model-*.safetensors"))) > 1
    c = Checkpoint.open(parents["c"])
    assert {i.dtype for n, i in c.tensors.items() if not n.endswith("bias")} == {"BF16"}
    assert "quantization_config" not in json.loads((parents["c"] / "config.json").read_text())
    a, b = Ckpt(parents["a"]), Ckpt(parents["b"])
    rs = [rel(b.value(n), a.value(n)) for n in a.t if n.endswith("proj.weight")]
    assert min(rs) > 0.01 and max(rs) < 1.0 and max(rs) > 2 * min(rs)  # related, and distances vary by tensor


def test_sparse_parent_plans_from_headers_only(tmp_path: Path) -> None:
    from merge.execute import plan_recipe
    from merge.recipe import Recipe
    from merge.synthetic import write_sparse_parent

    cfg = synthetic_config(n_routed_experts=16)
    for p in ("v3", "r1"):
        write_sparse_parent(tmp_path / p, cfg, shard_size=200_000)
    total = Checkpoint.open(tmp_path / "v3").total_bytes
    assert sum(f.stat().st_blocks * 512 for f in (tmp_path / "v3").glob("*.safetensors")) < total / 4  # holes
    r = Recipe.model_validate({"name": "s", "base": "v3", "parents": {p: str(tmp_path / p) for p in ("v3", "r1")},
                               "rules": [{"select": "routed_experts", "weights": {"r1": 1.0}}]})  # fmt: skip
    plan = plan_recipe(r)
    assert plan.bytes_to_write() == plan.bytes_to_read() == total
    assert {row["rule"]: row["decisions"]["copied"] for row in plan.summary()}[
        "0:routed_experts"
    ] == 2 * 16 * 3
