"""Recipe validation (every error names the field) and the DeepSeek-V3 tensor classes."""

from __future__ import annotations

from pathlib import Path

import pytest
from merge_helpers import write_recipe
from pydantic import ValidationError

from merge.errors import RecipeError
from merge.layout import DeepSeekV3Layout, is_fp8_projection
from merge.recipe import Recipe, load_recipe, parse_size

GOOD = {
    "name": "x",
    "base": "a",
    "parents": {"a": "pa", "b": "pb"},
    "rules": [{"select": "routed_experts", "weights": {"b": 1.0}}],
}


def test_relative_parents_resolve_against_the_recipe_dir(tmp_path: Path) -> None:
    (tmp_path / "pa").mkdir()
    r = load_recipe(write_recipe(tmp_path / "r.yaml", {**GOOD, "parents": {"a": "pa", "b": "org/model@v2"}}))
    assert r.parents == {"a": str(tmp_path / "pa"), "b": "org/model@v2"}
    assert r.output.shard_size == 5 * 10**9 and r.output.dtype == "auto"
    with pytest.raises(ValidationError):  # frozen
        r.name = "y"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (
            {"rules": [{"select": "routed_experts", "weights": {"b": -0.5, "a": 1.5}}]},
            "rules.0.weights: weight of 'b' is -0.5",
        ),
        ({"rules": [{"select": "routed_experts", "weights": {"b": 0.5, "a": 0.4}}]}, "sum to 0.9"),
        ({"rules": [{"select": "routed_experts", "weights": {"zz": 1.0}}]}, "unknown parent 'zz'"),
        ({"base": "q"}, "base 'q' is not one of parents"),
        ({"rules": [{"select": "routed_experts", "pattern": "x", "weights": {"b": 1}}]}, "exactly one of"),
        ({"rules": [{"pattern": "(", "weights": {"b": 1}}]}, "not a valid regex"),
        ({"rules": [{"select": "experts", "weights": {"b": 1}}]}, "rules.0.select"),
        ({"rules": [{"select": "router", "weights": {"b": 1}, "threshold": -1}]}, "rules.0.threshold"),
        ({"output": {"shard_size": "lots"}}, "output.shard_size"),
        (
            {"rules": [{"select": "router", "layers": "5-3", "weights": {"b": 1}}]},
            "rules.0.layers: range '5-3' ends",
        ),
        (
            {"rules": [{"select": "router", "layers": "x", "weights": {"b": 1}}]},
            "rules.0.layers: 'x' is not a layer",
        ),
        (
            {"rules": [{"select": "router", "weights": {"b": [0.0, 1.0], "a": [1.0, 0.0]}}]},
            "add e.g. `layers: 3-60`",
        ),
        (
            {"rules": [{"select": "router", "layers": "0-9", "weights": {"b": [0.2, 0.5], "a": [0.8, 0.4]}}]},
            "rules.0.weights: weights sum to 0.9",
        ),
        (
            {
                "rules": [
                    {"select": "router", "layers": "0-9", "weights": {"b": [1.0, 0.5, 0.0], "a": [0.0, 0.5]}}
                ]
            },
            "same length",
        ),
        ({"rules": [{"select": "router", "normalize": False, "weights": {"b": 0.0}}]}, "all 0"),
        ({"chat_template": "zz"}, "chat_template 'zz' is not one of parents"),
        ({"tokenizer_source": "zz"}, "tokenizer_source 'zz' is not one of parents"),
        ({"output": {"dtype": "fp16"}}, "output.dtype"),
        ({"extra": 1}, "extra"),
    ],
)
def test_bad_recipes_name_the_field(tmp_path: Path, edit: dict, needle: str) -> None:
    with pytest.raises(RecipeError) as e:
        load_recipe(write_recipe(tmp_path / "r.yaml", {**GOOD, **edit}))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_negative_weights_point_to_normalize_false(tmp_path: Path) -> None:
    rule = {"select": "routed_experts", "weights": {"a": -1.0, "b": 2.0}}
    with pytest.raises(RecipeError, match="normalize: false"):
        load_recipe(write_recipe(tmp_path / "r.yaml", {**GOOD, "rules": [rule]}))
    r = load_recipe(write_recipe(tmp_path / "r.yaml", {**GOOD, "rules": [{**rule, "normalize": False}]}))
    assert r.rules[0].weights_at(5) == {"a": -1.0, "b": 2.0}


def test_layers_and_weights_by_layer() -> None:
    rule = Recipe.model_validate({**GOOD, "rules": [{"select": "attention", "layers": "10-20, 30",
                                                     "weights": {"a": [1.0, 0.0, 1.0], "b": [0.0, 1.0, 0.0]}}]}).rules[0]  # fmt: skip
    assert rule.layers == ((10, 20), (30, 30))
    assert [rule.matches_layer(n) for n in (9, 10, 25, 30, None)] == [False, True, False, True, False]
    # anchors spread evenly from layer 10 to layer 30: 10 -> first, 20 -> middle, 30 -> last; between: linear
    assert [rule.weights_at(n)["a"] for n in (10, 15, 20, 30)] == [1.0, 0.5, 0.0, 1.0]
    assert sum(rule.weights_at(13).values()) == pytest.approx(1.0)


def test_not_yaml(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(tmp_path / "r.yaml")


def test_weights_within_tolerance_accepted() -> None:
    Recipe.model_validate({**GOOD, "rules": [{"select": "router", "weights": {"a": 1 / 3, "b": 2 / 3}}]})


def test_parse_size() -> None:
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size(1000) == 1000


CLASSES = {
    "model.layers.3.mlp.experts.17.down_proj.weight": "routed_experts",
    "model.layers.3.mlp.experts.17.down_proj.weight_scale_inv": "routed_experts",
    "model.layers.3.mlp.shared_experts.up_proj.weight": "shared_experts",
    "model.layers.3.mlp.gate.weight": "router",
    "model.layers.3.mlp.gate.e_score_correction_bias": "router",
    "model.layers.0.mlp.gate_proj.weight": "dense_mlp",
    "model.layers.2.self_attn.kv_a_proj_with_mqa.weight": "attention",
    "model.layers.2.self_attn.kv_a_layernorm.weight": "norms",
    "model.layers.2.input_layernorm.weight": "norms",
    "model.norm.weight": "norms",
    "model.embed_tokens.weight": "embeddings",
    "lm_head.weight": "lm_head",
    "model.layers.61.mlp.experts.0.up_proj.weight": "mtp",
    "model.layers.61.eh_proj.weight": "mtp",
}


@pytest.mark.parametrize(("name", "cls"), CLASSES.items())
def test_classes(name: str, cls: str) -> None:
    assert (
        DeepSeekV3Layout({"num_hidden_layers": 61, "first_k_dense_replace": 3}).classify(
            name.removesuffix("_scale_inv")
        )
        == cls
    )


def test_fp8_projections() -> None:
    assert is_fp8_projection("model.layers.1.self_attn.kv_a_proj_with_mqa.weight")
    assert is_fp8_projection("model.layers.1.mlp.experts.3.gate_proj.weight")
    assert not is_fp8_projection("model.layers.1.mlp.gate.weight")
    assert not is_fp8_projection("model.layers.61.eh_proj.weight")
    assert not is_fp8_projection("lm_head.weight")


def test_shipped_recipes_pin_hub_parents_to_commits() -> None:
    import re

    from merge_helpers import ROOT

    for name in ("r1t", "r1t2"):
        r = load_recipe(ROOT / "merge" / "recipes" / f"{name}.yaml")
        for spec in r.parents.values():
            assert re.fullmatch(r"deepseek-ai/DeepSeek-[\w.-]+@[0-9a-f]{40}", spec), (name, spec)
    assert load_recipe(ROOT / "merge" / "recipes" / "r1t2.yaml").side_sources()["chat_template"] == "r1_0528"
