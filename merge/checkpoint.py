"""Read-only view of a safetensors checkpoint directory: headers first, tensors lazily.

A checkpoint is a directory holding either `model.safetensors.index.json` plus the shards it names, or
one or more `*.safetensors` files. Opening one reads only the JSON headers (a few MB even for a 688 GB
DeepSeek-V3 parent), checks them against the files' sizes and the index, and maps every tensor name to
its shard and byte range. Tensor data is read later, one tensor at a time: `read_raw` for byte-exact
copies, `get_tensor` through safetensors' memory map for arithmetic.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from merge.errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit

# safetensors dtype string -> (torch dtype, bytes per element)
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F8_E4M3": (torch.float8_e4m3fn, 1),
    "F8_E5M2": (torch.float8_e5m2, 1),
    "BF16": (torch.bfloat16, 2),
    "F16": (torch.float16, 2),
    "F32": (torch.float32, 4),
    "F64": (torch.float64, 8),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "I16": (torch.int16, 2),
    "I32": (torch.int32, 4),
    "I64": (torch.int64, 8),
    "BOOL": (torch.bool, 1),
}
TORCH_TO_ST = {dt: name for name, (dt, _) in DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: shard file and absolute byte range [start, end)."""

    name: str
    dtype: str  # safetensors dtype string, e.g. "F8_E4M3"
    shape: tuple[int, ...]
    shard: Path
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse one safetensors file's header; check every byte range against the file size.

    Returns (tensors by name, the `__metadata__` dict). Raises CheckpointError naming the file when it is
    truncated or its header is not valid safetensors.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(
                f"{path}: truncated safetensors file ({size} bytes); re-download or rebuild it"
            )
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise CheckpointError(
                f"{path}: corrupt safetensors header (length {n}, file {size} bytes); re-download it"
            )
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(
                f"{path}: safetensors header is not valid JSON ({e}); re-download it"
            ) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object; re-download it")
    meta = header.pop("__metadata__", None) or {}
    base = 8 + n
    out: dict[str, TensorInfo] = {}
    for name, h in header.items():
        try:
            dtype, shape, (a, b) = h["dtype"], tuple(int(x) for x in h["shape"]), h["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(
                f"{path}: malformed header entry for tensor {name!r}; re-download it"
            ) from None
        if dtype not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        numel = 1
        for d in shape:
            numel *= d
        if b - a != numel * DTYPES[dtype][1] or a < 0:
            raise CheckpointError(
                f"{path}: tensor {name!r} byte range {a}..{b} does not match {dtype}{list(shape)}"
            )
        if base + b > size:
            raise CheckpointError(
                f"{path}: truncated: tensor {name!r} ends at byte {base + b} but the file has {size}; re-download it"
            )
        out[name] = TensorInfo(name, dtype, shape, path, base + a, base + b)
    return out, meta


class Checkpoint:
    """A checkpoint directory: its tensors (from headers), config, and lazy readers that keep shards open."""

    def __init__(self, root: Path, tensors: dict[str, TensorInfo], index: dict[str, Any] | None) -> None:
        self.root = root
        self.tensors = tensors
        self.index = index
        self._handles: dict[Path, Any] = {}

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> Checkpoint:
        root = Path(root)
        if not root.is_dir():
            raise CheckpointError(
                f"{root}: not a directory; give a checkpoint directory with *.safetensors files"
            )
        index_path = root / INDEX_NAME
        index: dict[str, Any] | None = None
        if index_path.exists():
            try:
                index = json.loads(index_path.read_text())
                weight_map: dict[str, str] = index["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise CheckpointError(
                    f"{index_path}: not a valid index (needs a 'weight_map'); regenerate it"
                ) from None
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not (root / s).is_file()]
            if missing:
                raise CheckpointError(
                    f"{root}: shard {missing[0]} named in {INDEX_NAME} is missing; download it"
                )
        else:
            shards = sorted(p.name for p in root.glob("*.safetensors"))
            if not shards:
                raise CheckpointError(f"{root}: no *.safetensors files and no {INDEX_NAME}")
            weight_map = {}
        tensors: dict[str, TensorInfo] = {}
        for shard in shards:
            infos, _ = read_header(root / shard)
            for name, info in infos.items():
                if name in tensors:
                    raise CheckpointError(
                        f"{root}: tensor {name!r} appears in two shards ({tensors[name].shard.name}, {shard})"
                    )
                if index is not None and weight_map.get(name) != shard:
                    raise CheckpointError(
                        f"{root}: tensor {name!r} is in {shard} but {INDEX_NAME} says {weight_map.get(name)}"
                    )
                tensors[name] = info
        if index is not None:
            absent = [n for n in weight_map if n not in tensors]
            if absent:
                raise CheckpointError(
                    f"{root}: tensor {absent[0]!r} is listed in {INDEX_NAME} but not in {weight_map[absent[0]]}"
                )
        return cls(root, tensors, index)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def config(self) -> dict[str, Any]:
        """config.json as a dict ({} when absent)."""
        path = self.root / "config.json"
        if not path.exists():
            return {}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: invalid JSON ({e})") from None

    def read_raw(self, name: str) -> bytes:
        """The tensor's bytes exactly as stored (for byte-for-byte copies)."""
        info = self.tensors[name]
        with info.shard.open("rb") as f:
            f.seek(info.start)
            data = f.read(info.nbytes)
        if len(data) != info.nbytes:
            raise CheckpointError(f"{info.shard}: truncated while reading {name!r}; re-download it")
        return data

    def get_tensor(self, name: str) -> torch.Tensor:
        """The tensor, through safetensors' memory map (shards stay open for later reads)."""
        info = self.tensors[name]
        handle = self._handles.get(info.shard)
        if handle is None:
            try:
                handle = safe_open(str(info.shard), framework="pt")
            except Exception as e:  # safetensors raises its own error types for corrupt files
                raise CheckpointError(f"{info.shard}: cannot open ({e}); re-download it") from None
            self._handles[info.shard] = handle
        return handle.get_tensor(name)

    def close(self) -> None:
        self._handles.clear()
