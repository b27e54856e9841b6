"""Recipe features of R1T2-style work, built for real from the session parents and checked against float64:
`layers:` ranges, weights that vary by layer, task arithmetic (`normalize: false`), and the side files
(tokenizer, chat template, generation config, LICENSE, remote code) each taken from its chosen parent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from merge_helpers import Ckpt, fp8_bound, manifest

from merge.execute import build_child
from merge.recipe import Recipe


def build(parents: dict[str, Path], out: Path, rules: list[dict[str, Any]], **extra: Any) -> Path:
    r = Recipe.model_validate({"name": "f", "base": "a", "parents": {k: str(v) for k, v in parents.items()},
                               "rules": rules, **extra})  # fmt: skip
    build_child(r, out, workers=2)
    return out


@pytest.fixture(scope="module")
def layered(parents: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(parents, tmp_path_factory.mktemp("layered") / "out", [
        # layer 0 all a, layer 1 half-half, layer 2 (the MTP layer's attention) all b
        {"pattern": r"self_attn\.(q_b|kv_b|o)_proj", "layers": "0-2", "weights": {"a": [1.0, 0.0], "b": [0.0, 1.0]}},
        # task arithmetic: c + (b - a), weights used as given
        {"select": "routed_experts", "normalize": False, "weights": {"a": -1.0, "b": 1.0, "c": 1.0}},
        {"select": "norms", "layers": [1], "weights": {"b": 1.0}},
    ], tokenizer_source="a", chat_template="c", generation_config="c")  # fmt: skip


def test_weights_vary_linearly_across_layers(parents: dict[str, Path], layered: Path) -> None:
    a, b, child = Ckpt(parents["a"]), Ckpt(parents["b"]), Ckpt(layered)
    recs = {r["name"]: r for r in manifest(layered)["tensors"]}
    first, mtp = "model.layers.0.self_attn.o_proj.weight", "model.layers.2.self_attn.o_proj.weight"
    assert recs[first]["decision"] == "kept-from-base" and child.raw(first) == a.raw(first)
    assert recs[mtp]["decision"] == "copied" and child.raw(mtp) == b.raw(mtp)
    mid = "model.layers.1.self_attn.kv_b_proj.weight"
    assert recs[mid]["weights"] == {"a": 0.5, "b": 0.5}
    want = 0.5 * a.value(mid) + 0.5 * b.value(mid)
    assert bool(
        ((child.value(mid) - want).abs() <= fp8_bound(want, child.t[mid + "_scale_inv"]) * 1.001).all()
    )
    # `layers:` narrows a rule: layer 1's norms from b; layer 0's and model.norm (no layer) stay a's
    for n, src in (("model.layers.1.input_layernorm.weight", b), ("model.layers.0.input_layernorm.weight", a),
                   ("model.norm.weight", a)):  # fmt: skip
        assert child.raw(n) == src.raw(n), n


def test_task_arithmetic_with_weights_outside_0_1(parents: dict[str, Path], layered: Path) -> None:
    a, b, c, child = Ckpt(parents["a"]), Ckpt(parents["b"]), Ckpt(parents["c"]), Ckpt(layered)
    name = "model.layers.1.mlp.experts.2.down_proj.weight"
    want = c.value(name) + (b.value(name) - a.value(name))
    got = child.value(name)
    assert bool(((got - want).abs() <= fp8_bound(want, child.t[name + "_scale_inv"]) * 1.001).all())
    assert float((got - c.value(name)).abs().max()) > 0.01  # it really moved: not a copy of c
    assert {r["name"]: r for r in manifest(layered)["tensors"]}[name]["weights"] == {
        "a": -1.0,
        "b": 1.0,
        "c": 1.0,
    }


def test_side_files_from_chosen_parents(parents: dict[str, Path], layered: Path) -> None:
    a, c = parents["a"], parents["c"]
    # tokenizer from a; its template key from c (which keeps its template in tokenizer_config.json), so a's own
    # chat_template.jinja must not come along and override it
    assert (layered / "tokenizer.json").read_bytes() == (a / "tokenizer.json").read_bytes()
    assert (layered / "added_tokens.json").read_bytes() == (a / "added_tokens.json").read_bytes()
    tok = json.loads((layered / "tokenizer_config.json").read_text())
    assert tok == {"model_max_length": 2048, "chat_template": "C: {{ messages }}"}
    assert not (layered / "chat_template.jinja").exists()
    assert (layered / "generation_config.json").read_bytes() == (c / "generation_config.json").read_bytes()
    for n in ("LICENSE", "configuration_deepseek.py"):  # from the base
        assert (layered / n).read_bytes() == (a / n).read_bytes()
    m = manifest(layered)
    assert m["side_files"] == {"base": "a", "tokenizer": "a", "chat_template": "c", "generation_config": "c"}
    assert set(m["output"]["files"]) >= {"LICENSE", "configuration_deepseek.py", "tokenizer_config.json"}
    card = (layered / "README.md").read_text()
    assert "chat template `c`" in card and "(layers 0-2)" in card and "(as given)" in card


def test_template_parent_without_a_template_is_refused(parents: dict[str, Path], tmp_path: Path) -> None:
    from merge.errors import ParentError

    with pytest.raises(ParentError, match="chat_template: parent 'b' has no chat template"):
        build(parents, tmp_path / "o", [], chat_template="b")
    assert not (tmp_path / "o").exists()


def test_bf16_child_of_fp8_parents_with_weights_by_layer_matches_float64(
    parents: dict[str, Path], tmp_path: Path
) -> None:
    """Weight lists: the rule's first layer gets the first value, its last layer the last; one-layer rules the
    first."""
    out = build(parents, tmp_path / "o", [
        {"select": "attention", "layers": "0-1", "weights": {"a": [0.2, 0.8], "b": [0.8, 0.2]}},
        {"select": "routed_experts", "layers": "1", "weights": {"a": [0.25, 0.75], "b": [0.75, 0.25]}},
    ], output={"dtype": "bf16"})  # fmt: skip
    a, b, child = Ckpt(parents["a"]), Ckpt(parents["b"]), Ckpt(out)
    for name, wa in (("model.layers.0.self_attn.q_a_proj.weight", 0.2), ("model.layers.1.self_attn.q_a_proj.weight", 0.8),
                     ("model.layers.1.mlp.experts.0.up_proj.weight", 0.25)):  # fmt: skip
        want = (wa * a.value(name) + (1 - wa) * b.value(name)).to(torch.float32).to(torch.bfloat16)
        assert torch.allclose(child.t[name].double(), want.double(), rtol=2**-7, atol=1e-6), name
