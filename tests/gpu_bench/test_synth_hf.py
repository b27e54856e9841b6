"""The GPU benchmarks' parent writer and transformers reference, run on the CPU on tiny shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from benchmarks.gpu import dsv3, fp8_child, hf_ref, synth_gpu
from merge.fp8 import dequantize
from merge.verify import verify_checkpoint


@pytest.fixture(scope="module")
def children(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from merge.execute import build_child
    from merge.recipe import Recipe

    d = tmp_path_factory.mktemp("fp8child")
    cfg = dsv3.config("tiny", 2, dense=1, vocab=300, max_len=256)
    info = synth_gpu.write_parent_pair(d / "v3", d / "r1", cfg, device="cpu", shard_size=1 << 20)
    assert info["shards"] > 1
    out = {"v3": d / "v3", "r1": d / "r1"}
    for fmt in ("fp8", "bf16"):
        recipe = Recipe(name=f"t-{fmt}", base="v3", parents={"v3": str(d / "v3"), "r1": str(d / "r1")},
                        rules=fp8_child.RULES, output={"dtype": fmt})  # fmt: skip
        build_child(recipe, d / f"child-{fmt}", resume=False, workers=1, device="cpu")
        out[fmt] = d / f"child-{fmt}"
    return out


def _tensor(model_dir: Path, name: str) -> torch.Tensor:
    wmap = json.loads((model_dir / "model.safetensors.index.json").read_text())["weight_map"]
    with safe_open(str(model_dir / wmap[name]), "pt") as f:
        return f.get_tensor(name)


def test_parents_are_valid_fp8_checkpoints_related_like_fine_tunes(children: dict[str, Path]) -> None:
    for p in ("v3", "r1"):
        assert verify_checkpoint(children[p]).summary().startswith("OK")
    name = "model.layers.1.mlp.experts.3.up_proj.weight"
    a = dequantize(_tensor(children["v3"], name), _tensor(children["v3"], name + "_scale_inv"))
    b = dequantize(_tensor(children["r1"], name), _tensor(children["r1"], name + "_scale_inv"))
    r = float((b - a).norm() / a.norm())
    assert 0.01 < r < 1.5  # noise 0.2 x a log-normal factor per tensor: related, not equal


def test_fp8_values_overwrite_the_bf16_twin(children: dict[str, Path]) -> None:
    model = hf_ref.load(children["bf16"], "cpu")
    counts = hf_ref.overwrite_with_fp8(model, children["fp8"])
    assert counts["linear"] > 0 and counts["expert"] == 8 * 3 and counts["checked_equal"] > 0
    params = dict(model.named_parameters())
    for name in ("model.layers.1.self_attn.kv_a_proj_with_mqa.weight", "model.layers.0.mlp.down_proj.weight"):
        want = dequantize(_tensor(children["fp8"], name), _tensor(children["fp8"], name + "_scale_inv"))
        assert torch.equal(params[name].detach(), want.to(torch.bfloat16))
    up = "model.layers.1.mlp.experts.5.up_proj.weight"
    want = dequantize(_tensor(children["fp8"], up), _tensor(children["fp8"], up + "_scale_inv")).to(
        torch.bfloat16
    )
    rows = want.shape[0]
    assert torch.equal(params["model.layers.1.mlp.experts.gate_up_proj"][5, rows:].detach(), want)


def test_greedy_reports_tokens_and_how_decisive_they_are(children: dict[str, Path]) -> None:
    model = hf_ref.load(children["bf16"], "cpu")
    prompts = dsv3.random_prompts(6, 5, 300)
    out = hf_ref.greedy(model, prompts, 3, batch=4)
    assert len(out["tokens"]) == 6 and all(len(s) == 3 for s in out["tokens"])
    assert 1 <= out["distinct_first_tokens"] <= 6 and out["median_top2_gap_in_std"] >= 0
    assert out["tokens"] == hf_ref.greedy(model, prompts, 3, batch=6)["tokens"]  # batching changes nothing
