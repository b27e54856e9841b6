"""Tiny DeepSeek-V3-layout parents, written once per session with the real synthetic generator.

Shapes cross 128-blocks unevenly (hidden 192, moe_intermediate 160, kv_a 576 rows), so every FP8 tensor has
partial edge blocks. `a` is the FP8 base; `b` an FP8 "fine-tune" of a, sharded; `c` a bf16 fine-tune of a.
Side files as DeepSeek ships them: `a` has remote code, a LICENSE, a tokenizer with a template file; `c` its own
tokenizer whose chat template sits in tokenizer_config.json, and its own generation defaults.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from merge_helpers import CONFIG

from merge.synthetic import write_synthetic_parent


@pytest.fixture(scope="session")
def parents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("parents")
    a = write_synthetic_parent(d / "a", CONFIG, seed=0, fp8=True)
    (a / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE"}}))
    (a / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 2048}))
    (a / "added_tokens.json").write_text(json.dumps({"<think>": 299}))
    (a / "chat_template.jinja").write_text("{{ messages }}")
    (a / "configuration_deepseek.py").write_text("# remote code named by auto_map\n")
    (a / "LICENSE").write_text("MIT License (test)\n")
    b = write_synthetic_parent(d / "b", CONFIG, seed=1, fp8=True, base=a, shard_size=400_000)
    c = write_synthetic_parent(d / "c", CONFIG, seed=2, fp8=False, base=a)
    (c / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "c": True}}))
    (c / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 7, "chat_template": "C: {{ messages }}"})
    )
    (c / "generation_config.json").write_text(json.dumps({"temperature": 0.3, "top_p": 0.9}))
    return {"a": a, "b": b, "c": c}
