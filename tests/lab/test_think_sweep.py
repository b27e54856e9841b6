"""The sweep's refusals and its pure analysis (no engine)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from benchmarks.think_sweep import (
    DEFAULT_RECIPE,
    check_grid,
    lab_parents,
    level_crossing,
    parse_grid,
    sweep_recipe,
    transition,
)
from merge.lab import LabError
from merge.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "merge" / "lab" / "models"


@pytest.mark.parametrize("grid", ["0,1.5", "-0.1,0.5", "nan", "", "a,b", "0,inf"])
def test_bad_grids_are_refused(grid: str) -> None:
    with pytest.raises(LabError):
        parse_grid(grid)


def test_grid_sorted_unique() -> None:
    assert parse_grid("1,0.5,0,0.5") == [0.0, 0.5, 1.0]
    assert check_grid([0.0, 1.0]) == [0.0, 1.0]


def test_demo_recipe_names_the_lab_parents() -> None:
    v3, r1 = lab_parents(load_recipe(DEFAULT_RECIPE))
    assert v3.resolve() == (MODELS / "mini-v3").resolve() and r1.resolve() == (MODELS / "mini-r1").resolve()


def test_foreign_recipes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="not one of the lab's models"):
        lab_parents(load_recipe(ROOT / "merge" / "recipes" / "r1t.yaml"))
    # mini-base is a real, loadable DeepSeek-V3 directory, but not a parent the sweep knows
    shutil.copytree(MODELS / "mini-base", tmp_path / "other")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: x\nbase: v3\nparents: {{v3: {MODELS / 'mini-v3'}, r1: {tmp_path / 'other'}}}\n"
        "rules: [{select: routed_experts, weights: {r1: 1.0}}]\n"
    )
    with pytest.raises(LabError, match="'r1'"):
        lab_parents(load_recipe(recipe))


def test_sweep_recipes() -> None:
    all_ = sweep_recipe("all", 0.3, MODELS / "mini-v3", MODELS / "mini-r1")
    assert all_.rules[0].pattern == ".*" and all_.rules[0].weights == {"v3": 0.7, "r1": 0.3}
    routed = sweep_recipe("routed", 1.0, MODELS / "mini-v3", MODELS / "mini-r1")
    assert routed.rules[0].select == "routed_experts" and routed.base == "v3"
    rest = sweep_recipe("rest", 0.5, MODELS / "mini-v3", MODELS / "mini-r1")
    pattern = re.compile(rest.rules[0].pattern)
    assert not pattern.search("model.layers.1.mlp.experts.7.down_proj.weight")
    for name in (
        "model.layers.1.mlp.shared_experts.up_proj.weight",
        "model.layers.1.mlp.gate.weight",
        "lm_head.weight",
    ):
        assert pattern.search(name), name


def test_transition_analysis() -> None:
    curve = [(0.0, 0.0), (0.4, 0.0), (0.5, 0.2), (0.6, 0.8), (0.7, 1.0), (1.0, 1.0)]
    assert level_crossing(curve, 0.5) == pytest.approx(0.55)
    t = transition(curve)
    assert t["from_10"] == pytest.approx(0.45) and t["to_90"] == pytest.approx(0.65)
    assert t["verdict"] == "gradual" and t["width_10_90"] == pytest.approx(0.2)
    sharp = transition([(0.0, 0.0), (0.5, 0.05), (0.55, 0.95), (1.0, 1.0)])
    assert sharp["verdict"] == "sharp"
    flat = transition([(0.0, 0.0), (1.0, 0.04)])
    assert flat["cross_50"] is None and flat["verdict"] == "no full switch in [0, 1]"
