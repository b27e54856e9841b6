"""Where parents come from: a local directory, or a Hugging Face repo id `org/name[@revision]`.

Hub parents are fetched with `huggingface_hub.snapshot_download`, restricted to the files a merge needs
(safetensors shards, their index, config; plus generation config, tokenizer and chat template for the base).
`HF_HUB_OFFLINE=1` is honoured by huggingface_hub itself (cached files only); `cache_dir` (or `HF_HUB_CACHE`)
picks the cache. A dry run needs only headers: `hub_headers` reads them with `get_safetensors_metadata`, never
the weights.

Fingerprints. Hashing a 690 GB parent for the manifest would double the read, so a local file is identified by
sha256(its safetensors header + size + mtime) and a hub file by its blob's sha256 (the LFS etag that names the
cached blob). That detects a changed or replaced file (what resume needs) without reading the weights.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from merge.checkpoint import INDEX_NAME, TensorInfo
from merge.errors import ParentError
from merge.recipe import is_repo_id

WEIGHT_FILES = ["*.safetensors", INDEX_NAME, "config.json"]
BASE_FILES = [
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "*.jinja",
    "chat_template.json",
]


@dataclass(frozen=True)
class Source:
    """A parent as the recipe names it, and where its files are."""

    name: str
    spec: str
    path: Path | None  # local directory (for hub parents: the snapshot), None before download
    repo_id: str | None = None
    revision: str | None = None

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"spec": self.spec}
        if self.repo_id is not None:
            d |= {"repo_id": self.repo_id, "revision": self.revision or "main"}
            if self.path is not None:
                d["commit"] = self.path.name  # snapshots/<commit sha>
        else:
            d["path"] = str(self.path)
        return d


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'org/name@rev' -> ('org/name', 'rev')."""
    repo, _, rev = spec.partition("@")
    return repo, rev or None


def resolve(name: str, spec: str, *, is_base: bool, cache_dir: Path | None = None) -> Source:
    """A local parent is checked to exist; a hub parent is downloaded (only the files a merge needs)."""
    if not is_repo_id(spec):
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise ParentError(
                f"parent {name!r}: {path} is not a directory; fix the path in the recipe's parents"
            )
        return Source(name, spec, path)
    repo, rev = parse_spec(spec)
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(
            repo,
            revision=rev,
            cache_dir=cache_dir,
            allow_patterns=WEIGHT_FILES + (BASE_FILES if is_base else []),
        )
    except Exception as e:  # hub errors: offline, missing repo, gated, network; one line for the user
        raise ParentError(
            f"parent {name!r}: cannot fetch {spec} from the Hugging Face hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); check the repo id, your login, or HF_HUB_OFFLINE"
        ) from None
    return Source(name, spec, Path(path), repo, rev)


def cached_snapshot(spec: str, cache_dir: Path | None = None) -> Path | None:
    """The local snapshot of a hub parent when it is already in the cache (no network), else None."""
    from huggingface_hub import snapshot_download

    repo, rev = parse_spec(spec)
    try:
        path = Path(
            snapshot_download(
                repo, revision=rev, cache_dir=cache_dir, local_files_only=True, allow_patterns=WEIGHT_FILES
            )
        )
    except Exception:  # not cached (any flavour of "not found locally")
        return None
    return path if any(path.glob("*.safetensors")) else None


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
