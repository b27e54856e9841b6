"""Children built by `build_child` from real tiny parents, checked against independent float64 math."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from merge_helpers import Ckpt, dequant64, fp8_bound, manifest, rel

from merge.checkpoint import Checkpoint
from merge.execute import build_child, plan_recipe
from merge.recipe import Recipe

EXPERT = "model.layers.1.mlp.experts.2.up_proj.weight"
ATTN = "model.layers.0.self_attn.kv_a_proj_with_mqa.weight"


def recipe(parents: dict[str, Path], rules: list[dict[str, Any]], **output: Any) -> Recipe:
    return Recipe.model_validate({"name": "t", "base": "a", "parents": {k: str(v) for k, v in parents.items()},
                                  "rules": rules, "output": {"shard_size": "300KB", **output}})  # fmt: skip


@pytest.fixture(scope="module")
def three_way(parents: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Recipe]:
    r = recipe(parents, [
        {"pattern": r"layers\.1\.mlp\.experts\.0\.", "weights": {"c": 1.0}},  # precedence: before routed_experts
        {"select": "routed_experts", "weights": {"a": 0.2, "b": 0.5, "c": 0.3}},
        {"select": "attention", "weights": {"a": 0.4, "b": 0.6}, "threshold": 1.0},
        {"select": "shared_experts", "weights": {"b": 1.0, "c": 0.0}},
    ])  # fmt: skip
    out = tmp_path_factory.mktemp("child") / "out"
    build_child(r, out, workers=2)
    return out, r


def test_merged_fp8_matches_float64(parents: dict[str, Path], three_way: tuple[Path, Recipe]) -> None:
    out, _ = three_way
    a, b, c, child = Ckpt(parents["a"]), Ckpt(parents["b"]), Ckpt(parents["c"]), Ckpt(out)
    for name in (
        EXPERT,
        "model.layers.1.mlp.experts.3.down_proj.weight",
        "model.layers.1.mlp.experts.1.gate_proj.weight",
    ):
        want = 0.2 * a.value(name) + 0.5 * b.value(name) + 0.3 * c.value(name)
        assert child.t[name].dtype == torch.float8_e4m3fn
        got = child.value(name)
        assert bool(((got - want).abs() <= fp8_bound(want, child.t[name + "_scale_inv"]) * 1.001).all())
        # fresh scales: each block's amax / 448 of the interpolated float32 tensor
        s = child.t[name + "_scale_inv"].double()
        amax = torch.stack([want[i * 128 : (i + 1) * 128].abs().amax(0) for i in range(s.shape[0])])
        amax = torch.stack([amax[:, j * 128 : (j + 1) * 128].amax(1) for j in range(s.shape[1])], 1)
        assert torch.allclose(s, amax / 448, rtol=1e-5)


def test_precedence_copies_and_kept(parents: dict[str, Path], three_way: tuple[Path, Recipe]) -> None:
    out, _ = three_way
    child, a, b, c = Ckpt(out), Ckpt(parents["a"]), Ckpt(parents["b"]), Ckpt(parents["c"])
    recs = {r["name"]: r for r in manifest(out)["tensors"]}
    # rule 0 wins over rule 1 for layer-1 expert 0: taken from the bf16 parent c, requantized to FP8 (auto = like base)
    e0 = "model.layers.1.mlp.experts.0.gate_proj.weight"
    assert recs[e0]["rule"] == "0:pattern:layers\\.1\\.mlp\\.experts\\.0\\." and recs[e0]["source"] == "c"
    assert rel(child.value(e0), c.value(e0)) < 0.05
    # weight 1 on b (c weighs 0): byte-for-byte copy of weight and scale
    sh = "model.layers.1.mlp.shared_experts.down_proj.weight"
    assert recs[sh]["decision"] == "copied"
    assert child.raw(sh) == b.raw(sh) and child.raw(sh + "_scale_inv") == b.raw(sh + "_scale_inv")
    # no rule: the base's bytes
    for n in (
        "model.embed_tokens.weight",
        "model.layers.1.mlp.gate.weight",
        "model.layers.0.mlp.down_proj.weight",
    ):
        assert recs[n]["decision"] == "kept-from-base" and child.raw(n) == a.raw(n)
    assert child.raw("model.layers.0.mlp.down_proj.weight_scale_inv") == a.raw(
        "model.layers.0.mlp.down_proj.weight_scale_inv"
    )


def test_threshold_decisions(parents: dict[str, Path], three_way: tuple[Path, Recipe]) -> None:
    out, _ = three_way
    child, a, b = Ckpt(out), Ckpt(parents["a"]), Ckpt(parents["b"])
    recs = [r for r in manifest(out)["tensors"] if r["class"] == "attention"]
    rs = {
        r["name"]: float(rel(0.4 * a.value(r["name"]) + 0.6 * b.value(r["name"]), a.value(r["name"])))
        for r in recs
    }
    med = (
        sorted(rs.values())[len(rs) // 2]
        if len(rs) % 2
        else sum(sorted(rs.values())[len(rs) // 2 - 1 : len(rs) // 2 + 1]) / 2
    )
    decisions = set()
    for r in recs:
        assert r["r"] == pytest.approx(rs[r["name"]], rel=1e-4)
        assert r["d"] == pytest.approx(rs[r["name"]] / med, rel=1e-4)
        merged = r["d"] >= 1.0
        decisions.add(merged)
        assert r["decision"] == ("merged" if merged else "kept-from-base")
        if not merged:
            assert child.raw(r["name"]) == a.raw(r["name"])
    assert decisions == {True, False}  # the test can fail both ways


def test_output_files(parents: dict[str, Path], three_way: tuple[Path, Recipe]) -> None:
    out, _ = three_way
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja", "README.md",
            "merge-manifest.json", "model.safetensors.index.json"} <= names  # fmt: skip
    assert not [n for n in names if n.startswith(".")]  # no partial files, no state
    cfg = json.loads((out / "config.json").read_text())
    assert cfg == json.loads((parents["a"] / "config.json").read_text())
    m = manifest(out)
    assert set(m["parents"]) == {"a", "b", "c"} and all(m["parents"][p]["files"] for p in m["parents"])
    assert Checkpoint.open(out).tensors.keys() == Checkpoint.open(parents["a"]).tensors.keys()
    assert "routed_experts" in (out / "README.md").read_text()


def test_t0_t1_and_bf16_output(parents: dict[str, Path], tmp_path: Path) -> None:
    r = recipe(parents, [{"select": "routed_experts", "weights": {"a": 0.0, "b": 1.0}},
                         {"select": "attention", "weights": {"a": 1.0}}], dtype="bf16")  # fmt: skip
    build_child(r, tmp_path / "o")
    child, a, b = Ckpt(tmp_path / "o"), Ckpt(parents["a"]), Ckpt(parents["b"])
    assert "quantization_config" not in json.loads((tmp_path / "o" / "config.json").read_text())
    assert not [n for n in child.t if n.endswith("_scale_inv")]
    # t=1: b exactly (its dequantized value, rounded once to bf16); t=0 on the base: a exactly
    assert torch.equal(child.t[EXPERT], b.value(EXPERT).to(torch.bfloat16))
    assert torch.equal(child.t[ATTN], a.value(ATTN).to(torch.bfloat16))
    assert child.t["model.layers.1.mlp.gate.e_score_correction_bias"].dtype == torch.float32


def test_mixed_parents_fp8_output_from_bf16_base(parents: dict[str, Path], tmp_path: Path) -> None:
    r = Recipe.model_validate({"name": "m", "base": "c", "parents": {"a": str(parents["a"]), "c": str(parents["c"])},
                               "rules": [{"select": "routed_experts", "weights": {"a": 0.5, "c": 0.5}}],
                               "output": {"dtype": "fp8"}})  # fmt: skip
    build_child(r, tmp_path / "o")
    child, a, c = Ckpt(tmp_path / "o"), Ckpt(parents["a"]), Ckpt(parents["c"])
    assert (
        json.loads((tmp_path / "o" / "config.json").read_text())["quantization_config"]["quant_method"]
        == "fp8"
    )
    want = 0.5 * a.value(EXPERT) + 0.5 * c.value(EXPERT)
    assert bool(
        ((child.value(EXPERT) - want).abs() <= fp8_bound(want, child.t[EXPERT + "_scale_inv"]) * 1.001).all()
    )
    assert child.t[ATTN].dtype == torch.float8_e4m3fn  # c's bf16 projection, quantized
    assert rel(child.value(ATTN), dequant64(c.t[ATTN], None)) < 0.05


def test_workers_do_not_change_bytes(
    parents: dict[str, Path], three_way: tuple[Path, Recipe], tmp_path: Path
) -> None:
    out, r = three_way
    build_child(r, tmp_path / "w1", workers=1)
    for p in sorted(out.glob("model-*.safetensors")):
        assert (tmp_path / "w1" / p.name).read_bytes() == p.read_bytes()
    assert (tmp_path / "w1" / "merge-manifest.json").read_text() == (out / "merge-manifest.json").read_text()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_build_is_byte_identical_to_the_cpu_build(
    three_way: tuple[Path, Recipe], tmp_path: Path
) -> None:
    """--device cuda: FP8 and bf16 parents, a threshold rule (distances on the GPU), requantized FP8 out."""
    out, r = three_way
    build_child(r, tmp_path / "cuda", workers=2, device="cuda")
    for p in sorted(out.glob("model-*.safetensors")):
        assert (tmp_path / "cuda" / p.name).read_bytes() == p.read_bytes(), p.name

    def decisions(d: Path) -> list[tuple[str, str]]:
        return [(t["name"], t["decision"]) for t in manifest(d)["tensors"]]

    assert decisions(tmp_path / "cuda") == decisions(out)


def test_dry_run_plan_from_headers(parents: dict[str, Path], three_way: tuple[Path, Recipe]) -> None:
    _, r = three_way
    plan = plan_recipe(r)
    rows = {row["rule"]: row for row in plan.summary()}
    assert (
        rows["1:routed_experts"]["tensors"] == 4 * 3 - 3
    )  # 1 MoE layer x 4 experts x 3, less rule 0's (MTP: no)
    assert plan.bytes_to_write() == Checkpoint.open(parents["a"]).total_bytes
    assert plan.bytes_to_read() > plan.bytes_to_write()


def test_llama_pattern_merge_matches_a_float32_linear_merge(tmp_path: Path) -> None:
    """Non-DeepSeek models merge through `pattern:` rules; bf16 results equal sum_i(w_i x t_i) in float32."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    names = {"model.embed_tokens.weight": (100, 48), "model.layers.0.mlp.up_proj.weight": (96, 48),
             "model.layers.0.self_attn.q_proj.weight": (48, 48), "model.norm.weight": (48,)}  # fmt: skip
    for p in ("x", "y"):
        (tmp_path / p).mkdir()
        save_file(
            {n: torch.randn(s, generator=g).to(torch.bfloat16) for n, s in names.items()},
            str(tmp_path / p / "model.safetensors"),
        )
        (tmp_path / p / "config.json").write_text(
            json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
        )
    r = Recipe.model_validate({"name": "l", "base": "x", "parents": {"x": str(tmp_path / "x"), "y": str(tmp_path / "y")},
                               "rules": [{"pattern": r"\.mlp\.|self_attn", "weights": {"x": 0.3, "y": 0.7}}]})  # fmt: skip
    build_child(r, tmp_path / "o")
    x, y, o = Ckpt(tmp_path / "x"), Ckpt(tmp_path / "y"), Ckpt(tmp_path / "o")
    for n in ("model.layers.0.mlp.up_proj.weight", "model.layers.0.self_attn.q_proj.weight"):
        # mergekit 0.1.5's linear merge in float32: acc = 0; acc += w_i * W_i, each step one rounding (addcmul_)
        want = torch.zeros(x.t[n].shape)
        for t, w in ((x.t[n], 0.3), (y.t[n], 0.7)):
            want.addcmul_(t.float(), torch.tensor(w))
        assert torch.equal(o.t[n], want.to(torch.bfloat16))
    assert o.raw("model.norm.weight") == x.raw("model.norm.weight")


def test_tiny_block_gives_a_finite_fp8_child(tmp_path: Path) -> None:
    """A block of float32 subnormals (amax / 448 underflows to 0) used to get scale 0 and NaN bytes, silently."""
    from safetensors.torch import save_file

    name = "model.layers.0.self_attn.q_proj.weight"
    for p, seed in (("x", 0), ("y", 1)):
        w = torch.randn(256, 256, generator=torch.Generator().manual_seed(seed))
        w[:128, :128] = 1e-44 * (seed + 1)
        w[:64, :128] = 0.0  # 0 / a 0 scale: NaN bytes
        (tmp_path / p).mkdir()
        save_file({name: w, "model.norm.weight": torch.ones(256)}, str(tmp_path / p / "model.safetensors"))
        (tmp_path / p / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    r = Recipe.model_validate({"name": "t", "base": "x", "parents": {p: str(tmp_path / p) for p in "xy"},
                               "rules": [{"pattern": "q_proj", "weights": {"x": 0.5, "y": 0.5}}],
                               "output": {"dtype": "fp8"}})  # fmt: skip
    build_child(r, tmp_path / "o")
    x, y, child = Ckpt(tmp_path / "x"), Ckpt(tmp_path / "y"), Ckpt(tmp_path / "o")
    scale = child.t[name + "_scale_inv"]
    assert bool(torch.isfinite(child.t[name].float()).all()) and bool((scale > 0).all())
    want = 0.5 * x.value(name) + 0.5 * y.value(name)
    assert bool(((child.value(name) - want).abs() <= fp8_bound(want, scale)).all())


def test_diff_normalizes_per_rule_exactly_like_the_build(parents: dict[str, Path], tmp_path: Path) -> None:
    """A rule spanning two classes: `diff --recipe` gives the build's d bit for bit; per class it differs."""
    from merge.diff import diff_checkpoints

    r = recipe({"a": parents["a"], "b": parents["b"]},
               [{"pattern": r"self_attn\.|shared_experts\.", "weights": {"b": 1.0}, "threshold": 1.0}])  # fmt: skip
    build_child(r, tmp_path / "o")
    built = {t["name"]: t for t in manifest(tmp_path / "o")["tensors"] if t["rule"] is not None}
    by_rule = {row.name: row for row in diff_checkpoints(parents["a"], parents["b"], recipe=r).rows}
    assert built and all((by_rule[n].r, by_rule[n].d) == (t["r"], t["d"]) for n, t in built.items())
    by_class = {row.name: row for row in diff_checkpoints(parents["a"], parents["b"]).rows}
    assert any(by_class[n].d != t["d"] for n, t in built.items())


def test_distances_stream_in_windows_and_buffers_shrink_back(
    parents: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows of 128 rows give the bits of the whole tensor; a worker keeps no buffer above its limit."""
    from merge import engine as eng
    from merge import mix

    r = recipe(
        {"a": parents["a"], "b": parents["b"]}, [{"pattern": "embed_tokens", "weights": {"a": 0.3, "b": 0.7}}]
    )
    item = next(it for it in plan_recipe(r).items if it.name == "model.embed_tokens.weight")  # 300 x 192 bf16
    e = eng.Engine("a", eng.Readers(), torch.device("cpu"))
    monkeypatch.setattr(mix, "CHUNK_BYTES", 1)  # 128-row chunks
    whole = e.distance(item)  # one window
    monkeypatch.setattr(eng, "WINDOW_BYTES", 1)  # one chunk per window: 3 windows
    assert (
        e.distance(item)
        == whole
        == mix.distance(
            [(w, e.readers.read(item.stored[p].weight), None) for p, w in item.parts()],
            [(1.0, e.readers.read(item.stored["a"].weight), None)],
        )
    )
    e.ws.keep_bytes = 1000
    e.compute(item)
    assert e.ws.nbytes <= 1000  # the 115 KB read buffers were dropped after the tensor
    e.readers.close()
