"""Output writing: one safetensors shard as a stream: header first, then each tensor with one sequential write.

The safetensors format is `u64 header length | JSON header | data`, and the header holds every tensor's byte
range, so a streaming writer must know the shard's tensors (names, dtypes, shapes) before the first byte of
data. Our callers always do: the merge plans shards from the parents' headers, the synthetic generator from
the config. The shard is written under a temporary name and renamed only when every tensor is in it, so a
file with a final shard name is always complete.

Durability, as a database commits: a finished shard is fsync'd before its rename and its directory after it, so
after a crash (a kill, or the machine losing power) a file under a final name holds the bytes it was written
with, never the zeroed blocks of unflushed pages. The writer hashes every byte it writes (sha256, ~1 GB/s with
the CPU's SHA extensions, on the writing thread) so that the build state can record each shard's checksum and a
resume can prove a finished shard intact before keeping it. JSON files go through the same temp-fsync-rename.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

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


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside directory `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Finished(NamedTuple):
    """A shard on disk under its final name: its size and the sha256 of its bytes."""

    size: int
    sha256: str


class ShardWriter:
    """Writes the planned `entries` in order to `<dir>/.<name>.partial`, renamed to `final` by `finish()`.

    Use as a context manager: leaving it with an exception removes the partial file.
    """

    def __init__(self, final: Path, entries: list[Entry], metadata: dict[str, str] | None = None) -> None:
        self.final = final
        self.tmp = partial_path(final)
        self.entries = entries
        self._next = 0
        self._hash = hashlib.sha256()
        try:
            self._f = self.tmp.open("wb")
            head = header_bytes(entries, metadata)
            self._f.write(head)
            self._hash.update(head)
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
        self._hash.update(buf)  # releases the GIL: workers keep computing meanwhile

    def finish(self) -> Finished:
        """fsync, rename to the final name, fsync the directory; returns size and sha256."""
        if self._next != len(self.entries):
            raise RuntimeError(
                f"shard {self.final.name}: {len(self.entries) - self._next} planned tensors not written"
            )
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            size = self.tmp.stat().st_size
            os.replace(self.tmp, self.final)
            fsync_dir(self.final.parent)
        except OSError as e:
            self._cleanup()
            raise disk_error(e, self.final) from None
        return Finished(size, self._hash.hexdigest())

    def _cleanup(self) -> None:
        f = getattr(self, "_f", None)
        if f is not None and not f.closed:
            with contextlib.suppress(OSError):
                f.close()
        self.tmp.unlink(missing_ok=True)


def pack(sizes: list[int], shard_size: int) -> list[list[int]]:
    """Greedy packing, in order, of items of `sizes` bytes into shards of at most ~shard_size: a shard is closed
    when the next item would overflow it (an item larger than shard_size gets a shard of its own). Indices."""
    shards: list[list[int]] = [[]]
    size = 0
    for i, n in enumerate(sizes):
        if shards[-1] and size + n > shard_size:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += n
    return shards


def plan_shards(groups: list[list[Entry]], shard_size: int) -> list[list[Entry]]:
    """`pack` of entry groups (a weight and its scale stay together) into shards of ~shard_size."""
    sizes = [sum(e.nbytes for e in g) for g in groups]
    return [[e for i in shard for e in groups[i]] for shard in pack(sizes, shard_size)]


def write_index(out_dir: Path, weight_map: dict[str, str], total_size: int) -> None:
    """model.safetensors.index.json, written to a temp name and renamed."""
    path = out_dir / INDEX_NAME
    write_json_atomic(path, {"metadata": {"total_size": total_size}, "weight_map": weight_map})


def write_atomic(path: Path, data: bytes, *, sync_dir: bool = True) -> None:
    """Write `data` to a temp name, fsync it, rename it to `path` (and fsync the directory): after a crash `path`
    holds either its old content or `data`."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        if sync_dir:
            fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise disk_error(e, path) from None


def write_json_atomic(path: Path, obj: object, indent: int | None = 2) -> None:
    write_atomic(path, (json.dumps(obj, indent=indent) + "\n").encode())
