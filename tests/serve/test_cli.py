"""Settings sources and refusals, and CLI failures that must be one line and fast (no engine starts)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, free_port, serve_command
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from chimera_serve.config import load_settings


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    """A directory that passes the settings' model check (the CLI tests verify real checkpoints below)."""
    (tmp_path / "config.json").write_text("{}")
    return tmp_path


def test_sources_cli_over_env_over_yaml(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    yaml = tmp_path / "serve.yaml"
    yaml.write_text("tensor_parallel_size: 8\nmax_queued: 5\nport: 9001\npricing: {prompt: '0.000001'}\n")
    monkeypatch.setenv("CHIMERA_MAX_QUEUED", "7")
    monkeypatch.setenv("CHIMERA_API_KEYS", "k" * 20 + ",  " + "j" * 20)
    s = load_settings({"model": model, "port": 9002, "host": None}, yaml)
    assert (s.tensor_parallel_size, s.max_queued, s.port, s.host) == (8, 7, 9002, "127.0.0.1")
    assert s.pricing.prompt == "0.000001" and s.pricing.completion == "0"
    assert s.api_keys == ("k" * 20, "j" * 20)
    assert "k" * 20 not in repr(s)  # keys never reach a log through the settings' repr


def test_production_yaml_is_valid(model: Path) -> None:
    s = load_settings({"model": model}, REPO / "chimera_serve/production.yaml")
    assert s.tensor_parallel_size == 8
    assert s.distributed_executor_backend == "mp"
    assert s.host == "0.0.0.0"


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("gpu_memory_utilization", 1.5, "less than or equal"),
        ("tensor_parallel_size", 0, "greater than or equal"),
        ("distributed_executor_backend", "slurm", "'mp' or 'ray'"),
        ("api_keys", "short", "at least 16 characters"),
        ("max_body_bytes", 1 << 40, "less than or equal"),
        ("pricing", {"prompt": "-1"}, "non-negative"),
    ],
)
def test_unsafe_values_refused(model: Path, field: str, value: object, words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        load_settings({"model": model, field: value})


def test_unknown_yaml_key_refused(model: Path, tmp_path: Path) -> None:
    yaml = tmp_path / "serve.yaml"
    yaml.write_text("tensor_paralel_size: 8\n")
    with pytest.raises(ValidationError, match="tensor_paralel_size"):
        load_settings({"model": model}, yaml)


def test_api_key_file(model: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# ops keys\n" + "a" * 32 + "\n\n" + "b" * 32 + "\n")
    assert load_settings({"model": model, "api_key_file": keys}).api_keys == ("a" * 32, "b" * 32)
    keys.write_text("# nothing\n")
    with pytest.raises(ValidationError, match="holds no key"):
        load_settings({"model": model, "api_key_file": keys})


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)


def _one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("chimera-serve: error:")]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_bad_flag_value_is_one_line(model: Path) -> None:
    line = _one_line_error(_run(serve_command(model, 1, "--gpu-memory-utilization", "3")))
    assert "gpu_memory_utilization" in line


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    from merge.synthetic import synthetic_config, write_synthetic_parent

    ckpt = write_synthetic_parent(tmp_path / "bf16", synthetic_config(), seed=0, fp8=False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = _run(serve_command(ckpt, port))
    assert r.returncode == 1
    assert f"127.0.0.1:{port}" in _one_line_error(r) and "--port" in r.stderr


def test_broken_fp8_child_refused_before_engine(tmp_path: Path) -> None:
    """An FP8 child whose kv_a_proj_with_mqa was left bf16 without a scale: vLLM would load it and emit garbage."""
    from merge.synthetic import synthetic_config, write_synthetic_parent

    ckpt = write_synthetic_parent(tmp_path / "fp8", synthetic_config(), seed=0, fp8=True)
    name = "model.layers.0.self_attn.kv_a_proj_with_mqa.weight"
    shard = next(p for p in ckpt.glob("*.safetensors") if name in load_file(p))
    tensors = load_file(shard)
    from merge.fp8 import dequantize

    tensors[name] = dequantize(tensors[name], tensors.pop(name + "_scale_inv")).bfloat16()
    save_file(tensors, shard, metadata={"format": "pt"})
    index = ckpt / "model.safetensors.index.json"
    if index.exists():
        idx = json.loads(index.read_text())
        idx["weight_map"].pop(name + "_scale_inv", None)
        idx.get("metadata", {}).pop("total_size", None)
        index.write_text(json.dumps(idx))
    line = _one_line_error(
        _run([sys.executable, "-m", "chimera_serve.cli", "--model", str(ckpt), "--port", "1"])
    )
    assert "kv_a_proj_with_mqa" in line and "not servable" in line


def test_one_price_alone_is_refused_and_a_flag_overrides_only_its_own(model: Path, tmp_path: Path) -> None:
    line = _one_line_error(_run(serve_command(model, 1, "--price-prompt", "0.0000005")))
    assert "--price-completion" in line and "free" in line
    yaml = tmp_path / "serve.yaml"
    yaml.write_text("pricing: {prompt: '0.000001', completion: '0.000004'}\n")
    from chimera_serve.cli import _settings, build_parser

    s = _settings(
        build_parser().parse_args(["--model", str(model), "--config", str(yaml), "--price-prompt", "2e-6"])
    )
    assert (s.pricing.prompt, s.pricing.completion) == ("0.000002", "0.000004")


LAB_MODEL = REPO / "merge/lab/models/mini-r1"  # a real checkpoint: these checks come after `verify`


def test_engine_argument_this_vllm_refuses_is_one_line() -> None:
    line = _one_line_error(_run(serve_command(LAB_MODEL, free_port(), "--kv-cache-dtype", "fp9")))
    assert "kv_cache_dtype" in line and "fp8" in line  # names the values this release accepts


def test_too_many_cpu_ranks_is_one_line() -> None:
    line = _one_line_error(_run(serve_command(LAB_MODEL, free_port(), "--tensor-parallel-size", "64")))
    assert "CPU cores" in line and "--tensor-parallel-size" in line
