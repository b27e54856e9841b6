"""Independent reference math for the merge tests: float64, straight from the format's definition."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open

from merge.checkpoint import Checkpoint
from merge.synthetic import synthetic_config

ROOT = Path(__file__).resolve().parents[2]
# The session parents' config: shapes cross 128-blocks unevenly (hidden 192, moe_intermediate 160, kv_a 576 rows).
CONFIG = synthetic_config(hidden_size=192, moe_intermediate_size=160, intermediate_size=320, n_routed_experts=4,
                          num_hidden_layers=2, num_nextn_predict_layers=1, vocab_size=300)  # fmt: skip


def dequant64(w: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
    """float64 value of a stored weight: each element times its 128x128 block's scale (loop over blocks)."""
    x = w.to(torch.float64)
    if s is None:
        return x
    out = x.clone()
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            out[i * 128 : (i + 1) * 128, j * 128 : (j + 1) * 128] *= float(s[i, j])
    return out


class Ckpt:
    """All tensors of a checkpoint by name (tiny test models only)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.info = Checkpoint.open(root).tensors
        self.t: dict[str, torch.Tensor] = {}
        for shard in {i.shard for i in self.info.values()}:
            with safe_open(str(shard), "pt") as f:
                for k in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                    self.t[k] = f.get_tensor(k)

    def value(self, name: str) -> torch.Tensor:
        return dequant64(self.t[name], self.t.get(name + "_scale_inv"))

    def raw(self, name: str) -> bytes:
        return Checkpoint.open(self.root).read_raw(name)


def write_recipe(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def manifest(out: Path) -> dict[str, Any]:
    return json.loads((out / "merge-manifest.json").read_text())


def rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x - y) / torch.linalg.vector_norm(y))


def fp8_bound(ref: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-element bound on |dequant(quant(x)) - x| for e4m3 with per-block scale s: half an ulp of 3 mantissa
    bits (2^-4 |x|) in the normal range, half the subnormal step (2^-10 s) below it."""
    s = (
        scale.to(torch.float64)
        .repeat_interleave(128, 0)[: ref.shape[0]]
        .repeat_interleave(128, 1)[:, : ref.shape[1]]
    )
    return ref.abs() * 2.0**-4 + s * 2.0**-10 + 1e-12


def run_cli(
    *args: str, timeout: float = 180, env: dict[str, str] | None = None, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """`python -m merge.cli ARGS` in a fresh process, as a user runs it."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, "-m", "merge.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=full_env, **kw)  # fmt: skip


def assert_one_line_error(p: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert p.returncode != 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def file_size_limit(nbytes: int) -> Any:
    """A preexec_fn capping every file the child process writes at `nbytes`: a full disk, for one process."""
    import resource
    import signal

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return limit
