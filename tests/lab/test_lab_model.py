"""Model dimensions, export layout and the shipped models' files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from merge.lab import LabError
from merge.lab.model import checkpoint_tensors, export_config, hf_config, load_checkpoint, make_dims
from merge.lab.train import main as train_main

MODELS = Path(__file__).resolve().parents[2] / "merge" / "lab" / "models"
SHIPPED = ("mini-base", "mini-v3", "mini-r1")


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"kv_lora_rank": 256}, "kv_lora_rank=512"),
        ({"qk_rope_head_dim": 32}, "qk_rope_head_dim=64"),
        ({"num_experts_per_tok": 9}, "n_routed_experts"),
        ({"first_k_dense_replace": 3}, "no MoE layer"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"heads": 4}, "heads"),
    ],
)
def test_unservable_dimensions_are_refused(override: dict, named: str) -> None:
    with pytest.raises(LabError, match=named):
        make_dims(**override)


def test_train_cli_refuses_before_training() -> None:
    with pytest.raises(SystemExit, match="kv_lora_rank=512"):
        train_main(["--out", "/nonexistent/never-written", "--dim", "kv_lora_rank=128"])
    with pytest.raises(SystemExit, match="NAME=INT"):
        train_main(["--out", "/nonexistent/never-written", "--dim", "hidden_size"])


def test_export_config_has_vllm_keys() -> None:
    cfg = export_config(make_dims())
    assert cfg["topk_method"] == "noaux_tc" and cfg["scoring_func"] == "sigmoid"
    assert cfg["architectures"] == ["DeepseekV3ForCausalLM"]
    assert (cfg["kv_lora_rank"], cfg["qk_rope_head_dim"]) == (512, 64)
    # YaRN at factor 1: the same rotation as plain RoPE, routed to vLLM-CPU's correct rotary path
    assert cfg["rope_parameters"]["rope_type"] == "yarn" and cfg["rope_parameters"]["factor"] == 1.0


def test_checkpoint_tensors_split_fused_experts() -> None:
    torch.manual_seed(0)
    from transformers import DeepseekV3ForCausalLM

    dims = make_dims()
    model = DeepseekV3ForCausalLM(hf_config(dims))
    state = model.state_dict()
    out = checkpoint_tensors(state)
    fused = state["model.layers.1.mlp.experts.gate_up_proj"]  # [E, 2I, H]
    inter = dims.moe_intermediate_size
    for e in (0, dims.n_routed_experts - 1):
        gate = out[f"model.layers.1.mlp.experts.{e}.gate_proj.weight"]
        assert torch.equal(gate, fused[e, :inter].to(torch.bfloat16))
        up = out[f"model.layers.1.mlp.experts.{e}.up_proj.weight"]
        assert torch.equal(up, fused[e, inter:].to(torch.bfloat16))
        down = out[f"model.layers.1.mlp.experts.{e}.down_proj.weight"]
        assert down.shape == (dims.hidden_size, inter)
    assert not any(k.endswith(("gate_up_proj", "experts.down_proj")) for k in out)
    assert out["model.layers.1.mlp.gate.e_score_correction_bias"].dtype == torch.float32
    assert out["model.embed_tokens.weight"].dtype == torch.bfloat16


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_files(name: str) -> None:
    d = MODELS / name
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (d / f).is_file(), f
    weights = d / "model.safetensors"
    assert weights.stat().st_size < 10 * 2**20
    cfg = json.loads((d / "config.json").read_text())
    assert cfg == export_config(make_dims())
    gen = json.loads((d / "generation_config.json").read_text())
    assert gen["max_new_tokens"] >= 32 and gen["eos_token_id"] == 1
    assert "chat_template" in json.loads((d / "tokenizer_config.json").read_text())
    with safe_open(weights, "pt") as f:
        names = set(f.keys())
        bias = f.get_tensor("model.layers.1.mlp.gate.e_score_correction_bias")
    n_experts = cfg["n_routed_experts"]
    assert {f"model.layers.2.mlp.experts.{e}.down_proj.weight" for e in range(n_experts)} <= names
    assert bias.dtype == torch.float32 and bias.abs().sum() > 0  # trained by the balancing update


def test_children_share_the_base_but_differ() -> None:
    with (
        safe_open(MODELS / "mini-v3" / "model.safetensors", "pt") as v3,
        safe_open(MODELS / "mini-r1" / "model.safetensors", "pt") as r1,
    ):
        assert set(v3.keys()) == set(r1.keys())
        name = "model.layers.1.mlp.experts.0.up_proj.weight"
        a, b = v3.get_tensor(name).float(), r1.get_tensor(name).float()
    assert a.shape == b.shape and not torch.equal(a, b)
    assert ((a - b).norm() / a.norm()).item() < 0.5  # fine-tunes of one base, not unrelated models


def test_load_checkpoint_inverts_the_export() -> None:
    from transformers import DeepseekV3ForCausalLM

    state = load_checkpoint(MODELS / "mini-base")
    model = DeepseekV3ForCausalLM(hf_config(make_dims()))
    model.load_state_dict(state, strict=True)  # transformers' fused expert layout, every key
    with safe_open(MODELS / "mini-base" / "model.safetensors", "pt") as f:
        for name, t in checkpoint_tensors(model.state_dict()).items():
            assert torch.equal(t, f.get_tensor(name)), name  # bf16 -> float32 -> bf16 is exact
