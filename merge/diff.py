"""`chimera-merge diff A B`: how far apart two parents are, tensor by tensor: how a user picks a threshold.

A and B are local directories or hub parents (`org/name[@revision]`, fetched like a build's parents). For every
logical tensor (FP8 weights dequantized with their scales): r = ||B - A||_F / ||A||_F, computed by the build's
own distance (merge.engine: 2-D tensors streamed in windows of whole chunks, never a whole float32 tensor), and
d = r / median(r) within a group, normalized by the build's own function (`plan.normalize_groups`). The groups
are the tensor classes (what a `select: <class>` rule matches) or, with `--recipe`, the recipe's rules as the
build assigns them (first match wins, `layers:` included): then d is the build's d for a rule taking B over A
(a rule's weights scale every r of the rule alike, so they cancel in d). `--json FILE` writes every row.
"""

from __future__ import annotations

import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from merge.checkpoint import Checkpoint
from merge.engine import Engine, Readers, ordered_map, progress_bar
from merge.layout import DeepSeekV3Layout, layer_of
from merge.plan import (
    FLOATS,
    check_compatible,
    compile_patterns,
    logical_tensors,
    match_rule,
    normalize_groups,
)
from merge.recipe import Recipe
from merge.sidefiles import WEIGHT_FILES
from merge.sources import resolve


@dataclass(frozen=True)
class DiffRow:
    name: str
    cls: str
    group: str
    layer: int | None
    r: float
    d: float


@dataclass
class DiffReport:
    a: str
    b: str
    grouping: str  # "class" or "rule"
    rows: list[DiffRow]

    def by_group(self) -> list[dict[str, Any]]:
        return _summarize(self.rows, lambda r: r.group)

    def by_layer(self) -> list[dict[str, Any]]:
        return _summarize(self.rows, lambda r: "-" if r.layer is None else r.layer)

    def to_json(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "grouping": self.grouping, "by_group": self.by_group(),
                "by_layer": self.by_layer(), "tensors": [asdict(r) for r in self.rows]}  # fmt: skip


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


def diff_checkpoints(a: str | Path, b: str | Path, *, recipe: Recipe | None = None, workers: int = 1,
                     progress: bool = False, cache_dir: Path | None = None) -> DiffReport:  # fmt: skip
    """Per-tensor normalized distances between checkpoints `a` (reference) and `b` (directories or hub ids)."""
    pa = resolve("A", str(a), patterns=list(WEIGHT_FILES), cache_dir=cache_dir).path
    pb = resolve("B", str(b), patterns=list(WEIGHT_FILES), cache_dir=cache_dir).path
    ca, cb = Checkpoint.open(pa), Checkpoint.open(pb)  # type: ignore[arg-type]
    sa, sb = logical_tensors("A", ca.tensors), logical_tensors("B", cb.tensors)
    check_compatible("A", {"A": sa, "B": sb})
    layout = DeepSeekV3Layout(ca.config())
    names = [n for n in sorted(sa, key=lambda n: (str(sa[n].weight.shard), sa[n].weight.start))
             if sa[n].weight.dtype in FLOATS]  # fmt: skip
    classes = {n: layout.classify(n) for n in names}
    if recipe is None:
        groups = dict(classes)
    else:
        patterns = compile_patterns(recipe.rules)
        rule_of = {n: match_rule(recipe.rules, patterns, n, classes[n]) for n in names}
        groups = {n: "(no rule)" if i is None else f"{i}:{recipe.rules[i].label}" for n, i in rule_of.items()}
    readers = Readers()
    engine = Engine("A", readers, torch.device("cpu"))
    prog, task = progress_bar(progress, "diff", sum(sa[n].nbytes + sb[n].nbytes for n in names), len(names))
    rs: dict[str, float] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # parallel across tensors, as the build

    def distance(n: str) -> float:
        return engine.distance_of(n, {"A": sa[n], "B": sb[n]}, [("B", 1.0)], [("A", 1.0)])

    try:
        with ThreadPoolExecutor(workers) as pool, prog:
            for n, r in zip(names, ordered_map(pool, distance, names, workers + 1), strict=True):
                rs[n] = r
                prog.update(task, advance=sa[n].nbytes + sb[n].nbytes, n=len(rs))
    finally:
        torch.set_num_threads(threads)
        readers.close()
        ca.close()
        cb.close()
    ds = normalize_groups(rs, groups)
    rows = [DiffRow(n, classes[n], groups[n], layer_of(n), rs[n], ds[n]) for n in names]
    return DiffReport(str(a), str(b), "class" if recipe is None else "rule", rows)
