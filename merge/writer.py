"""Output writing: one safetensors shard as a stream: header first, then each tensor with one sequential write.

The safetensors format is `u64 header length | JSON header | data`, and the header holds every tensor's byte
range, so a streaming writer must know the shard's tensors (names, dtypes, shapes) before the first byte of
data. Our callers always do: the merge plans shards from the parents' headers, the synthetic generator from
the config. The shard is written under a temporary name and renamed only when every tensor is in it, so a
file with a final shard name is always complete.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from merge.checkpoint import DTYPES, INDEX_NAME, TORCH_TO_ST
from merge.errors import OutputError


@dataclass(frozen=True)
class Entry:
    """A tensor that a shard will hold."""

    name: str
    dtype: str  # safetensors dtype string
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = DTYPES[self.dtype][1]
        for d in self.shape:
            n *= d
        return n


def shard_name(i: int, n: int) -> str:
    """Hugging Face shard naming: model-00001-of-00003.safetensors (1-based)."""
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def partial_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")


def header_bytes(entries: list[Entry], metadata: dict[str, str] | None = None) -> bytes:
    """The shard's length prefix + JSON header, padded with spaces so data starts 8-byte aligned."""
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for e in entries:
        header[e.name] = {
            "dtype": e.dtype,
            "shape": list(e.shape),
            "data_offsets": [offset, offset + e.nbytes],
        }
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def tensor_buffer(t: torch.Tensor) -> memoryview:
    """A zero-copy byte view of a CPU tensor (contiguous copy only when needed)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    return memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy())


def disk_error(e: OSError, path: Path) -> OutputError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return OutputError(f"{path}: disk full; free space and rerun the same command with --resume")
    return OutputError(f"{path}: cannot write ({e.strerror}); check the output directory's permissions")


class ShardWriter:
    """Writes the planned `entries` in order to `<dir>/.<name>.partial`, renamed to `final` by `finish()`.

    Use as a context manager: leaving it with an exception removes the partial file.
    """

    def __init__(self, final: Path, entries: list[Entry], metadata: dict[str, str] | None = None) -> None:
        self.final = final
        self.tmp = partial_path(final)
        self.entries = entries
        self._next = 0
        try:
            self._f = self.tmp.open("wb")
            self._f.write(header_bytes(entries, metadata))
        except OSError as e:
            self._cleanup()
            raise disk_error(e, self.tmp) from None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self._cleanup()

    def _expect(self, name: str, nbytes: int) -> None:
        if self._next >= len(self.entries) or self.entries[self._next].name != name:
            want = self.entries[self._next].name if self._next < len(self.entries) else "nothing"
            raise RuntimeError(f"shard {self.final.name}: got tensor {name!r}, planned {want!r}")
        if self.entries[self._next].nbytes != nbytes:
            raise RuntimeError(
                f"shard {self.final.name}: tensor {name!r} has {nbytes} bytes, planned {self.entries[self._next].nbytes}"
            )
        self._next += 1

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append `tensor` (dtype and shape as planned) with one write."""
        e = self.entries[self._next] if self._next < len(self.entries) else None
        if e is not None and (TORCH_TO_ST.get(tensor.dtype) != e.dtype or tuple(tensor.shape) != e.shape):
            raise RuntimeError(
                f"{name}: {tensor.dtype}{list(tensor.shape)} does not match the plan {e.dtype}{list(e.shape)}"
            )
        buf = tensor_buffer(tensor)
        self._expect(name, buf.nbytes)
        try:
            self._f.write(buf)
        except OSError as ex:
            raise disk_error(ex, self.tmp) from None

    def finish(self) -> int:
        """Close and rename to the final name; returns the file size."""
        if self._next != len(self.entries):
            raise RuntimeError(
                f"shard {self.final.name}: {len(self.entries) - self._next} planned tensors not written"
            )
        try:
            self._f.close()
            size = self.tmp.stat().st_size
            os.replace(self.tmp, self.final)
        except OSError as e:
            self._cleanup()
            raise disk_error(e, self.final) from None
        return size

    def _cleanup(self) -> None:
        f = getattr(self, "_f", None)
        if f is not None and not f.closed:
            with contextlib.suppress(OSError):
                f.close()
        self.tmp.unlink(missing_ok=True)


def plan_shards(groups: list[list[Entry]], shard_size: int) -> list[list[Entry]]:
    """Greedy packing of entry groups (a weight and its scale stay together) into shards of ~shard_size."""
    shards: list[list[Entry]] = [[]]
    size = 0
    for group in groups:
        g = sum(e.nbytes for e in group)
        if shards[-1] and size + g > shard_size:
            shards.append([])
            size = 0
        shards[-1].extend(group)
        size += g
    return shards


def write_index(out_dir: Path, weight_map: dict[str, str], total_size: int) -> None:
    """model.safetensors.index.json, written to a temp name and renamed."""
    path = out_dir / INDEX_NAME
    write_json_atomic(path, {"metadata": {"total_size": total_size}, "weight_map": weight_map})


def write_json_atomic(path: Path, obj: object, indent: int | None = 2) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=indent) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise disk_error(e, path) from None


STATE_NAME = ".chimera-merge-state.json"
MANIFEST_NAME = "merge-manifest.json"


class BuildDir:
    """The output directory of one build, and its resume state.

    While a build runs, `.chimera-merge-state.json` holds the build's fingerprint (recipe + parents + plan), the
    threshold distances once known, and every finished shard with its size and manifest records. The build is
    complete only when `merge-manifest.json` exists and the state file is gone: a partial output never looks
    complete. Resuming checks the fingerprint, drops `.partial` files and keeps finished shards.
    """

    def __init__(self, root: Path, fingerprint: str, *, resume: bool) -> None:
        self.root = root
        self.fingerprint = fingerprint
        self.state: dict[str, Any] = {"fingerprint": fingerprint, "distances": None, "shards": {}}
        self.complete = False
        self.created = False
        self._open(resume)

    def _open(self, resume: bool) -> None:
        root, state_path, manifest = self.root, self.root / STATE_NAME, self.root / MANIFEST_NAME
        if root.exists() and not root.is_dir():
            raise OutputError(f"{root}: exists and is not a directory; choose another --out")
        if not root.exists():
            try:
                root.mkdir(parents=True)
            except OSError as e:
                raise disk_error(e, root) from None
            self.created = True
        elif state_path.exists():
            try:
                state = json.loads(state_path.read_text())
            except (OSError, json.JSONDecodeError):
                raise OutputError(
                    f"{state_path}: unreadable build state; delete {root} and build again"
                ) from None
            if state.get("fingerprint") != self.fingerprint:
                raise OutputError(
                    f"{root}: holds an unfinished build of another recipe or other parents; delete it or choose another --out"
                )
            if not resume:
                raise OutputError(
                    f"{root}: holds an unfinished build of this recipe; add --resume to finish it"
                )
            self.state = state
            for p in root.glob(".*.partial"):
                p.unlink()
        elif manifest.exists():
            try:
                fp = json.loads(manifest.read_text()).get("fingerprint")
            except (OSError, json.JSONDecodeError, AttributeError):
                fp = None
            if not (resume and fp == self.fingerprint):
                raise OutputError(
                    f"{root}: already holds a finished build; choose another --out or delete it"
                )
            self.complete = True
        elif any(root.iterdir()):
            raise OutputError(
                f"{root}: exists, is not empty and is not a chimera-merge build; choose a new --out"
            )

    @property
    def distances(self) -> dict[str, float] | None:
        return self.state["distances"]

    def save_distances(self, rs: dict[str, float]) -> None:
        self.state["distances"] = rs
        self._save()

    def shard_done(self, fname: str) -> list[dict[str, Any]] | None:
        """The manifest records of a finished shard, or None when it must be (re)written."""
        s = self.state["shards"].get(fname)
        path = self.root / fname
        if s is None or not path.is_file() or path.stat().st_size != s["size"]:
            return None
        return s["records"]

    def mark_done(self, fname: str, size: int, records: list[dict[str, Any]]) -> None:
        self.state["shards"][fname] = {"size": size, "records": records}
        self._save()

    def _save(self) -> None:
        write_json_atomic(self.root / STATE_NAME, self.state, indent=None)

    def finish(self, manifest: dict[str, Any]) -> None:
        """Write the manifest (the completion marker), then drop the state."""
        write_json_atomic(self.root / MANIFEST_NAME, manifest)
        (self.root / STATE_NAME).unlink(missing_ok=True)
        self.complete = True

    def discard(self, names: list[str]) -> None:
        """Remove this build's files (after an error that resuming cannot fix), and the directory if we made it."""
        for n in [*names, STATE_NAME, INDEX_NAME]:
            (self.root / n).unlink(missing_ok=True)
        for p in [*self.root.glob(".*.partial"), *self.root.glob(".*.tmp")]:
            p.unlink()
        if self.created and not any(self.root.iterdir()):
            self.root.rmdir()
