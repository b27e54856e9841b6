"""The files besides the weights that make a child usable, and which parent each comes from.

One list (`GROUPS`) serves both ends, so a hub parent and a local parent give the same child: the allow-patterns
a hub parent is downloaded with, and the files copied from a parent's directory into the child.

  base               remote code (`*.py`, named by config.json's auto_map) and the license (LICENSE*)
  tokenizer          tokenizer.json, tokenizer_config.json, ... from `tokenizer_source` (default: base)
  chat_template      *.jinja / chat_template.json from `chat_template` (default: tokenizer_source)
  generation_config  generation_config.json from `generation_config` (default: base)

config.json comes from the base, rewritten by the build (dtype, quantization_config), and README.md is the model
card the build writes. DeepSeek keeps its chat template inside tokenizer_config.json: when the template comes
from another parent than the tokenizer, the child's tokenizer_config.json is the tokenizer parent's with its
`chat_template` key taken from the template parent (or dropped, when that parent ships a template file).
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

from merge.checkpoint import INDEX_NAME
from merge.errors import ParentError
from merge.recipe import Recipe
from merge.writer import fsync_dir, write_atomic

WEIGHT_FILES = ("*.safetensors", INDEX_NAME, "config.json")
GROUPS: dict[str, tuple[str, ...]] = {
    "base": ("*.py", "LICENSE*", "NOTICE*"),
    "tokenizer": ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                  "added_tokens.json", "vocab.json", "merges.txt", "*.tiktoken"),
    "chat_template": ("*.jinja", "chat_template.json"),
    "generation_config": ("generation_config.json",),
}  # fmt: skip
TOKENIZER_CONFIG = "tokenizer_config.json"


def roles_of(recipe: Recipe, parent: str) -> list[str]:
    return [role for role, p in recipe.side_sources().items() if p == parent]


def download_patterns(recipe: Recipe, parent: str) -> list[str]:
    """What to fetch of a hub parent: the weights, and the side files it is the source of."""
    roles = roles_of(recipe, parent)
    extra = [TOKENIZER_CONFIG] if "chat_template" in roles else []  # may hold the template itself
    return [*WEIGHT_FILES, *(g for r in roles for g in GROUPS[r]), *extra]


def select(directory: Path, role: str) -> list[str]:
    """Top-level files of `directory` in group `role`, sorted."""
    return sorted(
        p.name
        for p in directory.iterdir()
        if p.is_file() and any(fnmatch.fnmatch(p.name, g) for g in GROUPS[role])
    )


def _template_key(directory: Path) -> object | None:
    path = directory / TOKENIZER_CONFIG
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("chat_template")
    except (json.JSONDecodeError, AttributeError):
        raise ParentError(f"{path}: not a JSON object; re-download it") from None


def side_files(recipe: Recipe, dirs: dict[str, Path]) -> dict[str, Path | bytes]:
    """Child file name -> the parent file to copy, or the bytes to write (a rewritten tokenizer_config.json)."""
    src = recipe.side_sources()
    out: dict[str, Path | bytes] = {}
    for role in ("base", "tokenizer", "generation_config"):
        out.update({n: dirs[src[role]] / n for n in select(dirs[src[role]], role)})
    tdir = dirs[src["chat_template"]]
    files, key = select(tdir, "chat_template"), _template_key(tdir)
    if src["chat_template"] != src["tokenizer"]:
        if not files and key is None:
            raise ParentError(
                f"chat_template: parent {src['chat_template']!r} has no chat template (no *.jinja, "
                f"chat_template.json or chat_template in {TOKENIZER_CONFIG}); name another parent"
            )
        tok = out.get(TOKENIZER_CONFIG)
        if isinstance(tok, Path):
            config = json.loads(tok.read_text())
            config.pop("chat_template", None)
            if key is not None:
                config["chat_template"] = key
            out[TOKENIZER_CONFIG] = (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode()
        elif key is not None and not files:
            out["chat_template.jinja"] = str(key).encode()
    out.update({n: tdir / n for n in files})
    return dict(sorted(out.items()))


def write_side_files(files: dict[str, Path | bytes], out: Path) -> None:
    """Each file durably (temp, fsync, rename), then the directory once."""
    for name, src in files.items():
        write_atomic(out / name, src if isinstance(src, bytes) else src.read_bytes(), sync_dir=False)
    fsync_dir(out)
