"""The arithmetic of a build over the parents' files: positional reads, worker threads, a device.

Reads. Tensors are read with positional reads (`os.preadv`, safe from many threads, one fd per shard kept open)
into each worker's scratch buffers (`mix.Workspace`), never through memory maps: a copy or a merge reads each
parent's tensor whole; a distance reads 2-D tensors in windows of whole chunk rows (~256 MB of each parent at a
time), so an embedding's distance never holds it whole. After each tensor a worker drops buffers above 256 MB,
so one embedding (1.85 GB at V3 size) does not stay resident in every worker for the rest of the build. Peak
memory is therefore about (workers + 1) x (the largest tensor's parent bytes + its output), whatever the
model's size.

Values. Every value is checked finite as it passes: computed tensors through their FP8 scales or sums, copied
ones on their bit patterns (no float conversion), so NaN/Inf in a parent is caught naming parent and tensor.
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from merge import mix
from merge.checkpoint import DTYPES, TensorInfo
from merge.errors import CheckpointError, ParentError
from merge.fp8 import BLOCK
from merge.plan import Item, Stored

T = TypeVar("T")
R = TypeVar("R")
WINDOW_BYTES = 256 << 20  # of each parent's raw tensor per distance window


class Readers:
    """Thread-safe positional reads of tensors from parent shards (one fd per shard, kept open)."""

    def __init__(self) -> None:
        self._fds: dict[Any, int] = {}
        self._lock = threading.Lock()

    def fd(self, path: Any) -> int:
        with self._lock:
            if path not in self._fds:
                self._fds[path] = os.open(path, os.O_RDONLY)
            return self._fds[path]

    def read(
        self, info: TensorInfo, into: torch.Tensor | None = None, rows: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """The tensor's bytes (or rows r0:r1 of a 2-D tensor) as a tensor of its dtype, read into `into` (uint8,
        exactly the bytes read) when given."""
        start, nbytes, shape = info.start, info.nbytes, info.shape
        if rows is not None:
            row = info.nbytes // info.shape[0]
            start, nbytes, shape = (
                start + rows[0] * row,
                (rows[1] - rows[0]) * row,
                (rows[1] - rows[0], info.shape[1]),
            )
        buf = torch.empty(nbytes, dtype=torch.uint8) if into is None else into
        view, fd, done = memoryview(buf.numpy()), self.fd(info.shard), 0
        while done < nbytes:
            n = os.preadv(fd, [view[done:]], start + done)
            if n <= 0:
                raise CheckpointError(f"{info.shard}: truncated while reading {info.name}; re-download it")
            done += n
        return buf.view(DTYPES[info.dtype][0]).view(shape)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def ordered_map(
    pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], window: int
) -> Iterator[R]:
    """pool.map in order with at most `window` results in flight (bounded memory)."""
    pending: deque[Future[R]] = deque()
    for it in items:
        pending.append(pool.submit(fn, it))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def progress_bar(enabled: bool, label: str, total_bytes: int, total_items: int) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    prog = Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TextColumn("{task.fields[n]}/" + str(total_items) + " tensors"), TimeRemainingColumn(),
        console=Console(stderr=True), disable=not enabled, transient=False,
    )  # fmt: skip
    task = prog.add_task(label, total=total_bytes, n=0)
    return prog, task


Parts = list[tuple[str, float]]


class Engine:
    """The arithmetic of one build on one device, over the parents' readers."""

    def __init__(self, base: str, readers: Readers, device: torch.device) -> None:
        self.base, self.readers, self.device = base, readers, device
        self._local = threading.local()

    @property
    def ws(self) -> mix.Workspace:
        """This worker thread's scratch buffers."""
        if not hasattr(self._local, "ws"):
            self._local.ws = mix.Workspace()
        return self._local.ws

    def _read(self, info: TensorInfo, key: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        gpu = self.device.type != "cpu"
        n = info.nbytes if rows is None else info.nbytes // info.shape[0] * (rows[1] - rows[0])
        buf = self.ws.get(key, (n,), torch.uint8, torch.device("cpu"), pin=gpu)
        t = self.readers.read(info, buf, rows)
        # A blocking copy: the buffer is this worker's and is refilled by its next read.
        return t.to(self.device) if gpu else t

    def _load(self, stored: dict[str, Stored], parts: Parts, key: str, rows: tuple[int, int] | None = None,
              ) -> list[mix.Part]:  # fmt: skip
        """Each part's weight (rows r0:r1 when given) and its scale rows (the block rows they fall in)."""
        loaded: list[mix.Part] = []
        for p, w in parts:
            st = stored[p]
            srows = None if rows is None else (rows[0] // BLOCK, -(-rows[1] // BLOCK))
            scale = self._read(st.scale, f"{key}.{p}.s", srows) if st.scale is not None else None
            loaded.append((w, self._read(st.weight, f"{key}.{p}.w", rows), scale))
        return loaded

    @staticmethod
    def _nonfinite(name: str, parts: Parts, loaded: list[mix.Part]) -> ParentError:
        for (p, _), (_, t, s) in zip(parts, loaded, strict=True):
            if not mix.is_finite(t) or (s is not None and not mix.is_finite(s)):
                return ParentError(
                    f"parent {p!r}: tensor {name} holds NaN or Inf; the checkpoint is corrupt, re-download it"
                )
        return ParentError(f"{name}: the interpolation overflowed float32; check the parents' values")

    def distance_of(self, name: str, stored: dict[str, Stored], parts: Parts, base: Parts) -> float:
        """r = ||sum of parts - sum of base|| / ||sum of base||; 2-D tensors read in windows of whole chunks."""
        shape = stored[parts[0][0]].weight.shape
        try:
            if len(shape) != 2:
                lp, lb = self._load(stored, parts, "m"), self._load(stored, base, "b")
                r = mix.distance(lp, lb, self.ws)
                if math.isnan(r):
                    raise self._nonfinite(name, parts + base, lp + lb)
                return r
            step = mix.chunk_rows(shape[1], self.device)
            row_bytes = max(stored[p].weight.nbytes // shape[0] for p, _ in parts + base)
            window = max(1, WINDOW_BYTES // (row_bytes * step)) * step
            acc = (0.0, 0.0)
            for r0 in range(0, shape[0], window):
                rows = (r0, min(shape[0], r0 + window))
                lp, lb = self._load(stored, parts, "m", rows), self._load(stored, base, "b", rows)
                acc = mix.distance_sums(lp, lb, self.ws, acc=acc)
                if math.isnan(acc[0]) or not math.isfinite(acc[1]):
                    raise self._nonfinite(name, parts + base, lp + lb)
            return mix.ratio(*acc)
        finally:
            self.ws.trim()

    def distance(self, item: Item) -> float:
        """r = ||W* - W_base|| / ||W_base|| (pass 1 of threshold rules)."""
        return self.distance_of(item.name, item.stored, item.parts(), [(self.base, 1.0)])

    def compute(self, item: Item) -> list[torch.Tensor]:
        """The child's tensors for `item` (weight [, scale]) on the CPU, every value checked finite."""
        if item.is_copy:
            st = item.stored[item.source]  # type: ignore[index]
            raw = [self.readers.read(i) for i in ([st.weight] if st.scale is None else [st.weight, st.scale])]
            if not all(mix.is_finite(t) for t in raw):
                loaded: list[mix.Part] = [(1.0, raw[0], raw[1] if len(raw) > 1 else None)]
                raise self._nonfinite(item.name, [(item.source, 1.0)], loaded)  # type: ignore[list-item]
            return raw
        parts = item.parts()
        try:
            loaded = self._load(item.stored, parts, "m")
            out, scale = mix.merge(loaded, DTYPES[item.out[0].dtype][0], self.ws)
            if not mix.is_finite(scale if scale is not None else out):
                raise self._nonfinite(item.name, parts, loaded)
            return [out.cpu()] if scale is None else [out.cpu(), scale.cpu()]
        finally:
            self.ws.trim()
