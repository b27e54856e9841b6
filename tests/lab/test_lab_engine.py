"""The shipped models through the real vLLM engine (offline API): mini-r1 thinks, mini-v3 does not, both add;
mini-tools calls `add` when it is offered, answers from the tool's result, and adds by itself without tools."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "merge" / "lab" / "models"


def evaluate(model: str, tmp_path: Path, n: int = 40, *flags: str) -> dict:
    """One engine at a time: each model in its own `python -m merge.lab.evaluate` process."""
    out = tmp_path / f"{model}.json"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "merge.lab.evaluate",
        str(MODELS / model),
        "--n",
        str(n),
        "--json",
        str(out),
        *flags,
    ]
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


@pytest.mark.engine
@pytest.mark.timeout(300)
def test_tool_model_through_vllm(tmp_path: Path) -> None:
    r = evaluate("mini-tools", tmp_path, 10, "--tools")
    assert r["call_rate"] >= 0.9 and r["argument_accuracy"] >= 0.9, r["samples"]["call"]
    assert r["call_think_rate"] >= 0.9, r["samples"]["call"]  # it reasons before calling, like mini-r1
    assert r["followup_accuracy"] >= 0.9, r["samples"]["followup"]
    assert r["plain_accuracy"] >= 0.8 and r["plain_call_rate"] == 0.0, r["samples"]["plain"]
