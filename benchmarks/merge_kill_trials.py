"""Crash safety of `chimera-merge build`: real builds killed with SIGKILL at random moments, then resumed.

Each trial starts the real CLI on one recipe and sends SIGKILL at a moment drawn uniformly from the build's own
CPU time, counted from its state file appearing (start-up, imports included, is over by then), over the span an
uninterrupted run takes from that file to its manifest (the completion marker), measured first. The build
runs in 2 ms slices between SIGSTOPs while its CPU time (/proc/PID/stat, all threads) is compared with the drawn
moment, so where the kill lands does not depend on how busy the machine is (a wall-clock moment does: on a shared
2-core machine one run took 3x another). The trial notes what the directory showed at the kill (the phase:
resolving, distances k/n, shards k/n, finishing), runs the same command with `--resume` to completion, and compares
every file of the child (shards, index, config, side files, model card, manifest) with the uninterrupted build's,
byte for byte. The recipe has threshold rules (a distance pass over attention and shared experts) and merges
every routed expert into ~2 MB shards, so both passes take a good share of the build.

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
CONFIG_OVERRIDES = {"hidden_size": 1024, "moe_intermediate_size": 1024, "n_routed_experts": 16, "num_hidden_layers": 4,
                    "vocab_size": 4096}  # fmt: skip


def write_setup(root: Path, config_overrides: dict[str, Any] | None = None, shard_size: str = "2MB") -> Path:
    """Two related FP8 parents under root/p and a recipe with a threshold rule; returns the recipe's path."""
    from merge.synthetic import synthetic_config, write_synthetic_parent

    config = synthetic_config(**(CONFIG_OVERRIDES if config_overrides is None else config_overrides))
    a = write_synthetic_parent(root / "p" / "a", config, seed=0, fp8=True)
    write_synthetic_parent(root / "p" / "b", config, seed=1, fp8=True, base=a)
    recipe = {
        "name": "kill-trials", "base": "a", "parents": {"a": "p/a", "b": "p/b"},
        "rules": [{"select": "attention", "weights": {"a": 0.3, "b": 0.7}, "threshold": 1.0},
                  {"select": "shared_experts", "weights": {"a": 0.5, "b": 0.5}, "threshold": 1.0},
                  {"select": "routed_experts", "weights": {"a": 0.5, "b": 0.5}}],
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
        return "finished (exiting)" if (out / MANIFEST_NAME).exists() else "start-up (no state yet)"
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        return "start-up (no state yet)"
    if state.get("fingerprint") is None:
        return "resolving parents"
    done = len(state["shards"])
    logged = (out / DISTANCES_NAME).read_bytes().count(b"\n") if (out / DISTANCES_NAME).exists() else 0
    if done == 0 and logged < n_distances:
        return f"distances {logged}/{n_distances}"
    if done < n_shards:
        return f"shards {done}/{n_shards}"
    return "finishing (index, side files, card, verify)"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def kill_and_resume(recipe: Path, out: Path, ref: Path, *, at: Callable[[int], bool]) -> dict[str, Any]:
    """One trial: SIGKILL the build once `at(pid)` holds (checked while it is stopped), resume, compare with
    `ref`."""
    manifest = json.loads((ref / "merge-manifest.json").read_text())
    n_shards = len(manifest["output"]["shards"])
    n_dist = sum(1 for t in manifest["tensors"] if "threshold" in t)
    proc = subprocess.Popen(build_command(recipe, out), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    killed = stop_when(proc, lambda: at(proc.pid))
    cpu = cpu_seconds(proc.pid) if killed else None
    if killed:
        proc.kill()  # SIGKILL (delivered to a stopped process too)
    proc.wait()
    seen = phase(out, n_shards, n_dist) if killed else "not killed (finished first)"
    rc, wall, err = run_build(recipe, out, "--resume")
    diff = differing_files(out, ref) if rc == 0 else ["(resume failed)"]
    return {"killed_at_cpu_s": cpu, "phase": seen, "killed": killed, "resume_rc": rc, "resume_s": round(wall, 2),
            "identical": rc == 0 and not diff, "differing": diff, "resume_stderr": err.strip()[-300:]}  # fmt: skip


def reference(recipe: Path, out: Path) -> tuple[float, float, float]:
    """An uninterrupted build run in slices: (its CPU seconds when its state file appears, when its manifest
    appears, wall seconds to its exit)."""
    from merge.state import MANIFEST_NAME, STATE_NAME

    t0 = time.perf_counter()
    proc = subprocess.Popen(build_command(recipe, out), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    cpu = []
    for marker in (STATE_NAME, MANIFEST_NAME):
        if not stop_when(proc, lambda m=marker: (out / m).exists()):
            raise SystemExit(f"the reference build exited before writing {marker}")
        cpu.append(cpu_seconds(proc.pid))
    os.kill(proc.pid, signal.SIGCONT)
    if proc.wait() != 0:
        raise SystemExit(f"reference build failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return cpu[0], cpu[1], time.perf_counter() - t0


def after_state(out: Path, offset: float) -> Callable[[int], bool]:
    """Ready `offset` CPU seconds after the build's state file appeared (that moment read in this very run, so
    start-up's run-to-run jitter does not shift where the kill lands)."""
    from merge.state import STATE_NAME

    start: list[float] = []

    def at(pid: int) -> bool:
        if not start:
            if not (out / STATE_NAME).exists():
                return False
            start.append(cpu_seconds(pid))
        return cpu_seconds(pid) >= start[0] + offset

    return at


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
        start_cpu, end_cpu, ref_s = reference(recipe, work / "ref")
        ref_manifest = json.loads((work / "ref" / "merge-manifest.json").read_text())
        print(f"uninterrupted build: {ref_s:.1f} s wall, CPU {start_cpu:.2f} s when its state appeared, "
              f"{end_cpu:.2f} s when its manifest did")  # fmt: skip
        rng = random.Random(args.seed)
        trials = []
        for i in range(args.trials):
            out = work / f"t{i:02d}"
            target = rng.uniform(0.0, end_cpu - start_cpu)
            t = kill_and_resume(recipe, out, work / "ref", at=after_state(out, target))
            t["target_cpu_s"] = round(target, 3)
            trials.append(t)
            print(f"trial {i + 1:2d}/{args.trials}: kill at CPU +{target:5.2f} s ({t['phase']}), resume "
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
            "uninterrupted_s": round(ref_s, 2), "cpu_window_s": [round(start_cpu, 2), round(end_cpu, 2)],
            "shards": len(ref_manifest["output"]["shards"]),
            "distance_tensors": sum(1 for t in ref_manifest["tensors"] if "threshold" in t),
            "child_bytes": ref_manifest["output"]["total_size"], "phases": dict(phases)}  # fmt: skip
    rows = [[i + 1, t["target_cpu_s"], t["phase"], t["resume_s"], "yes" if t["identical"] else "NO"]
            for i, t in enumerate(trials)]  # fmt: skip
    md = (
        f"**{identical}/{len(trials)}** builds killed with SIGKILL at a random moment (uniform over the build's own CPU "
        f"time after its state file appeared, over the {end_cpu - start_cpu:.2f} s an uninterrupted run takes from "
        f"there to its manifest; seed {args.seed}) and "
        f"resumed with `--resume` gave children byte-identical to the uninterrupted build (every file: "
        f"{data['shards']} shards of a "
        f"{data['child_bytes'] / 1e6:.1f} MB FP8 child, index, config, side files, model card, manifest). "
        f"{killed} trials were killed mid-build; phases hit: "
        + ", ".join(f"{k} {v}" for k, v in sorted(phases.items()))
        + ".\n\n"
        + markdown_table(
            ["trial", "kill at CPU after state (s)", "phase at the kill", "resume (s)", "identical"], rows
        )
    )
    write_results("merge-kill-trials", data, md)
    if identical != len(trials):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
