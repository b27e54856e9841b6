"""Hub parents (`org/name[@revision]`) from a Hugging Face cache with HF_HUB_OFFLINE=1 (no network): pinned to a
commit once per build, the same side files as a local parent, and readable by `diff`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from merge_helpers import assert_one_line_error, file_size_limit, manifest, run_cli, write_recipe

from merge.diff import diff_checkpoints
from merge.execute import build_child
from merge.recipe import Recipe
from merge.sidefiles import GROUPS, download_patterns, select
from merge.sources import resolve_commit
from merge.state import STATE_NAME

COMMIT = "0123456789abcdef0123456789abcdef01234567"
MOVED = "fedcba9876543210fedcba9876543210fedcba98"
OFFLINE = {"HF_HUB_OFFLINE": "1"}


def _fake_cache(cache: Path, repo: str, src: Path, commit: str = COMMIT) -> Path:
    """The hub cache layout: models--org--name/refs/main -> commit, snapshots/<commit>/<files>."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    shutil.copytree(src, root / "snapshots" / commit)
    return root


def test_hub_base_from_cache_offline(parents: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "hf"
    _fake_cache(cache, "org/mini-a", parents["a"])
    spec = {"name": "h", "base": "a", "parents": {"a": "org/mini-a", "b": str(parents["b"])},
            "rules": [{"select": "routed_experts", "weights": {"b": 1.0}}]}  # fmt: skip
    r = write_recipe(tmp_path / "r.yaml", spec)
    base = ["build", str(r), "--cache-dir", str(cache)]
    p = run_cli(*base, "--out", str(tmp_path / "o"), "--dry-run", env=OFFLINE)
    assert p.returncode == 0 and "bytes to read" in p.stdout, p.stderr
    p = run_cli(*base, "--out", str(tmp_path / "o"), env=OFFLINE)
    assert p.returncode == 0, p.stderr
    src = manifest(tmp_path / "o")["parents"]["a"]
    assert src["repo_id"] == "org/mini-a" and src["commit"] == COMMIT and src["revision"] == "main"
    card = (tmp_path / "o" / "README.md").read_text()
    assert "base_model:\n- org/mini-a\nbase_model_relation: merge\n" in card
    # the same recipe on the local base gives the same side files: remote code, LICENSE, added tokens, template
    local = Recipe.model_validate({**spec, "parents": {"a": str(parents["a"]), "b": str(parents["b"])}})
    build_child(local, tmp_path / "local")
    skip = {"README.md", "merge-manifest.json"}  # they name the parents' sources
    hub_files = {p.name: p.read_bytes() for p in (tmp_path / "o").iterdir() if p.name not in skip}
    assert hub_files == {p.name: p.read_bytes() for p in (tmp_path / "local").iterdir() if p.name not in skip}
    assert {"configuration_deepseek.py", "LICENSE", "added_tokens.json", "chat_template.jinja"} <= set(
        hub_files
    )
    # not in the cache and offline: one line, nothing written
    r2 = write_recipe(
        tmp_path / "r2.yaml", {**spec, "parents": {"a": str(parents["a"]), "b": "org/absent@v1"}}
    )
    p = run_cli("build", str(r2), "--out", str(tmp_path / "o2"), "--cache-dir", str(cache), env=OFFLINE)
    assert_one_line_error(p, "parent 'b'", "org/absent@v1", "HF_HUB_OFFLINE")
    assert not (tmp_path / "o2").exists()


def test_download_patterns_cover_every_side_file_copied(parents: dict[str, Path], tmp_path: Path) -> None:
    """One list: a hub parent is fetched with patterns that match every file a local parent would give."""
    d = tmp_path / "every"
    d.mkdir()
    names = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
             "added_tokens.json", "vocab.json", "merges.txt", "cl100k.tiktoken", "chat_template.jinja",
             "chat_template.json", "generation_config.json", "modeling_deepseek.py", "configuration_deepseek.py",
             "LICENSE", "LICENSE-MODEL", "NOTICE", "README.md", "model.safetensors", "config.json"]  # fmt: skip
    for n in names:
        (d / n).write_text("x")
    r = Recipe.model_validate({"name": "s", "base": "a", "parents": {"a": "org/a", "b": "org/b", "c": "org/c"},
                               "tokenizer_source": "b", "chat_template": "c"})  # fmt: skip
    from fnmatch import fnmatch

    for parent in ("a", "b", "c"):
        patterns = download_patterns(r, parent)
        for role, src in r.side_sources().items():
            if src == parent:
                for n in select(d, role):
                    assert any(fnmatch(n, p) for p in patterns), (parent, role, n)
    assert "README.md" not in {n for role in GROUPS for n in select(d, role)}  # the build writes its own card


def test_resume_keeps_the_commit_the_build_began_with(parents: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "hf"
    repo = _fake_cache(cache, "org/mini-b", parents["b"])
    moved = shutil.copytree(parents["b"], repo / "snapshots" / MOVED)  # main later moves to other weights
    shard = sorted(moved.glob("*.safetensors"))[-1]
    data = bytearray(shard.read_bytes())
    data[-1000:] = bytes(1000)
    shard.write_bytes(data)
    spec = {"name": "m", "base": "a", "parents": {"a": str(parents["a"]), "b": "org/mini-b"},
            "rules": [{"select": "routed_experts", "weights": {"a": 0.5, "b": 0.5}}], "output": {"shard_size": "300KB"}}  # fmt: skip
    r = write_recipe(tmp_path / "r.yaml", spec)
    out = tmp_path / "out"
    args = ["build", str(r), "--out", str(out), "--cache-dir", str(cache)]
    assert_one_line_error(
        run_cli(*args, env=OFFLINE, preexec_fn=file_size_limit(60_000)), "disk full", "--resume"
    )
    assert json.loads((out / STATE_NAME).read_text())["pins"] == {"b": COMMIT}  # pinned before any download
    (repo / "refs" / "main").write_text(MOVED)
    p = run_cli(*args, "--resume", env=OFFLINE)
    assert p.returncode == 0, p.stderr
    assert manifest(out)["parents"]["b"]["commit"] == COMMIT
    local = tmp_path / "local"
    build_child(
        Recipe.model_validate({**spec, "parents": {"a": str(parents["a"]), "b": str(parents["b"])}}), local
    )
    for s in sorted(local.glob("model-*.safetensors")):
        assert (out / s.name).read_bytes() == s.read_bytes(), s.name


def test_revisions_resolve_to_commits(
    parents: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    from merge.errors import ParentError

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert resolve_commit("b", f"org/mini-b@{MOVED}") == MOVED  # a commit needs neither hub nor cache
    cache = tmp_path / "hf"
    repo = _fake_cache(cache, "org/mini-b", parents["b"])
    shutil.copytree(parents["b"], repo / "snapshots" / MOVED)
    (repo / "refs" / "v2").write_text(MOVED)
    assert resolve_commit("b", "org/mini-b", cache) == COMMIT  # main
    assert resolve_commit("b", "org/mini-b@v2", cache) == MOVED
    with pytest.raises(ParentError, match="cannot resolve org/mini-b@v3 to a commit"):
        resolve_commit("b", "org/mini-b@v3", cache)


def test_diff_reads_hub_parents(parents: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "hf"
    _fake_cache(cache, "org/mini-a", parents["a"])
    p = run_cli("diff", "org/mini-a", str(parents["b"]), "--cache-dir", str(cache), "--json", str(tmp_path / "d.json"),
                env=OFFLINE)  # fmt: skip
    assert p.returncode == 0, p.stderr
    rows = {t["name"]: t for t in json.loads((tmp_path / "d.json").read_text())["tensors"]}
    local = diff_checkpoints(parents["a"], parents["b"])
    assert {r.name: (r.r, r.d) for r in local.rows} == {n: (t["r"], t["d"]) for n, t in rows.items()}
