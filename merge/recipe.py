"""The merge recipe: YAML in, a frozen pydantic model out, every error naming the field and the fix.

```yaml
name: my-chimera
base: v3                      # tensors no rule merges come from here, and config, LICENSE, remote code
parents: {v3: deepseek-ai/DeepSeek-V3-0324@<commit>, r1: ./r1}   # local dir (relative to this file) or repo[@rev]
tokenizer_source: r1          # optional: tokenizer files from this parent (default: base)
chat_template: r1             # optional: chat template from this parent (default: tokenizer_source)
generation_config: r1         # optional: generation_config.json from this parent (default: base)
rules:                        # first matching rule wins
  - select: routed_experts    # or `pattern: <regex searched in the tensor name>`
    layers: 3-30, 40          # optional: only tensors of these layers (ranges inclusive)
    weights: {r1: 1.0}        # convex: each >= 0, sum 1 within 1e-6; parents not named weigh 0
    threshold: 1.5            # optional: merge only tensors with d = r / median(r) >= 1.5
  - select: attention
    layers: 0-60
    weights: {v3: [1.0, 0.5], r1: [0.0, 0.5]}   # a list varies linearly from the first to the last layer
  - pattern: "mlp\\.shared_experts"
    normalize: false          # task arithmetic: weights used as given (any sign, any sum)
    weights: {v3: -1.0, r1: 1.0, r1_0528: 1.0}
output: {dtype: auto, shard_size: 5GB}
```
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from merge.errors import RecipeError
from merge.layout import TensorClass

WEIGHT_TOLERANCE = 1e-6
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def parse_size(value: int | str) -> int:
    """'5GB' -> 5_000_000_000, '512MiB' -> 536870912, 1000 -> 1000."""
    if isinstance(value, bool):
        raise ValueError("shard_size must be a size like 5GB")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise ValueError(f"shard_size {value!r} is not a size; write e.g. 5GB, 500MB or 1073741824")
        n = int(float(m.group(1)) * _UNITS[(m.group(2) or "b").lower()])
    if n < 1:
        raise ValueError("shard_size must be positive; write e.g. 5GB")
    return n


Weight = float | list[float]


def parse_layers(value: Any) -> tuple[tuple[int, int], ...] | None:
    """'3-30, 40' / 5 / [0, '10-20'] -> ((3, 30), (40, 40)) etc.: inclusive layer ranges."""
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    out: list[tuple[int, int]] = []
    for item in items:
        for part in str(item).split(",") if isinstance(item, str) else [item]:
            if isinstance(part, bool) or not isinstance(part, int | str):
                raise ValueError(f"{part!r} is not a layer or a range; write e.g. 3-30 or [0, 5-9]")
            lo, _, hi = str(part).strip().partition("-")
            if not lo.isdigit() or not (hi or lo).isdigit():
                raise ValueError(f"{part!r} is not a layer or a range; write e.g. 3-30 or [0, 5-9]")
            if int(hi or lo) < int(lo):
                raise ValueError(f"range {part!r} ends before it starts; write low-high")
            out.append((int(lo), int(hi or lo)))
    if not out:
        raise ValueError("layers is empty; give layers like 3-30, or drop the key")
    return tuple(out)


class Rule(BaseModel):
    """One merge rule: which tensors (a named class or a regex, optionally only some layers) and the parents'
    weights: convex by default; a list varies linearly across the rule's layers; `normalize: false` takes any
    real weights as given (task arithmetic: e.g. {v3: -1, r1: 1, r1_0528: 1} adds R1's change to R1-0528)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    select: TensorClass | None = None
    pattern: str | None = None
    layers: tuple[tuple[int, int], ...] | None = None
    normalize: bool = True  # declared before weights: their validator reads it
    weights: dict[str, Weight]
    threshold: float | None = Field(default=None, gt=0)

    @field_validator("layers", mode="before")
    @classmethod
    def _layers(cls, v: Any) -> tuple[tuple[int, int], ...] | None:
        return parse_layers(v)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"pattern {v!r} is not a valid regex ({e}); fix the regex") from None
        return v

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, Weight], info: ValidationInfo) -> dict[str, Weight]:
        normalize = info.data.get("normalize", True)
        if not v:
            raise ValueError("weights is empty; give at least one parent, e.g. {r1: 1.0}")
        lengths = {len(w) for w in v.values() if isinstance(w, list)}
        if lengths and info.data.get("layers") is None:
            raise ValueError("weights given as lists vary across the rule's layers; add e.g. `layers: 3-60`")
        if len(lengths) > 1 or min(lengths, default=2) < 2:
            raise ValueError("weight lists must all have the same length, at least 2 (first and last layer)")
        n = lengths.pop() if lengths else 1
        for k in range(n):  # lists interpolate linearly: checking each list position checks every layer
            col = {p: w[k] if isinstance(w, list) else w for p, w in v.items()}
            for name, w in col.items():
                if not math.isfinite(w) or (normalize and w < 0):
                    raise ValueError(
                        f"weight of {name!r} is {w}; weights must be >= 0 (or set `normalize: false` for task "
                        "arithmetic)"
                    )
            total = sum(col.values())
            if normalize and abs(total - 1.0) > WEIGHT_TOLERANCE:
                raise ValueError(
                    f"weights sum to {total:g}; they must sum to 1 (within {WEIGHT_TOLERANCE:g}), or set "
                    "`normalize: false` to use them as given"
                )
            if not normalize and not any(col.values()):
                raise ValueError("weights are all 0; give at least one non-zero weight")
        return v

    @model_validator(mode="after")
    def _one_selector(self) -> Rule:
        if (self.select is None) == (self.pattern is None):
            raise ValueError("a rule needs exactly one of `select: <tensor class>` or `pattern: <regex>`")
        return self

    def matches_layer(self, layer: int | None) -> bool:
        """No `layers:` matches every tensor; with it, only tensors of those layers (never embeddings, lm_head,
        model.norm)."""
        if self.layers is None:
            return True
        return layer is not None and any(lo <= layer <= hi for lo, hi in self.layers)

    def weights_at(self, layer: int | None) -> dict[str, float]:
        """The weights for a tensor of `layer`: lists are interpolated linearly, their first value at the first
        layer of `layers:` and their last at its last, the values between spread evenly."""
        if self.layers is None or layer is None:
            return {p: float(w[0] if isinstance(w, list) else w) for p, w in self.weights.items()}
        first, last = min(lo for lo, _ in self.layers), max(hi for _, hi in self.layers)
        out: dict[str, float] = {}
        for p, w in self.weights.items():
            if not isinstance(w, list):
                out[p] = float(w)
                continue
            t = 0.0 if last == first else (layer - first) / (last - first) * (len(w) - 1)
            i = min(int(t), len(w) - 2)
            out[p] = w[i] + (t - i) * (w[i + 1] - w[i])
        return out

    @property
    def label(self) -> str:
        return self.select if self.select is not None else f"pattern:{self.pattern}"


class Output(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    dtype: Literal["auto", "bf16", "fp8"] = "auto"
    shard_size: int = 5 * 10**9

    @field_validator("shard_size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> int:
        return parse_size(v)


class Recipe(BaseModel):
    """A validated merge recipe. Parent values are absolute local paths or hub ids `repo[@revision]`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[\w.-]+$", min_length=1)
    base: str
    parents: dict[str, str] = Field(min_length=1)
    tokenizer_source: str | None = None
    chat_template: str | None = None
    generation_config: str | None = None
    rules: list[Rule] = Field(default_factory=list)
    output: Output = Output()

    @model_validator(mode="after")
    def _names_known(self) -> Recipe:
        if self.base not in self.parents:
            raise ValueError(
                f"base {self.base!r} is not one of parents {sorted(self.parents)}; name a parent"
            )
        for key in ("tokenizer_source", "chat_template", "generation_config"):
            v = getattr(self, key)
            if v is not None and v not in self.parents:
                raise ValueError(f"{key} {v!r} is not one of parents {sorted(self.parents)}; name a parent")
        for i, rule in enumerate(self.rules):
            unknown = sorted(set(rule.weights) - set(self.parents))
            if unknown:
                raise ValueError(
                    f"rules.{i}.weights names unknown parent {unknown[0]!r}; parents are {sorted(self.parents)}"
                )
        return self

    def side_sources(self) -> dict[str, str]:
        """Which parent each group of side files comes from (merge.sidefiles)."""
        tok = self.tokenizer_source or self.base
        return {"base": self.base, "tokenizer": tok, "chat_template": self.chat_template or tok,
                "generation_config": self.generation_config or self.base}  # fmt: skip

    def key(self) -> str:
        """sha256 of the validated recipe: what a build directory is bound to."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def is_repo_id(spec: str) -> bool:
    """'org/model' or 'org/model@rev' that is not an existing local path."""
    return _REPO_ID.match(spec) is not None and not Path(spec).expanduser().exists()


def recipe_error(source: str, e: ValidationError) -> RecipeError:
    """The first validation error as one line: '<file>: <field>: <message>'."""
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "recipe"
    msg = err["msg"].removeprefix("Value error, ")
    return RecipeError(f"{source}: {loc}: {msg}")


def load_recipe(path: Path) -> Recipe:
    """Read and validate a YAML recipe; relative local parent paths resolve against the file's directory."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise RecipeError(f"{path}: cannot read the recipe ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping with name, base, parents, rules, output")
    parents = data.get("parents")
    if isinstance(parents, dict):
        resolved = {}
        for k, v in parents.items():
            if isinstance(v, str):
                local = (path.parent / Path(v).expanduser()).resolve()
                if local.exists() or not _REPO_ID.match(v):
                    v = str(local)
            resolved[k] = v
        data = {**data, "parents": resolved}
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise recipe_error(str(path), e) from None
