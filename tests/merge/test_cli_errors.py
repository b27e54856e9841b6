"""Every bad input of the issue through the real CLI: one line on stderr, non-zero exit, no traceback, and
nothing half-written in the output directory."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest
import torch
from merge_helpers import CONFIG, assert_one_line_error, run_cli, write_recipe

from merge.checkpoint import Checkpoint
from merge.synthetic import write_synthetic_parent

RULES = [{"select": "routed_experts", "weights": {"a": 0.5, "x": 0.5}}]
EXPERT = "model.layers.1.mlp.experts.1.up_proj.weight"


def build(tmp_path: Path, parents: dict[str, Path], x: Path, rules: list | None = None, *extra: str):  # type: ignore[no-untyped-def]
    r = write_recipe(tmp_path / "r.yaml", {"name": "e", "base": "a", "parents": {"a": str(parents["a"]), "x": str(x)},
                                           "rules": RULES if rules is None else rules})  # fmt: skip
    return run_cli("build", str(r), "--out", str(tmp_path / "out"), *extra)


def nothing_written(tmp_path: Path) -> bool:
    out = tmp_path / "out"
    return not out.exists() or not any(out.iterdir())


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_tensor_names_differ(parents: dict[str, Path], tmp_path: Path) -> None:
    x = write_synthetic_parent(tmp_path / "x", {**CONFIG, "n_routed_experts": 3}, seed=3, fp8=True)
    assert_one_line_error(build(tmp_path, parents, x), "differ", "experts.3", "missing")
    assert nothing_written(tmp_path)


def test_tensor_shapes_differ(parents: dict[str, Path], tmp_path: Path) -> None:
    x = write_synthetic_parent(tmp_path / "x", {**CONFIG, "moe_intermediate_size": 128}, seed=3, fp8=True)
    assert_one_line_error(build(tmp_path, parents, x), "differ", "shape")
    assert nothing_written(tmp_path)


def test_missing_shard(parents: dict[str, Path], tmp_path: Path) -> None:
    x = _copy(parents["b"], tmp_path / "x")
    sorted(x.glob("model-*.safetensors"))[1].unlink()
    assert_one_line_error(build(tmp_path, parents, x), "missing", "00002")
    assert nothing_written(tmp_path)


def test_truncated_shard(parents: dict[str, Path], tmp_path: Path) -> None:
    x = _copy(parents["c"], tmp_path / "x")
    f = x / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    assert_one_line_error(build(tmp_path, parents, x), "truncated")
    assert nothing_written(tmp_path)


def test_corrupt_header(parents: dict[str, Path], tmp_path: Path) -> None:
    x = _copy(parents["c"], tmp_path / "x")
    f = x / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:24] = b"\x00garbage\xff\xfe!!!!!!!"
    f.write_bytes(bytes(data))
    assert_one_line_error(build(tmp_path, parents, x), "model.safetensors", "re-download")
    assert nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("weights", "needle"),
    [
        ({"a": -0.5, "x": 1.5}, ">= 0"),
        ({"a": 0.5, "x": 0.6}, "sum to 1.1"),
        ({"a": 0.5, "zz": 0.5}, "unknown parent 'zz'"),
    ],
)
def test_bad_weights(parents: dict[str, Path], tmp_path: Path, weights: dict, needle: str) -> None:
    p = build(tmp_path, parents, parents["c"], [{"select": "routed_experts", "weights": weights}])
    assert_one_line_error(p, "rules.0.weights", needle)
    assert nothing_written(tmp_path)


def test_pattern_matching_nothing_warns(parents: dict[str, Path], tmp_path: Path) -> None:
    p = build(
        tmp_path, parents, parents["c"], [{"pattern": "no_such_tensor", "weights": {"x": 1.0}}], "--dry-run"
    )
    assert p.returncode == 0, p.stderr
    assert "warning: rule 0 (pattern:no_such_tensor) matches no tensor" in p.stderr
    assert "bytes to read" in p.stdout


def test_nan_in_parent_names_the_tensor(parents: dict[str, Path], tmp_path: Path) -> None:
    x = _copy(parents["c"], tmp_path / "x")
    info = Checkpoint.open(x).tensors[EXPERT]
    with (x / "model.safetensors").open("r+b") as f:  # one bf16 NaN (0x7fc0) in the middle of the tensor
        f.seek(info.start + 2 * 1000)
        f.write(struct.pack("<H", 0x7FC0))
    assert_one_line_error(build(tmp_path, parents, x), "parent 'x'", EXPERT, "NaN")
    assert nothing_written(tmp_path)


def test_inf_in_copied_tensor_names_parent_and_tensor(parents: dict[str, Path], tmp_path: Path) -> None:
    x = _copy(parents["c"], tmp_path / "x")
    info = Checkpoint.open(x).tensors["model.layers.1.mlp.gate.weight"]
    with (x / "model.safetensors").open("r+b") as f:
        f.seek(info.start + 10)
        f.write(struct.pack("<H", 0x7F80))  # +Inf
    rules = [{"select": "router", "weights": {"x": 1.0}}]
    assert_one_line_error(
        build(tmp_path, parents, x, rules), "parent 'x'", "model.layers.1.mlp.gate.weight", "Inf"
    )
    assert nothing_written(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_gpu(parents: dict[str, Path], tmp_path: Path) -> None:
    assert_one_line_error(
        build(tmp_path, parents, parents["c"], None, "--device", "cuda"), "CUDA", "--device cpu"
    )
    assert nothing_written(tmp_path)


def test_missing_parent_dir_and_recipe(parents: dict[str, Path], tmp_path: Path) -> None:
    assert_one_line_error(build(tmp_path, parents, tmp_path / "nope"), "parent 'x'", "not a directory")
    assert_one_line_error(
        run_cli("build", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o")), "cannot read"
    )
    assert nothing_written(tmp_path)


def test_verify_and_diff_cli(parents: dict[str, Path], tmp_path: Path) -> None:
    p = run_cli("verify", str(parents["a"]), "--headers-only")
    assert p.returncode == 0 and p.stdout.startswith("OK"), p.stderr
    p = run_cli("diff", str(parents["a"]), str(parents["c"]), "--json", str(tmp_path / "d.json"))
    assert p.returncode == 0, p.stderr
    assert "routed_experts" in p.stdout and (tmp_path / "d.json").exists()
    x = _copy(parents["c"], tmp_path / "x")
    (x / "model.safetensors").write_bytes(b"\x01")
    assert_one_line_error(run_cli("verify", str(x)), "truncated")


def test_bf16_weight_with_a_scale_is_refused(parents: dict[str, Path], tmp_path: Path) -> None:
    """A half-converted parent: a bf16 expert that still carries a weight_scale_inv. Merging would multiply bf16
    values by a stray scale and write the child as FP8 + scale, which verify accepts."""
    from safetensors.torch import load_file, save_file

    from merge.fp8 import scale_shape

    x = _copy(parents["c"], tmp_path / "x")
    tensors = load_file(str(x / "model.safetensors"))
    tensors[EXPERT + "_scale_inv"] = torch.full(scale_shape(tuple(tensors[EXPERT].shape)), 0.5)
    save_file(tensors, str(x / "model.safetensors"), metadata={"format": "pt"})
    assert_one_line_error(build(tmp_path, parents, x), "parent 'x'", EXPERT, "BF16", "weight_scale_inv")
    assert nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["build", "r.yaml", "--out", "o", "--bogus"], "No such option: --bogus"),
     (["build", "r.yaml", "--out", "o", "--verify", "bad"], "Invalid value for --verify")],
)  # fmt: skip
def test_usage_errors_are_usage_messages_not_tracebacks(args: list[str], needle: str) -> None:
    """typer 0.29 parses with a click of its own: its usage errors must still reach the user as usage errors."""
    p = run_cli(*args)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert needle in p.stderr and "build [OPTIONS]" in p.stderr
