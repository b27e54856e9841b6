"""Resume: a real `chimera-merge build` killed with SIGKILL mid-build, or stopped by a full disk, then resumed."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from merge_helpers import ROOT, assert_one_line_error, run_cli, write_recipe

from merge.synthetic import synthetic_config, write_synthetic_parent
from merge.writer import MANIFEST_NAME, STATE_NAME

CONFIG = synthetic_config(
    hidden_size=256, moe_intermediate_size=256, n_routed_experts=12, num_hidden_layers=3
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("resume")
    write_synthetic_parent(d / "p" / "a", CONFIG, seed=0, fp8=True)
    write_synthetic_parent(d / "p" / "b", CONFIG, seed=1, fp8=True, base=d / "p" / "a")
    recipe = write_recipe(d / "r.yaml", {
        "name": "resume", "base": "a", "parents": {"a": "p/a", "b": "p/b"},
        "rules": [{"select": "routed_experts", "weights": {"a": 0.5, "b": 0.5}},
                  {"select": "attention", "weights": {"a": 0.5, "b": 0.5}, "threshold": 1.0}],
        "output": {"shard_size": "100KB"},
    })  # fmt: skip
    p = run_cli("build", str(recipe), "--out", str(d / "ref"))
    assert p.returncode == 0, p.stderr
    return recipe, d / "ref"


def _same_bytes(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


def test_sigkill_then_resume_is_byte_identical(setup: tuple[Path, Path], tmp_path: Path) -> None:
    recipe, ref = setup
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "merge.cli", "build", str(recipe), "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    state = out / STATE_NAME
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if len(json.loads(state.read_text())["shards"]) >= 2:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.005)
    assert proc.poll() is None, "the build finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # a partial build never looks complete, and is not taken for one
    assert not (out / MANIFEST_NAME).exists()
    done = json.loads(state.read_text())["shards"]
    stamps = {n: (out / n).stat().st_mtime_ns for n in done}
    assert_one_line_error(run_cli("build", str(recipe), "--out", str(out)), "--resume")
    p = run_cli("build", str(recipe), "--out", str(out), "--resume", "--workers", "2")
    assert p.returncode == 0, p.stderr
    _same_bytes(out, ref)
    assert {n: (out / n).stat().st_mtime_ns for n in done} == stamps  # finished shards were not redone
    # resuming a finished build is a no-op; building over it without --resume is refused
    assert run_cli("build", str(recipe), "--out", str(out), "--resume").returncode == 0
    assert_one_line_error(run_cli("build", str(recipe), "--out", str(out)), "already holds a finished build")


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))


def test_disk_full_is_an_error_and_resumable(setup: tuple[Path, Path], tmp_path: Path) -> None:
    recipe, ref = setup
    out = tmp_path / "out"
    # every file is capped below one shard's size: the first shard's write fails as on a full disk
    p = run_cli("build", str(recipe), "--out", str(out), "--workers", "2", preexec_fn=_limit_file_size)
    assert_one_line_error(p, "disk full", "--resume")
    assert not (out / MANIFEST_NAME).exists() and (out / STATE_NAME).exists()
    assert not list(out.glob(".*.partial"))
    p = run_cli("build", str(recipe), "--out", str(out), "--resume")
    assert p.returncode == 0, p.stderr
    _same_bytes(out, ref)


def test_other_recipe_refused(setup: tuple[Path, Path], tmp_path: Path) -> None:
    recipe, _ = setup
    out = tmp_path / "out"
    out.mkdir()
    (out / STATE_NAME).write_text(json.dumps({"fingerprint": "other", "distances": None, "shards": {}}))
    assert_one_line_error(run_cli("build", str(recipe), "--out", str(out), "--resume"), "another recipe")
    (out / STATE_NAME).unlink()
    (out / "notes.txt").write_text("mine")
    assert_one_line_error(run_cli("build", str(recipe), "--out", str(out)), "not a chimera-merge build")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
