"""Running a build: parents resolved (hub revisions pinned to commits), planned, two passes, the child finished.

Order. The output directory is opened first (merge.state: a resume reads the commits its hub parents were pinned
to), then the parents are resolved and downloaded at those commits, planned from their headers, and the
directory bound to the build's fingerprint (recipe + parents' files + plan). Before anything heavy, the shards an
earlier run finished are checked against their checksums and free space against what is left to write.

Passes. Threshold rules first need the distance r of every tensor they match (pass 1: interpolate, compare with
the base, discard; each r logged as it comes, so an interrupted pass resumes where it stopped); then every
shard is written (pass 2), results in plan order from `--workers` threads (merge.engine), one sequential write
per tensor, so the child is byte-identical however many workers run. Then the index, config.json, the side files
(merge.sidefiles), the model card, `verify`, and last the manifest that marks the build complete.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import torch

from merge.checkpoint import INDEX_NAME, Checkpoint
from merge.engine import Engine, Readers, ordered_map, progress_bar
from merge.errors import DeviceError, MergeError, OutputError, ParentError, VerifyError
from merge.fp8 import QUANTIZATION_CONFIG
from merge.manifest import build_manifest, model_card, tool_version
from merge.plan import Plan, apply_distances, build_plan
from merge.recipe import Recipe, is_repo_id
from merge.sidefiles import download_patterns, side_files, write_side_files
from merge.sources import Source, cached_snapshot, file_fingerprint, hub_headers, resolve, resolve_commit
from merge.state import FORMAT, BuildDir, check_free_space
from merge.verify import verify_child
from merge.writer import ShardWriter, shard_name, write_atomic, write_index, write_json_atomic


def check_device(device: str) -> torch.device:
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {device}: no CUDA device is available to torch {torch.__version__}; use --device cpu"
            )
        return torch.device(device)
    raise DeviceError(f"--device {device}: unknown device; use cpu or cuda")


def pin_commits(recipe: Recipe, pins: dict[str, str], cache_dir: Path | None = None) -> dict[str, str]:
    """The commit of every hub parent: the one an earlier run of this build pinned, else resolved now."""
    return {
        n: pins.get(n) or resolve_commit(n, spec, cache_dir)
        for n, spec in recipe.parents.items()
        if is_repo_id(spec)
    }


def resolve_sources(
    recipe: Recipe, cache_dir: Path | None = None, commits: dict[str, str] | None = None
) -> dict[str, Source]:
    return {
        n: resolve(
            n, s, patterns=download_patterns(recipe, n), commit=(commits or {}).get(n), cache_dir=cache_dir
        )
        for n, s in recipe.parents.items()
    }


def plan_recipe(recipe: Recipe, *, cache_dir: Path | None = None) -> Plan:
    """The plan from headers only: local parents' shard headers; hub parents' cached snapshot, or else their
    safetensors metadata from the hub (headers only, nothing downloaded)."""
    headers, base_config = {}, {}
    for name, spec in recipe.parents.items():
        local = Path(spec).expanduser()
        cached = cached_snapshot(spec, cache_dir) if is_repo_id(spec) else None
        if local.is_dir() or cached is not None:
            ck = Checkpoint.open(cached or local)
            headers[name], config = ck.tensors, ck.config()
        elif is_repo_id(spec):
            headers[name], config = hub_headers(name, spec)
        else:
            raise ParentError(
                f"parent {name!r}: {spec} is not a directory; fix the path in the recipe's parents"
            )
        if name == recipe.base:
            base_config = config
    return build_plan(recipe, headers, base_config)


def _fingerprint(recipe: Recipe, files: dict[str, dict[str, str]], plan: Plan) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps([recipe.model_dump(mode="json"), files, tool_version(), FORMAT], sort_keys=True).encode()
    )
    for shard in plan.shards:
        h.update(json.dumps([[e.name, e.dtype, e.shape] for it in shard for e in it.out]).encode())
    return h.hexdigest()


def _first_pass(plan: Plan, engine: Engine, pool: ThreadPoolExecutor, window: int, progress: bool,
                bdir: BuildDir) -> dict[str, float]:  # fmt: skip
    """Distances of the threshold rules' tensors: those an earlier run logged, then the rest, each logged."""
    items = plan.threshold_items
    logged = bdir.distances()
    rs = {it.name: logged[it.name] for it in items if it.name in logged}
    todo = [it for it in items if it.name not in rs]
    prog, task = progress_bar(progress, "distances", sum(it.read_bytes for it in todo), len(todo))
    dlog = bdir.distance_log()
    try:
        with prog:
            for it, r in zip(todo, ordered_map(pool, engine.distance, todo, window), strict=True):
                rs[it.name] = r
                dlog.append(it.name, r)
                prog.update(task, advance=it.read_bytes, n=len(rs) - len(items) + len(todo))
    finally:
        dlog.close()
    return rs


def _write_shards(plan: Plan, names: list[str], todo: list[int], bdir: BuildDir, engine: Engine,
                  pool: ThreadPoolExecutor, window: int, progress: bool) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """Write shards `todo` (indices into names); returns their manifest records by shard name."""
    todo_items = [it for i in todo for it in plan.shards[i]]
    prog, task = progress_bar(progress, "merging", sum(it.write_bytes for it in todo_items), len(todo_items))
    results = ordered_map(pool, engine.compute, todo_items, window)
    out: dict[str, list[dict[str, Any]]] = {}
    n = 0
    with prog:
        for i in todo:
            with ShardWriter(bdir.root / names[i], [e for it in plan.shards[i] for e in it.out]) as w:
                for it in plan.shards[i]:
                    for e, t in zip(it.out, next(results), strict=True):
                        w.write(e.name, t)
                    n += 1
                    prog.update(task, advance=it.write_bytes, n=n)
                done = w.finish()
            out[names[i]] = [it.record(plan.rule_label(it)) for it in plan.shards[i]]
            bdir.mark_done(names[i], done, out[names[i]])
    return out


def child_config(plan: Plan) -> dict[str, Any]:
    """The base's config.json with the output dtype's quantization_config."""
    config = dict(plan.base_config)
    if plan.recipe.output.dtype == "bf16":
        config.pop("quantization_config", None)
        config["torch_dtype"] = "bfloat16"
    elif plan.recipe.output.dtype == "fp8":
        config.setdefault("quantization_config", dict(QUANTIZATION_CONFIG))
    return config


def build_child(recipe: Recipe, out_dir: Path, *, resume: bool = False, workers: int = 1, device: str = "cpu",
                progress: bool = False, cache_dir: Path | None = None,
                verify: Literal["full", "headers", "none"] = "headers") -> dict[str, Any]:  # fmt: skip
    """Build the child of `recipe` into `out_dir` and return its manifest (see the module docstring).

    Raises MergeError subclasses with one-line messages. After a kill, a crash or an OutputError (disk full), the
    same call with resume=True finishes the build, byte-identical to an uninterrupted one. Every value is checked
    finite as it passes through, so by default the finished child gets `chimera-merge verify --headers-only`
    (structure, FP8 layout, config) before it is marked complete; verify="full" also re-reads every value
    (doubles the child's reads), "none" skips it.
    """
    out_dir = Path(out_dir)
    dev = check_device(device)
    if workers < 1:
        raise MergeError(f"--workers {workers}: give at least 1")
    if dev.type == "cpu":
        # numba and its cached kernels (~1 s of CPU) load before the output directory exists, not mid-pass
        import merge.kernels  # noqa: F401
    bdir = BuildDir(out_dir, recipe.key(), resume=resume)
    ckpts: dict[str, Checkpoint] = {}
    readers = Readers()
    ours: list[str] = []  # this build's files, removed when it fails for good before finishing a shard
    threads = torch.get_num_threads()
    try:
        commits = pin_commits(recipe, bdir.pins, cache_dir)
        bdir.pin(commits)  # before any download: a resume fetches exactly these commits
        sources = resolve_sources(recipe, cache_dir, commits)
        side = side_files(recipe, {n: s.path for n, s in sources.items()})  # type: ignore[misc]
        ckpts = {n: Checkpoint.open(s.path) for n, s in sources.items()}  # type: ignore[arg-type]
        plan = build_plan(recipe, {n: c.tensors for n, c in ckpts.items()}, ckpts[recipe.base].config())
        files = {
            n: {p.name: file_fingerprint(p) for p in sorted({t.shard for t in c.tensors.values()})}
            for n, c in ckpts.items()
        }
        fingerprint = _fingerprint(recipe, files, plan)
        bdir.start(fingerprint, files)
        if bdir.complete:
            return bdir.manifest  # type: ignore[return-value]
        names = [shard_name(i, len(plan.shards)) for i in range(len(plan.shards))]
        extra = [INDEX_NAME, "config.json", *side, "README.md"]
        ours = [*names, *extra]
        engine = Engine(recipe.base, readers, dev)
        window = workers + 1
        # Parallelism is across tensors (--workers); torch's own intra-op threads on top of that oversubscribe the
        # cores and, measured on a busy 2-core machine, made each tensor 10x slower. Restored on exit.
        if dev.type == "cpu":
            torch.set_num_threads(1)
        with ThreadPoolExecutor(workers, thread_name_prefix="merge") as pool:
            records = bdir.finished_shards(names, pool)
            todo = [i for i, n in enumerate(names) if n not in records]
            check_free_space(out_dir, sum(it.write_bytes for i in todo for it in plan.shards[i]))
            if plan.threshold_items:
                apply_distances(plan, _first_pass(plan, engine, pool, window, progress, bdir))
            records |= _write_shards(plan, names, todo, bdir, engine, pool, window, progress)
        total = plan.bytes_to_write()
        write_index(
            out_dir, {e.name: names[i] for i, s in enumerate(plan.shards) for it in s for e in it.out}, total
        )
        write_json_atomic(out_dir / "config.json", child_config(plan))
        write_side_files(side, out_dir)
        parents = {n: {**s.describe(), "files": files[n]} for n, s in sources.items()}
        sums = bdir.checksums()
        manifest = build_manifest(recipe, parents, fingerprint, [r for n in names for r in records[n]],
                                  {n: sums[n] for n in names}, extra, total)  # fmt: skip
        write_atomic(out_dir / "README.md", model_card(manifest).encode())
        if verify != "none":
            verify_child(out_dir, headers_only=verify == "headers")
        bdir.finish(manifest)
        return manifest
    except (OutputError, KeyboardInterrupt):
        raise  # resumable: finished shards and the state stay
    except VerifyError as e:
        err = ParentError(
            f"the merged child failed verification: {e}; check the parents with `chimera-merge verify`"
        )
        raise _discarded(bdir, ours, err) from None
    except MergeError as e:
        raise _discarded(bdir, ours, e) from None  # a bad parent: resuming alone cannot help
    finally:
        torch.set_num_threads(threads)
        readers.close()
        for c in ckpts.values():
            c.close()


def _discarded(bdir: BuildDir, ours: list[str], e: MergeError) -> MergeError:
    """Clean up after an error that resuming alone cannot fix; the error, saying what was kept."""
    kept = bdir.discard(ours)
    if not kept:
        return e
    return type(e)(
        f"{e} (the {kept} finished shard(s) in {bdir.root} are kept: fix the cause, then rerun with --resume, "
        "or delete the directory)"
    )


__all__ = ["INDEX_NAME", "Engine", "Readers", "build_child", "check_device", "plan_recipe", "resolve_sources"]
