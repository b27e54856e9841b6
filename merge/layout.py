"""Named tensor classes of the DeepSeek-V3 naming scheme (V3, V3-0324, R1, R1-0528 and their children).

Every tensor name maps to exactly one class, checked in this order:
  mtp             any tensor of a layer at index >= num_hidden_layers (the multi-token-prediction module)
  routed_experts  model.layers.N.mlp.experts.E.*
  shared_experts  model.layers.N.mlp.shared_experts.*
  router          model.layers.N.mlp.gate.weight, model.layers.N.mlp.gate.e_score_correction_bias
  dense_mlp       model.layers.N.mlp.{gate,up,down}_proj.* for N < first_k_dense_replace
  norms           every *norm* weight (input/post-attention, q_a/kv_a layernorms, model.norm)
  attention       model.layers.N.self_attn.* projections
  embeddings      model.embed_tokens.weight
  lm_head         lm_head.weight
  other           anything else (never selected by name; use `pattern:`)
A `<name>.weight_scale_inv` is never classified on its own: it belongs to `<name>.weight`.
Other architectures (Llama, Qwen-MoE, Mixtral, ...) merge through `pattern:` rules on the tensor names.
"""

from __future__ import annotations

import re
from typing import Any, Literal

TensorClass = Literal[
    "routed_experts",
    "shared_experts",
    "router",
    "dense_mlp",
    "attention",
    "norms",
    "embeddings",
    "lm_head",
    "mtp",
]
TENSOR_CLASSES: tuple[str, ...] = TensorClass.__args__  # type: ignore[attr-defined]
SCALE_SUFFIX = "_scale_inv"  # "<name>.weight" -> "<name>.weight_scale_inv"

_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_EXPERT = re.compile(r"^model\.layers\.\d+\.mlp\.experts\.(\d+)\.")
_ROUTER = re.compile(r"^model\.layers\.\d+\.mlp\.gate\.(weight|e_score_correction_bias)$")
_DENSE = re.compile(r"^model\.layers\.\d+\.mlp\.(gate|up|down)_proj\.")
# The linear weights DeepSeek stores as block FP8: what `output.dtype: fp8` quantizes when no parent is FP8, and
# what `chimera-merge verify` requires in float8 (MTP's eh_proj and shared_head stay bf16).
_FP8_PROJ = re.compile(
    r"(self_attn\.(q_proj|q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj)"
    r"|mlp\.(experts\.\d+\.|shared_experts\.)?(gate|up|down)_proj)\.weight$"
)


def layer_of(name: str) -> int | None:
    m = _LAYER.match(name)
    return int(m.group(1)) if m else None


def scale_name(weight: str) -> str:
    """'<m>.weight' -> '<m>.weight_scale_inv'."""
    return weight + SCALE_SUFFIX


def is_scale(name: str) -> bool:
    return name.endswith(".weight" + SCALE_SUFFIX)


def weight_of(scale: str) -> str:
    """'<m>.weight_scale_inv' -> '<m>.weight'."""
    return scale.removesuffix(SCALE_SUFFIX)


def is_fp8_projection(name: str) -> bool:
    """True for the linear weights that DeepSeek-V3 checkpoints store as block FP8."""
    return _FP8_PROJ.search(name) is not None and layer_of(name) is not None


class DeepSeekV3Layout:
    """Tensor classes for one model config (needs num_hidden_layers and first_k_dense_replace)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.num_layers = int(config.get("num_hidden_layers", 1 << 30))
        self.first_dense = int(config.get("first_k_dense_replace", 0) or 0)

    def classify(self, name: str) -> str:
        layer = layer_of(name)
        if layer is not None:
            if layer >= self.num_layers:
                return "mtp"
            if _EXPERT.match(name):
                return "routed_experts"
            if ".mlp.shared_experts." in name:
                return "shared_experts"
            if _ROUTER.match(name):
                return "router"
            if _DENSE.match(name) and layer < self.first_dense:
                return "dense_mlp"
            if "norm" in name.rsplit(".", 2)[-2]:
                return "norms"
            if ".self_attn." in name:
                return "attention"
            return "other"
        if name == "model.embed_tokens.weight":
            return "embeddings"
        if name == "lm_head.weight":
            return "lm_head"
        if "norm" in name:
            return "norms"
        return "other"
