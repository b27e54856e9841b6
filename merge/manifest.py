"""What a build records about itself: `merge-manifest.json` (machine-readable) and a README.md model card.

The manifest holds the recipe (and its key), each parent's source (path, or repo + revision + the commit the
build pinned) with a fingerprint per file (see `merge.sources.file_fingerprint`: header + size + mtime, or the hub's sha256; the
weights are never hashed, which would double the read), the tool version, the build fingerprint that resume
checks, every output file with each shard's sha256 (what `publish --checksums` and a resume compare), and one
record per logical tensor: rule, weights, r, d (threshold rules) and decision (merged / copied / kept-from-base).
No timestamps: two builds of one recipe give identical manifests.
"""

from __future__ import annotations

from collections import Counter
from importlib import metadata
from typing import Any

from merge.recipe import Recipe
from merge.state import FORMAT


def tool_version() -> str:
    try:
        return metadata.version("chimera")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


def build_manifest(
    recipe: Recipe,
    parents: dict[str, dict[str, Any]],
    fingerprint: str,
    records: list[dict[str, Any]],
    shards: dict[str, str],
    files: list[str],
    total_size: int,
) -> dict[str, Any]:
    """shards: name -> sha256, in order; files: every other file of the child but the manifest."""
    decisions = Counter(r["decision"] for r in records)
    return {
        "tool": "chimera-merge",
        "version": tool_version(),
        "format": FORMAT,
        "fingerprint": fingerprint,
        "recipe_key": recipe.key(),
        "recipe": recipe.model_dump(mode="json"),
        "parents": parents,
        "side_files": recipe.side_sources(),
        "output": {
            "dtype": recipe.output.dtype,
            "shards": list(shards),
            "sha256": shards,
            "files": files,
            "total_size": total_size,
            "tensors": len(records),
        },
        "decisions": dict(sorted(decisions.items())),
        "tensors": records,
    }


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def _weight(w: Any) -> str:
    return f"{w:g}" if not isinstance(w, list) else "[" + " .. ".join(f"{x:g}" for x in w) + "]"


def model_card(manifest: dict[str, Any]) -> str:
    """README.md for the child: the hub's metadata (its parents as `base_model`, `base_model_relation: merge`),
    then what was merged from which parent, by rule and decision."""
    recipe = manifest["recipe"]
    hub = list(dict.fromkeys(p["repo_id"] for p in manifest["parents"].values() if "repo_id" in p))
    lines = ["---"]
    if hub:
        lines += ["base_model:", *[f"- {h}" for h in hub], "base_model_relation: merge"]
    lines += [
        "library_name: transformers",
        "tags:",
        "- merge",
        "- assembly-of-experts",
        "- chimera-merge",
        "---",
        "",
    ]
    lines += [f"# {recipe['name']}", ""]
    side = manifest["side_files"]
    lines += [
        f"An Assembly-of-Experts child built by `chimera-merge` {manifest['version']} from "
        f"{len(recipe['parents'])} parents. Tensors no rule selects, the config, remote code and LICENSE come from the "
        f"base parent `{recipe['base']}`; tokenizer `{side['tokenizer']}`, chat template `{side['chat_template']}`, "
        f"generation config `{side['generation_config']}`.",
        "",
        "| parent | source |",
        "|---|---|",
    ]
    for name, src in manifest["parents"].items():
        where = (
            f"{src['repo_id']}@{src.get('commit') or src['revision']}" if "repo_id" in src else src["path"]
        )
        lines.append(f"| {name}{' (base)' if name == recipe['base'] else ''} | `{where}` |")
    lines += [
        "",
        "## Rules (first match wins)",
        "",
        "| # | tensors | weights | threshold | merged | copied | kept from base |",
    ]
    lines.append("|---|---|---|---|---|---|---|")
    per_rule: dict[Any, Counter[str]] = {}
    for rec in manifest["tensors"]:
        per_rule.setdefault(rec["rule"], Counter())[rec["decision"]] += 1
    for i, rule in enumerate(recipe["rules"]):
        sel = rule["select"] or f"`{rule['pattern']}`"
        if rule.get("layers"):
            sel += " (layers " + ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in rule["layers"]) + ")"
        c = per_rule.get(f"{i}:{rule['select'] or 'pattern:' + rule['pattern']}", Counter())
        weights = ", ".join(f"{k} {_weight(v)}" for k, v in rule["weights"].items())
        if rule.get("normalize") is False:
            weights += " (as given)"
        thr = rule["threshold"] if rule["threshold"] is not None else "-"
        lines.append(
            f"| {i} | {sel} | {weights} | {thr} | {c['merged']} | {c['copied']} | {c['kept-from-base']} |"
        )
    c = per_rule.get(None, Counter())
    lines.append(f"| - | everything else | {recipe['base']} 1 | - | 0 | 0 | {c['kept-from-base']} |")
    out = manifest["output"]
    lines += [
        "",
        f"Output: {out['tensors']} tensors, {_gb(out['total_size'])} in {len(out['shards'])} shards, dtype `{out['dtype']}` "
        "(FP8 tensors are dequantized with their 128x128 block scales, interpolated in float32 and requantized with "
        "fresh block scales; tensors taken from one parent are copied byte for byte).",
        "",
        "Per-tensor rules, weights, distances and decisions: `merge-manifest.json`.",
        "",
    ]
    return "\n".join(lines)
