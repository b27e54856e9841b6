"""Crash safety of `chimera-merge build`: real builds killed with SIGKILL at random moments, then resumed.

Each trial starts the real CLI on one recipe, sends SIGKILL at a moment drawn uniformly from the duration of an
uninterrupted run (interpreter start-up included), notes what the output directory showed at that moment (the
phase: start-up, distances, shards k/n, finishing, ...), runs the same command with `--resume` to completion, and
compares every file of the child (shards, index, config, side files, model card, manifest) with an uninterrupted
build's, byte for byte. The recipe has a threshold rule (a distance pass over every routed expert) and ~2 MB
shards, so kills land in every phase. A trial whose resume fails or whose child differs is a failure.

    python -m benchmarks.merge_kill_trials [--trials 20] [--seed 0] [--workdir DIR]

tests/merge/test_crash_safety.py runs a short version (two trials) through the same functions.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from benchmarks._common import markdown_table, write_results

ROOT = Path(__file__).resolve().parents[1]
# Full-width-ish tensors are not needed to test crash safety; enough of them to make every phase last.
CONFIG_OVERRIDES = {"hidden_size": 512, "moe_intermediate_size": 512, "n_routed_experts": 16, "num_hidden_layers": 4,
                    "vocab_size": 4096}  # fmt: skip


def write_setup(root: Path, config_overrides: dict[str, Any] | None = None, shard_size: str = "2MB") -> Path:
    """Two related FP8 parents under root/p and a recipe with a threshold rule; returns the recipe's path."""
    from merge.synthetic import synthetic_config, write_synthetic_parent

    config = synthetic_config(**(CONFIG_OVERRIDES if config_overrides is None else config_overrides))
    a = write_synthetic_parent(root / "p" / "a", config, seed=0, fp8=True)
    write_synthetic_parent(root / "p" / "b", config, seed=1, fp8=True, base=a)
    recipe = {
        "name": "kill-trials", "base": "a", "parents": {"a": "p/a", "b": "p/b"},
        "rules": [{"select": "routed_experts", "weights": {"a": 0.5, "b": 0.5}, "threshold": 1.0},
                  {"select": "attention", "weights": {"a": 0.3, "b": 0.7}}],
        "output": {"shard_size": shard_size},
    }  # fmt: skip
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def build_command(recipe: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "merge.cli",
        "build",
        str(recipe),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def run_build(recipe: Path, out: Path, *extra: str, timeout: float = 600) -> tuple[int, float, str]:
    """(exit code, wall seconds, stderr) of one CLI build run to completion."""
    t0 = time.perf_counter()
    p = subprocess.run(build_command(recipe, out, *extra), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip
    return p.returncode, time.perf_counter() - t0, p.stderr


def phase(out: Path, n_shards: int, n_distances: int) -> str:
    """What a (stopped or killed) build's directory shows: how far it got."""
    from merge.state import DISTANCES_NAME, MANIFEST_NAME, STATE_NAME

    state_path = out / STATE_NAME
    if not state_path.exists():
        return "finished" if (out / MANIFEST_NAME).exists() else "start-up"
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        return "start-up"
    if state.get("fingerprint") is None:
        return "resolving parents"
    done = len(state["shards"])
    logged = (out / DISTANCES_NAME).read_bytes().count(b"\n") if (out / DISTANCES_NAME).exists() else 0
    if done == 0 and logged < n_distances:
        return f"distances {logged}/{n_distances}"
    if done < n_shards:
        return f"shards {done}/{n_shards}"
    return "finishing (index, side files, card, verify)"


def stop_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool], step: float = 0.002) -> bool:
    """Let `proc` run in slices of `step` seconds (SIGCONT ... SIGSTOP) until `ready()` holds while it is
    stopped; leave it stopped. False if it exited first. Slicing keeps the moment precise on a busy machine:
    the build cannot run on while this process waits for a core."""
    while proc.poll() is None:
        os.kill(proc.pid, signal.SIGSTOP)
        if ready():
            return True
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(step)
    return False


def differing_files(a: Path, b: Path) -> list[str]:
    """Names present in only one of two directories or with different bytes."""
    names = sorted({p.name for p in a.iterdir()} | {p.name for p in b.iterdir()})
    return [n for n in names if not ((a / n).is_file() and (b / n).is_file() and
                                     (a / n).read_bytes() == (b / n).read_bytes())]  # fmt: skip


def kill_and_resume(recipe: Path, out: Path, ref: Path, *, at: float | Callable[[], bool]) -> dict[str, Any]:
    """One trial: SIGKILL the build at `at` seconds (or once `at()` holds), resume, compare with `ref`."""
    manifest = json.loads((ref / "merge-manifest.json").read_text())
    n_shards = len(manifest["output"]["shards"])
    n_dist = sum(1 for t in manifest["tensors"] if "threshold" in t)
    proc = subprocess.Popen(build_command(recipe, out), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    if callable(at):
        killed = stop_when(proc, at)
    else:
        try:
            proc.wait(timeout=at)
            killed = False
        except subprocess.TimeoutExpired:
            killed = True
    if killed:
        proc.kill()  # SIGKILL (delivered to a stopped process too)
    proc.wait()
    seen = phase(out, n_shards, n_dist) if killed else "not killed (finished first)"
    rc, wall, err = run_build(recipe, out, "--resume")
    diff = differing_files(out, ref) if rc == 0 else ["(resume failed)"]
    return {"kill_at_s": None if callable(at) else round(at, 3), "phase": seen, "killed": killed,
            "resume_rc": rc, "resume_s": round(wall, 2), "identical": rc == 0 and not diff,
            "differing": diff, "resume_stderr": err.strip()[-300:]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--workdir", type=Path, default=None, help="default: a temporary directory, removed after"
    )
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="kill-trials-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        recipe = write_setup(work)
        rc, ref_s, err = run_build(recipe, work / "ref")
        if rc != 0:
            raise SystemExit(f"reference build failed: {err.strip()}")
        ref_manifest = json.loads((work / "ref" / "merge-manifest.json").read_text())
        rng = random.Random(args.seed)
        trials = []
        for i in range(args.trials):
            out = work / f"t{i:02d}"
            t = kill_and_resume(recipe, out, work / "ref", at=rng.uniform(0.0, ref_s))
            trials.append(t)
            print(f"trial {i + 1:2d}/{args.trials}: kill at {t['kill_at_s']:6.2f} s ({t['phase']}), resume "
                  f"{t['resume_s']:.1f} s, {'identical' if t['identical'] else 'DIFFERS: ' + str(t['differing'])}")  # fmt: skip
            shutil.rmtree(out, ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    identical = sum(t["identical"] for t in trials)
    killed = sum(t["killed"] for t in trials)
    phases = Counter(t["phase"].split(" ")[0] for t in trials)
    print(f"{identical}/{len(trials)} children byte-identical to the uninterrupted build ({killed} killed mid-build; "
          f"uninterrupted build {ref_s:.1f} s, {len(ref_manifest['output']['shards'])} shards)")  # fmt: skip
    data = {"trials": trials, "identical": identical, "killed": killed, "seed": args.seed,
            "uninterrupted_s": round(ref_s, 2), "shards": len(ref_manifest["output"]["shards"]),
            "distance_tensors": sum(1 for t in ref_manifest["tensors"] if "threshold" in t),
            "child_bytes": ref_manifest["output"]["total_size"], "phases": dict(phases)}  # fmt: skip
    rows = [[i + 1, t["kill_at_s"], t["phase"], t["resume_s"], "yes" if t["identical"] else "NO"]
            for i, t in enumerate(trials)]  # fmt: skip
    md = (
        f"**{identical}/{len(trials)}** builds killed with SIGKILL at a random moment (uniform over an uninterrupted "
        f"run of {ref_s:.1f} s, start-up included; seed {args.seed}) and resumed with `--resume` gave children "
        f"byte-identical to the uninterrupted build (every file: {data['shards']} shards of a "
        f"{data['child_bytes'] / 1e6:.1f} MB FP8 child, index, config, side files, model card, manifest). "
        f"{killed} trials were killed mid-build; phases hit: "
        + ", ".join(f"{k} {v}" for k, v in sorted(phases.items()))
        + ".\n\n"
        + markdown_table(["trial", "kill at (s)", "phase at the kill", "resume (s)", "identical"], rows)
    )
    write_results("merge-kill-trials", data, md)
    if identical != len(trials):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
