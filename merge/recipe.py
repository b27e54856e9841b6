"""The merge recipe: YAML in, a frozen pydantic model out, every error naming the field and the fix.

```yaml
name: my-chimera
base: v3                      # tensors no rule merges come from here, and config + tokenizer
parents: {v3: deepseek-ai/DeepSeek-V3-0324, r1: ./r1}   # local dir (relative to this file) or repo[@rev]
rules:                        # first matching rule wins
  - select: routed_experts    # or `pattern: <regex searched in the tensor name>`
    weights: {r1: 1.0}        # convex: each >= 0, sum 1 within 1e-6; parents not named weigh 0
    threshold: 1.5            # optional: merge only tensors with d = r / median(r) >= 1.5
output: {dtype: auto, shard_size: 5GB}
```
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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


class Rule(BaseModel):
    """One merge rule: which tensors (a named class or a regex) and the parents' convex weights."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    select: TensorClass | None = None
    pattern: str | None = None
    weights: dict[str, float]
    threshold: float | None = Field(default=None, gt=0)

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
    def _convex(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("weights is empty; give at least one parent, e.g. {r1: 1.0}")
        for name, w in v.items():
            if not math.isfinite(w) or w < 0:
                raise ValueError(f"weight of {name!r} is {w}; weights must be >= 0")
        total = sum(v.values())
        if abs(total - 1.0) > WEIGHT_TOLERANCE:
            raise ValueError(f"weights sum to {total:g}; they must sum to 1 (within {WEIGHT_TOLERANCE:g})")
        return v

    @model_validator(mode="after")
    def _one_selector(self) -> Rule:
        if (self.select is None) == (self.pattern is None):
            raise ValueError("a rule needs exactly one of `select: <tensor class>` or `pattern: <regex>`")
        return self

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
    rules: list[Rule] = Field(default_factory=list)
    output: Output = Output()

    @model_validator(mode="after")
    def _names_known(self) -> Recipe:
        if self.base not in self.parents:
            raise ValueError(
                f"base {self.base!r} is not one of parents {sorted(self.parents)}; name a parent"
            )
        for i, rule in enumerate(self.rules):
            unknown = sorted(set(rule.weights) - set(self.parents))
            if unknown:
                raise ValueError(
                    f"rules.{i}.weights names unknown parent {unknown[0]!r}; parents are {sorted(self.parents)}"
                )
        return self


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
