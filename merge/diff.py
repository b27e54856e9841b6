"""`chimera-merge diff A B`: how far apart two parents are, tensor by tensor: how a user picks a threshold.

For every logical tensor (FP8 weights dequantized with their scales): r = ||B - A||_F / ||A||_F, and
d = r / median(r) over the tensors of the same class (the normalization a `threshold` uses when a rule selects
that class). Summaries per tensor class and per layer; `--json FILE` writes every row.
"""

from __future__ import annotations

import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from merge import mix
from merge.checkpoint import Checkpoint
from merge.execute import Readers, ordered_map, progress_bar
from merge.layout import DeepSeekV3Layout, layer_of
from merge.plan import Stored, check_compatible, logical_tensors


@dataclass(frozen=True)
class DiffRow:
    name: str
    cls: str
    layer: int | None
    r: float
    d: float


@dataclass
class DiffReport:
    a: str
    b: str
    rows: list[DiffRow]

    def by_class(self) -> list[dict[str, Any]]:
        return _summarize(self.rows, lambda r: r.cls)

    def by_layer(self) -> list[dict[str, Any]]:
        return _summarize(self.rows, lambda r: "-" if r.layer is None else r.layer)

    def to_json(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "by_class": self.by_class(), "by_layer": self.by_layer(),
                "tensors": [asdict(r) for r in self.rows]}  # fmt: skip


def _summarize(rows: list[DiffRow], key: Any) -> list[dict[str, Any]]:
    groups: dict[Any, list[DiffRow]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    out = []
    for k, rs in groups.items():
        vals = [r.r for r in rs]
        out.append({"group": k, "tensors": len(rs), "median_r": statistics.median(vals), "min_r": min(vals),
                    "max_r": max(vals), "max_d": max(r.d for r in rs)})  # fmt: skip
    return sorted(out, key=lambda g: (isinstance(g["group"], str), g["group"]))


def _distance(readers: Readers, a: Stored, b: Stored) -> float:
    def load(s: Stored) -> Any:
        w = readers.read(s.weight)
        t = mix.interpolate([(1.0, w, readers.read(s.scale) if s.scale is not None else None)])
        return t

    return mix.relative_distance(load(b), load(a))


def diff_checkpoints(a: Path, b: Path, *, workers: int = 1, progress: bool = False) -> DiffReport:
    """Per-tensor normalized distances between checkpoints `a` (reference) and `b`."""
    ca, cb = Checkpoint.open(a), Checkpoint.open(b)
    sa, sb = logical_tensors("A", ca.tensors), logical_tensors("B", cb.tensors)
    check_compatible("A", {"A": sa, "B": sb})
    layout = DeepSeekV3Layout(ca.config())
    names = [n for n in sorted(sa, key=lambda n: (str(sa[n].weight.shard), sa[n].weight.start))
             if sa[n].weight.dtype in ("F8_E4M3", "BF16", "F16", "F32")]  # fmt: skip
    readers = Readers()
    prog, task = progress_bar(progress, "diff", sum(sa[n].nbytes + sb[n].nbytes for n in names), len(names))
    rs: list[float] = []
    try:
        with ThreadPoolExecutor(workers) as pool, prog:
            for n, r in zip(
                names,
                ordered_map(pool, lambda n: _distance(readers, sa[n], sb[n]), names, workers + 1),
                strict=True,
            ):
                rs.append(r)
                prog.update(task, advance=sa[n].nbytes + sb[n].nbytes, n=len(rs))
    finally:
        readers.close()
    classes = [layout.classify(n) for n in names]
    ds = [0.0] * len(names)
    for c in set(classes):
        idx = [i for i, k in enumerate(classes) if k == c]
        for i, d in zip(idx, mix.normalize([rs[i] for i in idx]), strict=True):
            ds[i] = d
    rows = [DiffRow(n, c, layer_of(n), r, d) for n, c, r, d in zip(names, classes, rs, ds, strict=True)]
    return DiffReport(str(a), str(b), rows)
