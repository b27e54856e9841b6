"""Where parents come from: a local directory, or a Hugging Face repo id `org/name[@revision]`.

Hub parents are fetched with `huggingface_hub.snapshot_download`, restricted to the files a merge needs
(safetensors shards, their index, config; plus the side files the recipe takes from that parent:
merge.sidefiles). `HF_HUB_OFFLINE=1` is honoured by huggingface_hub itself (cached files only); `cache_dir` (or
`HF_HUB_CACHE`) picks the cache. A dry run needs only headers: `hub_headers` reads them with
`get_safetensors_metadata`, never the weights.

Revisions. A hub parent's revision (a branch or tag, `main` when the recipe names none) is resolved to a commit
once, when a build starts (`resolve_commit`: the hub's answer, or offline the cache's ref), recorded in the build
state before anything is downloaded, and every later step and every resume downloads exactly that commit: a
branch that moves mid-build cannot pull a new ~700 GB snapshot into a half-built child.

Fingerprints. Hashing a 690 GB parent for the manifest would double the read, so a local file is identified by
sha256(its safetensors header + size + mtime) and a hub file by its blob's sha256 (the LFS etag that names the
cached blob). That detects a changed or replaced file (what resume needs) without reading the weights.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from merge.checkpoint import TensorInfo
from merge.errors import ParentError
from merge.recipe import is_repo_id
from merge.sidefiles import WEIGHT_FILES

COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class Source:
    """A parent as the recipe names it, and where its files are."""

    name: str
    spec: str
    path: Path | None  # local directory (for hub parents: the snapshot), None before download
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"spec": self.spec}
        if self.repo_id is not None:
            d |= {"repo_id": self.repo_id, "revision": self.revision or "main", "commit": self.commit}
        else:
            d["path"] = str(self.path)
        return d


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'org/name@rev' -> ('org/name', 'rev')."""
    repo, _, rev = spec.partition("@")
    return repo, rev or None


def _first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def resolve_commit(name: str, spec: str, cache_dir: Path | None = None) -> str:
    """The commit a hub parent's spec names now: the revision itself when it is a commit; else the hub's answer;
    offline (or when the hub cannot be asked) the cache's ref for that revision."""
    repo, rev = parse_spec(spec)
    if rev is not None and COMMIT.match(rev):
        return rev
    from huggingface_hub import HfApi, constants

    error: Exception | None = None
    if not constants.HF_HUB_OFFLINE:
        try:
            sha = HfApi().model_info(repo, revision=rev).sha
            if sha:
                return sha
        except Exception as e:  # hub errors of every kind; the cache may still know the revision
            error = e
    cached = cached_snapshot(spec, cache_dir, weights=False)
    if cached is not None:
        return cached.name  # snapshots/<commit>
    why = _first_line(error) if error is not None else "not in the cache and HF_HUB_OFFLINE is set"
    raise ParentError(
        f"parent {name!r}: cannot resolve {spec} to a commit ({why}); check the repo id, your login, or "
        "HF_HUB_OFFLINE"
    )


def resolve(
    name: str, spec: str, *, patterns: list[str], commit: str | None = None, cache_dir: Path | None = None
) -> Source:
    """A local parent is checked to exist; a hub parent is downloaded at `commit` (only `patterns`)."""
    if not is_repo_id(spec):
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise ParentError(
                f"parent {name!r}: {path} is not a directory; fix the path in the recipe's parents"
            )
        return Source(name, spec, path)
    repo, rev = parse_spec(spec)
    commit = commit or resolve_commit(name, spec, cache_dir)
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(repo, revision=commit, cache_dir=cache_dir, allow_patterns=patterns)
    except Exception as e:  # hub errors: offline, missing repo, gated, network; one line for the user
        raise ParentError(
            f"parent {name!r}: cannot fetch {spec} (commit {commit}) from the Hugging Face hub ({_first_line(e)}); "
            "check the repo id, your login, or HF_HUB_OFFLINE"
        ) from None
    return Source(name, spec, Path(path), repo, rev, commit)


def cached_snapshot(spec: str, cache_dir: Path | None = None, *, weights: bool = True) -> Path | None:
    """The local snapshot of a hub parent when it is already in the cache (no network), else None; with
    `weights`, only one that holds safetensors shards."""
    from huggingface_hub import snapshot_download

    repo, rev = parse_spec(spec)
    try:
        path = Path(
            snapshot_download(
                repo,
                revision=rev,
                cache_dir=cache_dir,
                local_files_only=True,
                allow_patterns=list(WEIGHT_FILES),
            )
        )
    except Exception:  # not cached (any flavour of "not found locally")
        return None
    return path if not weights or any(path.glob("*.safetensors")) else None


def hub_headers(name: str, spec: str) -> tuple[dict[str, TensorInfo], dict[str, Any]]:
    """Tensors (from safetensors headers only) and config.json of a hub parent, for dry runs."""
    import json

    from huggingface_hub import get_safetensors_metadata, hf_hub_download

    repo, rev = parse_spec(spec)
    try:
        meta = get_safetensors_metadata(repo, revision=rev)
        config = json.loads(Path(hf_hub_download(repo, "config.json", revision=rev)).read_text())
    except Exception as e:
        raise ParentError(
            f"parent {name!r}: cannot read headers of {spec} ({type(e).__name__}); check the repo id or your login"
        ) from None
    tensors: dict[str, TensorInfo] = {}
    for fname, fmeta in meta.files_metadata.items():
        for tname, t in fmeta.tensors.items():
            a, b = t.data_offsets
            tensors[tname] = TensorInfo(tname, t.dtype, tuple(t.shape), Path(fname), a, b)
    return tensors, config


def file_fingerprint(path: Path) -> str:
    """sha256 of the safetensors header + size + mtime (local), or the blob's sha256 (hub cache)."""
    real = Path(os.path.realpath(path))
    if real.parent.name == "blobs" and len(real.name) == 64:
        return "sha256:" + real.name  # the hub names LFS blobs by their sha256
    st = real.stat()
    h = hashlib.sha256()
    with real.open("rb") as f:
        head = f.read(8)
        if len(head) == 8:
            (n,) = struct.unpack("<Q", head)
            h.update(head + f.read(min(n, 100 * 1024 * 1024)))
    h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return "header-sha256:" + h.hexdigest()
