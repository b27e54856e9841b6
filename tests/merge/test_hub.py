"""Hub parents (`org/name[@revision]`) resolved from a Hugging Face cache with HF_HUB_OFFLINE=1: no network."""

from __future__ import annotations

import shutil
from pathlib import Path

from merge_helpers import assert_one_line_error, manifest, run_cli, write_recipe

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _fake_cache(cache: Path, repo: str, src: Path) -> None:
    """The hub cache layout: models--org--name/refs/main -> commit, snapshots/<commit>/<files>."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    shutil.copytree(src, root / "snapshots" / COMMIT)


def test_hub_parent_from_cache_offline(parents: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "hf"
    _fake_cache(cache, "org/mini-b", parents["b"])
    r = write_recipe(tmp_path / "r.yaml", {"name": "h", "base": "a", "parents": {"a": str(parents["a"]), "b": "org/mini-b"},
                                           "rules": [{"select": "routed_experts", "weights": {"b": 1.0}}]})  # fmt: skip
    env = {"HF_HUB_OFFLINE": "1"}
    p = run_cli(
        "build", str(r), "--out", str(tmp_path / "o"), "--cache-dir", str(cache), "--dry-run", env=env
    )
    assert p.returncode == 0 and "bytes to read" in p.stdout, p.stderr
    p = run_cli(
        "build",
        str(r),
        "--out",
        str(tmp_path / "o"),
        "--cache-dir",
        str(cache),
        "--verify",
        "headers",
        env=env,
    )
    assert p.returncode == 0, p.stderr
    src = manifest(tmp_path / "o")["parents"]["b"]
    assert src["repo_id"] == "org/mini-b" and src["commit"] == COMMIT and src["revision"] == "main"
    # not in the cache and offline: one line, nothing written
    r2 = write_recipe(
        tmp_path / "r2.yaml",
        {"name": "h", "base": "a", "parents": {"a": str(parents["a"]), "b": "org/absent@v1"}},
    )
    p = run_cli("build", str(r2), "--out", str(tmp_path / "o2"), "--cache-dir", str(cache), env=env)
    assert_one_line_error(p, "parent 'b'", "org/absent@v1", "HF_HUB_OFFLINE")
    assert not (tmp_path / "o2").exists()
