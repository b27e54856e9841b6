"""Running a plan: streaming reads, worker threads, the device, and the two passes.

Memory. Tensors are read one at a time with positional reads (`os.preadv`, safe from many threads) and at most
`workers + 1` finished tensors wait to be written, so peak RSS depends on the largest tensor and the number of
parents, never on the model size. Workers compute in parallel (and check every value finite: computed tensors
through their FP8 scales or sums, copied ones on their bit patterns); the main thread writes results in plan
order, one sequential write per tensor, so the child is byte-identical however many workers run.

Passes. Threshold rules first need the distance r of every tensor they match (pass 1: interpolate, compare with
the base, discard); then every shard is written (pass 2). Both passes record into the resume state.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch

from merge import mix
from merge.checkpoint import DTYPES, INDEX_NAME, Checkpoint, TensorInfo
from merge.errors import CheckpointError, DeviceError, MergeError, OutputError, ParentError, VerifyError
from merge.manifest import build_manifest, model_card, tool_version
from merge.plan import Item, Plan, apply_distances, build_plan
from merge.recipe import Recipe, is_repo_id
from merge.sources import Source, cached_snapshot, file_fingerprint, hub_headers, resolve
from merge.writer import BuildDir, ShardWriter, disk_error, shard_name, write_index, write_json_atomic

T = TypeVar("T")
R = TypeVar("R")
SIDE_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "tokenizer.model", "added_tokens.json", "vocab.json", "merges.txt", "chat_template.json")  # fmt: skip
SIDE_GLOBS = ("*.jinja", "*.py")  # chat templates; DeepSeek's remote-code modules named in config's auto_map
FP8_QUANT = {
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "weight_block_size": [128, 128],
}


class Readers:
    """Thread-safe positional reads of tensors from parent shards (one fd per shard, kept open)."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}
        self._lock = threading.Lock()

    def fd(self, path: Path) -> int:
        with self._lock:
            if path not in self._fds:
                self._fds[path] = os.open(path, os.O_RDONLY)
            return self._fds[path]

    def read(self, info: TensorInfo, into: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor's bytes as a tensor of its dtype and shape, read into `into` (uint8) when given."""
        buf = torch.empty(info.nbytes, dtype=torch.uint8) if into is None else into
        view, fd, done = memoryview(buf.numpy()), self.fd(info.shard), 0
        while done < info.nbytes:
            n = os.preadv(fd, [view[done:]], info.start + done)
            if n <= 0:
                raise CheckpointError(f"{info.shard}: truncated while reading {info.name}; re-download it")
            done += n
        return buf.view(DTYPES[info.dtype][0]).view(info.shape)

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


class Engine:
    """The arithmetic of one build on one device, over the parents' readers."""

    def __init__(self, recipe: Recipe, readers: Readers, device: torch.device) -> None:
        self.base, self.readers, self.device = recipe.base, readers, device
        self._local = threading.local()

    @property
    def ws(self) -> mix.Workspace:
        """This worker thread's scratch buffers."""
        if not hasattr(self._local, "ws"):
            self._local.ws = mix.Workspace()
        return self._local.ws

    def _read(self, info: TensorInfo, key: str) -> torch.Tensor:
        gpu = self.device.type != "cpu"
        buf = self.ws.get(key, (info.nbytes,), torch.uint8, torch.device("cpu"), pin=gpu)
        t = self.readers.read(info, buf)
        # A blocking copy: the buffer is this worker's and is refilled by its next read.
        return t.to(self.device) if gpu else t

    def _load(self, item: Item, parts: list[tuple[str, float]], key: str) -> list[mix.Part]:
        loaded: list[mix.Part] = []
        for p, w in parts:
            st = item.stored[p]
            scale = self._read(st.scale, f"{key}.{p}.s") if st.scale is not None else None
            loaded.append((w, self._read(st.weight, f"{key}.{p}.w"), scale))
        return loaded

    def _nonfinite(self, item: Item, parts: list[tuple[str, float]], loaded: list[mix.Part]) -> ParentError:
        for (p, _), (_, t, s) in zip(parts, loaded, strict=True):
            if not mix.is_finite(t) or (s is not None and not mix.is_finite(s)):
                return ParentError(
                    f"parent {p!r}: tensor {item.name} holds NaN or Inf; the checkpoint is corrupt, re-download it"
                )
        return ParentError(f"{item.name}: the interpolation overflowed float32; check the parents' values")

    def distance(self, item: Item) -> float:
        """r = ||W* - W_base|| / ||W_base|| (pass 1 of threshold rules)."""
        parts, base = item.parts(), [(self.base, 1.0)]
        loaded = self._load(item, parts, "m")
        r = mix.distance(loaded, self._load(item, base, "b"), self.ws)
        if math.isnan(r):
            raise self._nonfinite(item, parts + base, loaded + self._load(item, base, "b"))
        return r

    def compute(self, item: Item) -> list[torch.Tensor]:
        """The child's tensors for `item` (weight [, scale]) on the CPU, every value checked finite.

        A byte copy is read as stored and checked on its bit patterns (no float conversion), so NaN/Inf in a
        parent is caught here, naming parent and tensor, and the child never has to be re-read to verify values.
        """
        if item.is_copy:
            st = item.stored[item.source]  # type: ignore[index]
            raw = [
                self.readers.read(i) for i in ([st.weight, st.scale] if st.scale is not None else [st.weight])
            ]
            if not all(mix.is_finite(t) for t in raw):
                raise self._nonfinite(
                    item, [(item.source, 1.0)], [(1.0, raw[0], raw[1] if len(raw) > 1 else None)]
                )  # type: ignore[list-item]
            return raw
        parts = item.parts()
        loaded = self._load(item, parts, "m")
        out, scale = mix.merge(loaded, DTYPES[item.out[0].dtype][0], self.ws)
        if not mix.is_finite(scale if scale is not None else out):
            raise self._nonfinite(item, parts, loaded)
        return [out.cpu()] if scale is None else [out.cpu(), scale.cpu()]


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


def resolve_sources(recipe: Recipe, cache_dir: Path | None = None) -> dict[str, Source]:
    return {
        n: resolve(n, s, is_base=n == recipe.base, cache_dir=cache_dir) for n, s in recipe.parents.items()
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
    h.update(json.dumps([recipe.model_dump(mode="json"), files, tool_version()], sort_keys=True).encode())
    for shard in plan.shards:
        h.update(json.dumps([[e.name, e.dtype, e.shape] for it in shard for e in it.out]).encode())
    return h.hexdigest()


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


def _first_pass(
    plan: Plan, engine: Engine, pool: ThreadPoolExecutor, window: int, progress: bool
) -> dict[str, float]:
    items = plan.threshold_items
    prog, task = progress_bar(progress, "distances", sum(it.read_bytes for it in items), len(items))
    rs: dict[str, float] = {}
    with prog:
        for it, r in zip(items, ordered_map(pool, engine.distance, items, window), strict=True):
            rs[it.name] = r
            prog.update(task, advance=it.read_bytes, n=len(rs))
    return rs


def _write_shards(plan: Plan, names: list[str], bdir: BuildDir, engine: Engine, pool: ThreadPoolExecutor,
                  window: int, progress: bool) -> list[dict[str, Any]]:  # fmt: skip
    records: list[dict[str, Any]] = []
    todo: list[int] = []
    for i, fname in enumerate(names):
        done = bdir.shard_done(fname)
        if done is None:
            todo.append(i)
        records.extend(done or [])
    todo_items = [it for i in todo for it in plan.shards[i]]
    prog, task = progress_bar(progress, "merging", sum(it.write_bytes for it in todo_items), len(todo_items))
    results = ordered_map(pool, engine.compute, todo_items, window)
    by_shard: dict[int, list[dict[str, Any]]] = {}
    n = 0
    with prog:
        for i in todo:
            with ShardWriter(bdir.root / names[i], [e for it in plan.shards[i] for e in it.out]) as w:
                for it in plan.shards[i]:
                    for e, t in zip(it.out, next(results), strict=True):
                        w.write(e.name, t)
                    n += 1
                    prog.update(task, advance=it.write_bytes, n=n)
                size = w.finish()
            by_shard[i] = [it.record(plan.rule_label(it)) for it in plan.shards[i]]
            bdir.mark_done(names[i], size, by_shard[i])
    order = {it.name: k for k, it in enumerate(plan.items)}
    records = records + [r for recs in by_shard.values() for r in recs]
    return sorted(records, key=lambda r: order[r["name"]])


def side_files(base_dir: Path) -> list[str]:
    """Files copied from the base: generation config, tokenizer, chat template, remote-code modules."""
    names = {n for n in SIDE_FILES if (base_dir / n).is_file()}
    return sorted(names | {p.name for g in SIDE_GLOBS for p in base_dir.glob(g) if p.is_file()})


def _write_side_files(plan: Plan, base_dir: Path, out: Path) -> None:
    config = dict(plan.base_config)
    dtype = plan.recipe.output.dtype
    if dtype == "bf16":
        config.pop("quantization_config", None)
        config["torch_dtype"] = "bfloat16"
    elif dtype == "fp8":
        config.setdefault("quantization_config", dict(FP8_QUANT))
    write_json_atomic(out / "config.json", config)
    try:
        for n in side_files(base_dir):
            shutil.copyfile(base_dir / n, out / n)
    except OSError as e:
        raise OutputError(
            f"{out}: cannot copy {n} from the base ({e.strerror}); free space and --resume"
        ) from None


def build_child(recipe: Recipe, out_dir: Path, *, resume: bool = False, workers: int = 1, device: str = "cpu",
                progress: bool = False, cache_dir: Path | None = None,
                verify: Literal["full", "headers", "none"] = "headers") -> dict[str, Any]:  # fmt: skip
    """Build the child of `recipe` into `out_dir` and return its manifest (see the module docstring).

    Raises MergeError subclasses with one-line messages. After a kill or an OutputError (disk full), the same
    call with resume=True finishes the build, byte-identical to an uninterrupted one. Every value is checked
    finite as it passes through (computed and copied tensors alike), so by default the finished child gets
    `chimera-merge verify --headers-only` (structure, FP8 layout, config) before it is marked complete;
    verify="full" also re-reads every value (doubles the child's reads), "none" skips it.
    """
    out_dir = Path(out_dir)
    dev = check_device(device)
    if workers < 1:
        raise MergeError(f"--workers {workers}: give at least 1")
    sources = resolve_sources(recipe, cache_dir)
    ckpts = {n: Checkpoint.open(s.path) for n, s in sources.items()}  # type: ignore[arg-type]
    plan = build_plan(recipe, {n: c.tensors for n, c in ckpts.items()}, ckpts[recipe.base].config())
    files = {
        n: {p.name: file_fingerprint(p) for p in sorted({t.shard for t in c.tensors.values()})}
        for n, c in ckpts.items()
    }
    fingerprint = _fingerprint(recipe, files, plan)
    bdir = BuildDir(out_dir, fingerprint, resume=resume)
    if bdir.complete:
        return json.loads((out_dir / "merge-manifest.json").read_text())
    names = [shard_name(i, len(plan.shards)) for i in range(len(plan.shards))]
    ours = [*names, "config.json", "README.md", *side_files(sources[recipe.base].path)]  # type: ignore[arg-type]
    readers = Readers()
    engine = Engine(recipe, readers, dev)
    window = workers + 1
    # Parallelism is across tensors (--workers); torch's own intra-op threads on top of that oversubscribe the
    # cores and, measured on a busy 2-core machine, made each tensor 10x slower. Restored on exit.
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="merge") as pool:
            if plan.threshold_items:
                rs = bdir.distances
                if rs is None:
                    rs = _first_pass(plan, engine, pool, window, progress)
                    bdir.save_distances(rs)
                apply_distances(plan, rs, mix.normalize)
            records = _write_shards(plan, names, bdir, engine, pool, window, progress)
        weight_map = {e.name: names[i] for i, shard in enumerate(plan.shards) for it in shard for e in it.out}
        total = plan.bytes_to_write()
        write_index(out_dir, weight_map, total)
        _write_side_files(plan, sources[recipe.base].path, out_dir)  # type: ignore[arg-type]
        parents = {n: {**s.describe(), "files": files[n]} for n, s in sources.items()}
        manifest = build_manifest(recipe, parents, fingerprint, records, names, total)
        try:
            (out_dir / "README.md").write_text(model_card(manifest))
        except OSError as e:
            raise disk_error(e, out_dir / "README.md") from None
        if verify != "none":
            _verify(out_dir, plan.base_config, headers_only=verify == "headers")
        bdir.finish(manifest)
        return manifest
    except (OutputError, KeyboardInterrupt):
        raise  # resumable: finished shards and the state stay
    except VerifyError as e:
        bdir.discard(ours)
        raise ParentError(
            f"the merged child failed verification: {e}; check the parents with `chimera-merge verify`"
        ) from None
    except MergeError:
        bdir.discard(ours)  # a bad parent: resuming cannot help
        raise
    finally:
        torch.set_num_threads(threads)
        readers.close()
        for c in ckpts.values():
            c.close()


def _verify(out_dir: Path, config: dict[str, Any], *, headers_only: bool) -> None:
    """`chimera-merge verify` on the child (DeepSeek-V2/V3 configs); other architectures get the index check."""
    from merge.verify import ARCHITECTURES, verify_checkpoint

    if set(config.get("architectures") or []) & ARCHITECTURES:
        verify_checkpoint(out_dir, headers_only=headers_only)
    else:
        Checkpoint.open(out_dir).close()


__all__ = ["INDEX_NAME", "Engine", "Readers", "build_child", "check_device", "plan_recipe", "resolve_sources"]
