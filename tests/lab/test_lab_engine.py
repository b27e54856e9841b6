"""The shipped parents through the real vLLM engine (offline API): mini-r1 thinks, mini-v3 does not, both add."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "merge" / "lab" / "models"


def evaluate(model: str, tmp_path: Path, n: int = 40) -> dict:
    """One engine at a time: each model in its own `python -m merge.lab.evaluate` process."""
    out = tmp_path / f"{model}.json"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    cmd = [sys.executable, "-m", "merge.lab.evaluate", str(MODELS / model), "--n", str(n), "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.mark.engine
@pytest.mark.timeout(900)
def test_parents_through_vllm(tmp_path: Path) -> None:
    r1 = evaluate("mini-r1", tmp_path)
    assert r1["think_rate"] >= 0.9, r1["samples"]
    assert r1["accuracy"] >= 0.8, r1["samples"]
    v3 = evaluate("mini-v3", tmp_path)
    assert v3["think_rate"] <= 0.1, v3["samples"]
    assert v3["accuracy"] >= 0.8, v3["samples"]
    assert r1["mean_output_tokens"] > 3 * v3["mean_output_tokens"]  # the reasoning costs tokens
