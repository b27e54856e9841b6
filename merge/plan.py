"""The merge plan: for every logical tensor, which rule, which parents, what is read and what is written.

Built from headers only (local shards' headers, or the hub's safetensors metadata), so `--dry-run` can show the
plan and its bytes before anything is downloaded. A logical tensor is a weight together with its
`weight_scale_inv` when a parent stores it as block FP8. Tensors are ordered as the base stores them (shard,
then offset), so reading the base stays sequential; output shards are packed greedily up to `shard_size`
with a weight and its scale never split.

Decisions. No rule matches: kept-from-base. A rule whose only non-zero weight is one parent's 1.0: copied from
it (kept-from-base when that parent is the base). Otherwise merged (a rule's `layers:` narrow what it matches,
and its weights may vary by layer: `Rule.weights_at`). A rule with `threshold` first needs every
matched tensor's distance r (execute's first pass); a tensor with d = r / median(r) < threshold is then
kept-from-base. A tensor whose source already has the output's dtype is copied byte for byte.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from merge.checkpoint import TensorInfo
from merge.errors import CheckpointError, ParentError
from merge.fp8 import scale_shape
from merge.layout import DeepSeekV3Layout, is_fp8_projection, is_scale, layer_of, scale_name, weight_of
from merge.mix import normalize
from merge.recipe import Recipe, Rule
from merge.writer import Entry, pack

log = logging.getLogger("merge")
FP8 = "F8_E4M3"
FLOATS = {"F8_E4M3", "BF16", "F16", "F32"}


@dataclass(frozen=True)
class Stored:
    """How one parent stores a logical tensor: the weight, and its block scale when FP8."""

    weight: TensorInfo
    scale: TensorInfo | None

    @property
    def nbytes(self) -> int:
        return self.weight.nbytes + (self.scale.nbytes if self.scale else 0)

    @property
    def entries(self) -> list[Entry]:
        out = [Entry(self.weight.name, self.weight.dtype, self.weight.shape)]
        if self.scale is not None:
            out.append(Entry(self.scale.name, self.scale.dtype, self.scale.shape))
        return out


@dataclass
class Item:
    """One logical tensor of the child."""

    name: str
    cls: str
    layer: int | None
    rule: int | None  # index into recipe.rules
    weights: dict[str, float]  # the rule's non-zero weights ({} without a rule)
    stored: dict[str, Stored]  # every parent's stored form
    out: list[Entry]  # what the child stores: [weight] or [weight, weight_scale_inv]
    source: str | None  # the single parent it comes from (None: merged)
    decision: str  # merged | copied | kept-from-base (threshold items: provisional until distances exist)
    threshold: float | None = None
    r: float | None = None
    d: float | None = None

    @property
    def is_copy(self) -> bool:
        """Byte-for-byte copy: one source that already stores the output's dtypes and shapes."""
        return self.source is not None and self.stored[self.source].entries == self.out

    def parts(self) -> list[tuple[str, float]]:
        """(parent, weight) pairs to interpolate; a single source counts with weight 1."""
        return [(self.source, 1.0)] if self.source is not None else list(self.weights.items())

    @property
    def read_bytes(self) -> int:
        return sum(self.stored[p].nbytes for p, _ in self.parts())

    @property
    def write_bytes(self) -> int:
        return sum(e.nbytes for e in self.out)

    def record(self, rule_label: str | None) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "name": self.name,
            "class": self.cls,
            "rule": rule_label,
            "decision": self.decision,
        }
        if self.source is not None:
            rec["source"] = self.source
        if self.weights:
            rec["weights"] = self.weights
        if self.threshold is not None:
            rec |= {"r": self.r, "d": self.d, "threshold": self.threshold}
        return rec


@dataclass
class Plan:
    recipe: Recipe
    items: list[Item]
    shards: list[list[Item]]
    base_config: dict[str, Any]
    rule_matches: list[int] = field(default_factory=list)

    @property
    def threshold_items(self) -> list[Item]:
        return [it for it in self.items if it.threshold is not None]

    def bytes_to_read(self) -> int:
        """Parent bytes read: the first (distance) pass of threshold rules, then each tensor's sources."""
        first = sum(
            it.read_bytes + (it.stored[self.recipe.base].nbytes if it.source != self.recipe.base else 0)
            for it in self.threshold_items
        )
        return first + sum(it.read_bytes for it in self.items)

    def bytes_to_write(self) -> int:
        return sum(it.write_bytes for it in self.items)

    def rule_label(self, item: Item) -> str | None:
        return None if item.rule is None else f"{item.rule}:{self.recipe.rules[item.rule].label}"

    def summary(self) -> list[dict[str, Any]]:
        """Per rule in recipe order, then 'no rule': tensors, decisions, bytes read and written."""
        rows: dict[int, dict[str, Any]] = {
            i: {"rule": f"{i}:{r.label}", "tensors": 0, "read": 0, "write": 0, "decisions": Counter()}
            for i, r in enumerate(self.recipe.rules)
        }
        for it in self.items:
            k = len(self.recipe.rules) if it.rule is None else it.rule
            label = self.rule_label(it) or "(no rule: base)"
            row = rows.setdefault(
                k, {"rule": label, "tensors": 0, "read": 0, "write": 0, "decisions": Counter()}
            )
            row["tensors"] += 1
            row["read"] += it.read_bytes
            row["write"] += it.write_bytes
            row["decisions"][it.decision] += 1
        return [rows[k] for k in sorted(rows)]


def logical_tensors(parent: str, tensors: dict[str, TensorInfo]) -> dict[str, Stored]:
    """Pair every FP8 weight with its `weight_scale_inv`; check that scales fit their weights."""
    out: dict[str, Stored] = {}
    for name, info in tensors.items():
        if is_scale(name):
            w = weight_of(name)
            if w not in tensors:
                raise CheckpointError(
                    f"parent {parent!r}: scale {name} has no weight {w}; the checkpoint is incomplete"
                )
            continue
        scale = tensors.get(scale_name(name))
        if info.dtype == FP8 and scale is None:
            raise CheckpointError(
                f"parent {parent!r}: FP8 tensor {name} has no {scale_name(name)}; re-download it"
            )
        if scale is not None and info.dtype != FP8:
            # Applying it would scale bf16 values that were never quantized (and write the child as FP8 + scale,
            # which verify accepts): a half-converted checkpoint.
            raise CheckpointError(
                f"parent {parent!r}: {name} is {info.dtype} but has a {scale.name.rsplit('.', 1)[-1]}, which "
                "belongs to float8 weights only; re-download the parent or delete the stray scale"
            )
        if scale is not None and (len(info.shape) != 2 or scale.shape != scale_shape(info.shape)):
            raise CheckpointError(
                f"parent {parent!r}: {scale.name} has shape {list(scale.shape)}, expected "
                f"{list(scale_shape(info.shape)) if len(info.shape) == 2 else 'a 2-D weight'}; re-download it"
            )
        out[name] = Stored(info, scale)
    return out


def check_compatible(base: str, stores: dict[str, dict[str, Stored]]) -> None:
    ref = stores[base]
    for p, s in stores.items():
        if p == base:
            continue
        extra = sorted(set(s) - set(ref))
        missing = sorted(set(ref) - set(s))
        if missing or extra:
            n, where = (missing[0], p) if missing else (extra[0], base)
            raise ParentError(
                f"parents {base!r} and {p!r} differ: tensor {n} is missing in {where!r}; merge parents of one architecture"
            )
        for n, st in s.items():
            if st.weight.shape != ref[n].weight.shape:
                raise ParentError(
                    f"parents {base!r} and {p!r} differ: {n} has shape {list(ref[n].weight.shape)} vs "
                    f"{list(st.weight.shape)}; merge parents of one architecture"
                )


def output_entries(name: str, stored: dict[str, Stored], base: str, dtype: str) -> list[Entry]:
    """The child's stored form of a tensor under `output.dtype` (auto: like base)."""
    b = stored[base].weight
    shape = b.shape
    if dtype == "auto":
        return stored[base].entries
    if dtype == "bf16":
        keep = b.dtype not in FLOATS or name.endswith("e_score_correction_bias")
        return [Entry(name, b.dtype if keep else "BF16", shape)]
    # fp8: what any parent stores as FP8, plus DeepSeek's projections
    if len(shape) == 2 and (any(s.weight.dtype == FP8 for s in stored.values()) or is_fp8_projection(name)):
        return [Entry(name, FP8, shape), Entry(scale_name(name), "F32", scale_shape(shape))]
    return [Entry(name, b.dtype, shape)]


def _order_key(info: TensorInfo) -> tuple[str, int]:
    return (str(info.shard), info.start)


def match_rule(rules: list[Rule], patterns: list[re.Pattern[str] | None], name: str, cls: str) -> int | None:
    """Index of the first rule that selects tensor `name` (of class `cls`), or None."""
    layer = layer_of(name)
    return next(
        (
            i
            for i, r in enumerate(rules)
            if (r.select == cls or (patterns[i] is not None and patterns[i].search(name)))  # type: ignore[union-attr]
            and r.matches_layer(layer)
        ),
        None,
    )


def compile_patterns(rules: list[Rule]) -> list[re.Pattern[str] | None]:
    return [re.compile(r.pattern) if r.pattern is not None else None for r in rules]


def build_plan(
    recipe: Recipe, headers: dict[str, dict[str, TensorInfo]], base_config: dict[str, Any]
) -> Plan:
    """Plan the merge of the parents whose tensors (from headers) are given, one dict per recipe parent."""
    base = recipe.base
    stores = {p: logical_tensors(p, headers[p]) for p in recipe.parents}
    check_compatible(base, stores)
    layout = DeepSeekV3Layout(base_config)
    patterns = compile_patterns(recipe.rules)
    matches = [0] * len(recipe.rules)
    items: list[Item] = []
    for name in sorted(stores[base], key=lambda n: _order_key(stores[base][n].weight)):
        cls = layout.classify(name)
        stored = {p: stores[p][name] for p in recipe.parents}
        rule = match_rule(recipe.rules, patterns, name, cls)
        weights: dict[str, float] = {}
        source: str | None = base
        threshold = None
        if rule is not None:
            matches[rule] += 1
            r = recipe.rules[rule]
            weights = {p: w for p, w in r.weights_at(layer_of(name)).items() if w != 0}
            only = next(iter(weights.items())) if len(weights) == 1 else None
            source = only[0] if only is not None and only[1] == 1.0 else None
            threshold = r.threshold
        decision = "merged" if source is None else ("kept-from-base" if source == base else "copied")
        out = output_entries(name, stored, base, recipe.output.dtype)
        items.append(Item(name, cls, layer_of(name), rule, weights, stored, out, source, decision, threshold))
    for i, n in enumerate(matches):
        if n == 0:
            log.warning("rule %d (%s) matches no tensor; check its select/pattern", i, recipe.rules[i].label)
    # a weight and its scale stay in one shard
    shards = [[items[i] for i in s] for s in pack([it.write_bytes for it in items], recipe.output.shard_size)]
    return Plan(recipe, items, shards, base_config, matches)


def normalize_groups(rs: dict[str, float], groups: dict[str, Any]) -> dict[str, float]:
    """d = r / median(r) within each group (the tensors one rule matches), in the order of `rs`."""
    members: dict[Any, list[str]] = {}
    for name in rs:
        members.setdefault(groups[name], []).append(name)
    ds: dict[str, float] = {}
    for names in members.values():
        ds.update(zip(names, normalize([rs[n] for n in names]), strict=True))
    return ds


def apply_distances(plan: Plan, rs: dict[str, float]) -> None:
    """Set r, d and the final decision of every threshold item from the first pass's distances r."""
    items = plan.threshold_items
    ds = normalize_groups({it.name: rs[it.name] for it in items}, {it.name: it.rule for it in items})
    for it in items:
        it.r, it.d = rs[it.name], ds[it.name]
        if it.d < it.threshold:  # type: ignore[operator]
            it.source, it.decision = plan.recipe.base, "kept-from-base"
