"""`chimera-merge`: build | diff | verify | publish. Thin: parse, call the Python API, print; errors as one line.

Every expected failure is a `MergeError` (or an OSError from the file system): `main` prints `error: <message>` on
one line to stderr and exits non-zero, never with a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
import typer
from rich.console import Console
from rich.table import Table

from merge.errors import MergeError

if TYPE_CHECKING:
    from merge.plan import Plan

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Assembly-of-Experts merges of DeepSeek-V3-family (and other safetensors) checkpoints.")  # fmt: skip
out = Console() if sys.stdout.isatty() else Console(width=120)  # pipes and logs: no 80-column truncation


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


def print_plan(plan: Plan) -> None:
    t = Table(title=f"plan: {plan.recipe.name} (base {plan.recipe.base})")
    for col in ("rule", "tensors", "merged", "copied", "kept", "read", "write"):
        t.add_column(col, justify="left" if col == "rule" else "right", no_wrap=True)
    for row in plan.summary():
        c = row["decisions"]
        t.add_row(row["rule"], str(row["tensors"]), str(c["merged"]), str(c["copied"]), str(c["kept-from-base"]),
                  _size(row["read"]), _size(row["write"]))  # fmt: skip
    out.print(t)
    if plan.threshold_items:
        out.print(f"threshold rules: {len(plan.threshold_items)} tensors are decided by a first distance pass "
                  "(counted as merged/copied above; the read total includes that pass)")  # fmt: skip
    out.print("kept = kept from base (no rule, or below the threshold)")
    n_tensors = sum(len(it.out) for it in plan.items)
    out.print(f"{len(plan.items)} logical tensors ({n_tensors} stored), {len(plan.shards)} output shards; "
              f"bytes to read {_size(plan.bytes_to_read())}, to write {_size(plan.bytes_to_write())}")  # fmt: skip


@app.command()
def build(
    recipe: Path = typer.Argument(..., help="recipe YAML"),
    out_dir: Path = typer.Option(
        ..., "--out", help="output directory (new, empty, or --resume of the same recipe)"
    ),
    resume: bool = typer.Option(False, "--resume", help="finish an interrupted build of the same recipe"),
    workers: int = typer.Option(
        min(8, os.cpu_count() or 1),
        "--workers",
        min=1,
        help="threads reading and computing tensors",
    ),
    device: str = typer.Option(
        "cpu", "--device", help="cpu | cuda (dequantize/interpolate/requantize on a GPU)"
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and bytes (headers only) and stop"),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Hugging Face cache for hub parents"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bars"),
    verify: str = typer.Option(
        "headers",
        "--verify",
        help="check the finished child: headers (values are checked in flight) | full | none",
    ),
) -> None:
    """Build the child checkpoint of RECIPE into --out."""
    from merge.recipe import load_recipe

    if verify not in ("full", "headers", "none"):
        raise typer.BadParameter(f"{verify!r}; use full, headers or none", param_hint="--verify")
    r = load_recipe(recipe)  # before importing torch: recipe errors come back fast
    from merge.execute import build_child, plan_recipe

    if dry_run:
        print_plan(plan_recipe(r, cache_dir=cache_dir))
        return
    from merge.state import MANIFEST_NAME, STATE_NAME

    # A finished build of the same recipe and parents is reused as it is (build_child checks the fingerprint).
    finished = (out_dir / MANIFEST_NAME).exists() and not (out_dir / STATE_NAME).exists()
    manifest = build_child(r, out_dir, resume=resume, workers=workers, device=device, progress=not no_progress and sys.stderr.isatty(),
                           cache_dir=cache_dir, verify=verify)  # fmt: skip
    d = manifest["decisions"]
    out.print(f"{'reused finished build' if finished else 'built'} {out_dir}: {manifest['output']['tensors']} tensors, {_size(manifest['output']['total_size'])} "
              f"in {len(manifest['output']['shards'])} shards; " + ", ".join(f"{k} {v}" for k, v in d.items()))  # fmt: skip


@app.command()
def diff(
    a: str = typer.Argument(
        ..., help="reference checkpoint: directory or org/name[@revision] (e.g. the base)"
    ),
    b: str = typer.Argument(..., help="checkpoint to compare: directory or org/name[@revision]"),
    recipe: Path | None = typer.Option(
        None, "--recipe", help="normalize d per rule of this recipe, as its build does (default: per class)"
    ),
    json_file: Path | None = typer.Option(
        None, "--json", help="write every tensor's r and d to this JSON file"
    ),
    workers: int = typer.Option(1, "--workers", min=1),
    top: int = typer.Option(10, "--top", help="also list the N most different tensors"),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Hugging Face cache for hub parents"),
) -> None:
    """Per-tensor distances r = |B-A|/|A| and d = r / median(r) per class (or per --recipe rule)."""
    from merge.diff import diff_checkpoints
    from merge.recipe import load_recipe

    r = load_recipe(recipe) if recipe is not None else None
    rep = diff_checkpoints(a, b, recipe=r, workers=workers, progress=sys.stderr.isatty(), cache_dir=cache_dir)
    for title, rows in ((f"by {rep.grouping}", rep.by_group()), ("by layer", rep.by_layer())):
        t = Table(title=f"diff {title}: r = |B-A|/|A|")
        for col in ("group", "tensors", "median r", "min r", "max r", "max d"):
            t.add_column(col, justify="left" if col == "group" else "right")
        for g in rows:
            t.add_row(str(g["group"]), str(g["tensors"]), f"{g['median_r']:.4g}", f"{g['min_r']:.4g}",
                      f"{g['max_r']:.4g}", f"{g['max_d']:.3g}")  # fmt: skip
        out.print(t)
    t = Table(title=f"top {top} tensors by d")
    for col in ("tensor", rep.grouping, "r", "d"):
        t.add_column(col)
    for row in sorted(rep.rows, key=lambda r: -r.d)[:top]:
        t.add_row(row.name, row.group, f"{row.r:.4g}", f"{row.d:.3g}")
    out.print(t)
    if json_file is not None:
        json_file.write_text(json.dumps(rep.to_json(), indent=1) + "\n")
        out.print(f"wrote {json_file}")


@app.command()
def verify(
    path: Path = typer.Argument(..., help="checkpoint directory"),
    headers_only: bool = typer.Option(
        False, "--headers-only", help="structure only (seconds even for 688 GB)"
    ),
) -> None:
    """Check that a checkpoint loads as written: index vs shards, shapes/dtypes, FP8 scales, finite values."""
    from merge.verify import verify_checkpoint

    report = verify_checkpoint(path, headers_only=headers_only, progress=sys.stderr.isatty())
    out.print(report.summary())
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)


@app.command()
def publish(
    path: Path = typer.Argument(..., help="the --out directory of a finished build"),
    repo: str = typer.Argument(..., help="hub model repo, owner/name (created if absent)"),
    public: bool = typer.Option(False, "--public", help="create the repo public (default: private)"),
    checksums: bool = typer.Option(
        False, "--checksums", help="re-read every shard and compare its sha256 with the manifest first"
    ),
    workers: int = typer.Option(8, "--workers", min=1, help="parallel hashing and upload workers"),
) -> None:
    """Upload a finished, verified build to the Hugging Face hub (resumable: rerun after an interruption)."""
    from merge.publish import publish as publish_build

    url = publish_build(path, repo, private=not public, checksums=checksums, workers=workers)
    out.print(f"published {path} to {url}")


def _one_line(msg: object) -> str:
    return " ".join(str(msg).split())


# typer >= 0.29 parses with a click of its own (typer._click): its usage errors are not click's classes.
USAGE_ERRORS: tuple[type[Exception], ...] = (click.ClickException,)
try:
    from typer._click import ClickException as _TyperClickException

    USAGE_ERRORS += (_TyperClickException,)
except ImportError:  # older typer: click's own classes
    pass


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s", stream=sys.stderr)
    try:
        app(standalone_mode=False)
    except MergeError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        sys.exit(e.exit_code)
    except USAGE_ERRORS as e:
        e.show()
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        print("error: interrupted; rerun with --resume to continue a build", file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
