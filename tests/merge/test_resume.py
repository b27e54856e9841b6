"""Crash safety of real `chimera-merge build` processes: killed with SIGKILL in the distance pass, between shards
and at random moments, stopped by a full disk, resumed over a damaged shard and over a parent that fails mid-resume.
Every resumed child is compared byte for byte with an uninterrupted build.

Kills are placed with `stop_when` (the build runs in 2 ms slices between SIGSTOPs until the directory shows the
wanted progress), so they land where intended on a busy machine too."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from merge_helpers import ROOT, assert_one_line_error, file_size_limit, manifest, run_cli, write_recipe

from benchmarks.merge_kill_trials import (
    build_command,
    differing_files,
    kill_and_resume,
    stop_when,
    write_setup,
)
from merge.checkpoint import Checkpoint
from merge.errors import OutputError
from merge.execute import build_child
from merge.recipe import load_recipe
from merge.state import DISTANCES_NAME, FORMAT, MANIFEST_NAME, STATE_NAME, BuildDir, read_distances
from merge.synthetic import synthetic_config, write_sparse_parent

# threshold rules on attention and shared experts (a distance pass over 21 tensors); 72 routed experts merged
# into ~30 shards of 300 KB
CONFIG = {"hidden_size": 256, "moe_intermediate_size": 256, "n_routed_experts": 12, "num_hidden_layers": 3}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("resume")
    recipe = write_setup(d, CONFIG, shard_size="300KB")
    build_child(load_recipe(recipe), d / "ref", workers=2)  # the CLI writes the same bytes (test_workers...)
    return recipe, d / "ref"


def _start(recipe: Path, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        build_command(recipe, out), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _state(out: Path) -> dict:
    try:
        return json.loads((out / STATE_NAME).read_text())
    except (OSError, ValueError):
        return {"shards": {}}


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _kill_when(recipe: Path, out: Path, ready: object) -> None:
    proc = _start(recipe, out)
    assert stop_when(proc, ready), "the build finished before it could be killed"  # type: ignore[arg-type]
    proc.kill()
    proc.wait()


def _zero_data(shard: Path) -> None:
    """What a crash before the shard's pages reached the disk leaves: the right size, zeroed data."""
    data = bytearray(shard.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start:] = bytes(len(data) - start)
    shard.write_bytes(data)


def test_sigkill_between_shards_resumes_and_rebuilds_a_damaged_shard(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    recipe, ref = setup
    out = tmp_path / "out"
    _kill_when(recipe, out, lambda: len(_state(out)["shards"]) >= 3)
    assert not (out / MANIFEST_NAME).exists()  # a partial build never looks complete
    done = sorted(_state(out)["shards"])
    victim = done[1]
    _zero_data(out / victim)
    stamps = {n: (out / n).stat().st_mtime_ns for n in done if n != victim}
    assert_one_line_error(run_cli("build", str(recipe), "--out", str(out)), "--resume")
    p = run_cli("build", str(recipe), "--out", str(out), "--resume", "--workers", "2")
    assert p.returncode == 0, p.stderr
    assert differing_files(out, ref) == []
    assert f"warning: {victim}: damaged" in p.stderr and "rebuilding it" in p.stderr
    assert {n: (out / n).stat().st_mtime_ns for n in stamps} == stamps  # intact finished shards were kept
    # resuming a finished build is a no-op; building over it without --resume is refused
    assert run_cli("build", str(recipe), "--out", str(out), "--resume").returncode == 0
    assert_one_line_error(run_cli("build", str(recipe), "--out", str(out)), "already holds a finished build")


def test_sigkill_in_the_distance_pass_resumes_from_the_logged_distances(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    recipe, ref = setup
    out, log = tmp_path / "out", tmp_path / "out" / DISTANCES_NAME
    _kill_when(recipe, out, lambda: _lines(log) >= 3)
    n = sum(1 for t in manifest(ref)["tensors"] if "threshold" in t)
    logged = read_distances(log)
    assert 3 <= len(logged) < n and not _state(out)["shards"]
    # The resume takes logged distances as they stand (those tensors are not read again): change one, and leave a
    # torn last line as a kill mid-write does.
    name = next(iter(logged))
    lines = [json.dumps({"name": k, "r": 1000.0 if k == name else r}) for k, r in logged.items()]
    log.write_text("\n".join(lines) + '\n{"name": "model.layers.2.mlp.exp')
    p = run_cli("build", str(recipe), "--out", str(out), "--resume")
    assert p.returncode == 0, p.stderr
    recs, want = ({t["name"]: t for t in manifest(d)["tensors"] if "threshold" in t} for d in (out, ref))
    assert recs[name]["r"] == 1000.0 and recs[name]["decision"] == "merged"
    assert all(
        recs[k]["r"] == want[k]["r"] for k in want if k != name
    )  # the rest computed as before, bit for bit


def test_merge_error_on_a_resumed_build_keeps_the_finished_shards(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    recipe, ref = setup
    shutil.copytree(recipe.parent / "p", tmp_path / "p")  # this test damages a parent
    recipe = Path(shutil.copy(recipe, tmp_path / "recipe.yaml"))
    out = tmp_path / "out"
    _kill_when(recipe, out, lambda: len(_state(out)["shards"]) >= 2)
    done = {n: (out / n).stat().st_mtime_ns for n in _state(out)["shards"]}
    # Parent b's disk now returns a NaN inside a tensor of a shard not written yet; header, size and mtime are as
    # before (a bad sector), so the resume accepts the parent and meets the NaN while merging.
    weight_map = json.loads((ref / "model.safetensors.index.json").read_text())["weight_map"]
    name = next(t["name"] for t in reversed(manifest(ref)["tensors"])
                if t["decision"] == "merged" and weight_map[t["name"]] not in done)  # fmt: skip
    info = Checkpoint.open(tmp_path / "p" / "b").tensors[name]
    st = info.shard.stat()
    with info.shard.open("r+b") as f:
        f.seek(info.start + 5)
        f.write(b"\x7f")  # e4m3fn NaN
    os.utime(info.shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    p = run_cli("build", str(recipe), "--out", str(out), "--resume")
    assert_one_line_error(p, "parent 'b'", name, "NaN", "finished shard(s)", "are kept", "--resume")
    assert {n: (out / n).stat().st_mtime_ns for n in done} == done and (out / STATE_NAME).exists()
    assert len(_state(out)["shards"]) > len(done)  # and so are those this resume finished before the error


def test_random_moment_kills_resume_byte_identical(setup: tuple[Path, Path], tmp_path: Path) -> None:
    """The short version of benchmarks/merge_kill_trials.py: moments uniform over the build's progress."""
    recipe, ref = setup
    m = manifest(ref)
    total = len(m["output"]["shards"]) + sum(1 for t in m["tensors"] if "threshold" in t)
    rng = random.Random(2112)
    for i in range(2):
        out, target = tmp_path / f"t{i}", rng.randint(1, total)

        def progress(pid: int, out: Path = out, target: int = target) -> bool:
            return _lines(out / DISTANCES_NAME) + len(_state(out)["shards"]) >= target

        trial = kill_and_resume(recipe, out, ref, at=progress)
        assert trial["killed"] and trial["identical"], trial


def test_disk_full_is_an_error_and_resumable(setup: tuple[Path, Path], tmp_path: Path) -> None:
    recipe, ref = setup
    out = tmp_path / "out"
    # every file is capped below one shard's size: the first shard's write fails as on a full disk
    p = run_cli("build", str(recipe), "--out", str(out), "--workers", "2", preexec_fn=file_size_limit(60_000))
    assert_one_line_error(p, "disk full", "--resume")
    assert not (out / MANIFEST_NAME).exists() and (out / STATE_NAME).exists()
    assert not list(out.glob(".*.partial"))
    p = run_cli("build", str(recipe), "--out", str(out), "--resume")
    assert p.returncode == 0, p.stderr
    assert differing_files(out, ref) == []


def test_free_space_is_checked_before_writing(tmp_path: Path) -> None:
    """A parent with twice this file system's free space in its embedding and lm_head (sparse: no disk used)."""
    free = shutil.disk_usage(tmp_path).free
    config = synthetic_config(hidden_size=7168, vocab_size=free // (2 * 7168) + 1, num_hidden_layers=1,
                              first_k_dense_replace=1)  # fmt: skip
    write_sparse_parent(tmp_path / "a", config)
    r = write_recipe(tmp_path / "r.yaml", {"name": "big", "base": "a", "parents": {"a": "a"}})
    # capped file size: were the check missing, the build would stop at 1 MB instead of filling the disk
    p = run_cli("build", str(r), "--out", str(tmp_path / "out"), preexec_fn=file_size_limit(1 << 20))
    assert_one_line_error(p, "GB to write", "GB free", "free space or choose another --out")
    assert not list((tmp_path / "out").glob("*.safetensors"))


def test_other_recipe_and_older_builds_refused(setup: tuple[Path, Path], tmp_path: Path) -> None:
    recipe, _ = setup
    key, out = load_recipe(recipe).key(), tmp_path / "out"
    out.mkdir()
    (out / STATE_NAME).write_text(json.dumps({"format": FORMAT, "recipe": "other", "pins": {}, "shards": {}}))
    with pytest.raises(OutputError, match="unfinished build of another recipe"):
        BuildDir(out, key, resume=True)
    # what the previous chimera-merge left: a state without format, or a finished build (`make demo` resumes one)
    (out / STATE_NAME).write_text(json.dumps({"fingerprint": "x", "distances": None, "shards": {}}))
    with pytest.raises(OutputError, match="older chimera-merge"):
        BuildDir(out, key, resume=True)
    (out / STATE_NAME).unlink()
    (out / MANIFEST_NAME).write_text(json.dumps({"tool": "chimera-merge", "fingerprint": "x", "tensors": []}))
    assert_one_line_error(
        run_cli("build", str(recipe), "--out", str(out), "--resume"), "older", f"delete {out}"
    )
    (out / MANIFEST_NAME).unlink()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not a chimera-merge build"):
        BuildDir(out, key, resume=False)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
