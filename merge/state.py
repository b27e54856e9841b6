"""The output directory of one build and its resume state, kept the way a database keeps its log.

Files (all but the manifest hidden while the build runs):
  `.chimera-merge-state.json`      format, recipe key, the hub parents' pinned commits, the build fingerprint
                                   (recipe + parents' files + plan), the parents' file fingerprints, and every
                                   finished shard with its size, sha256 and manifest records
  `.chimera-merge-distances.jsonl` the threshold rules' distances r, one line per tensor as it is computed
  `merge-manifest.json`            the completion marker: written last, then the state and the log are removed

Crash safety. A shard counts as finished only once it is fsync'd, renamed, its directory fsync'd, and the state
naming it (with its checksum) is itself fsync'd and renamed into place. A resume re-reads every finished shard
and compares its sha256 with the state's: a shard damaged after the fact (a crash before its pages reached the
disk, bit rot) is rebuilt, with a warning naming it. The distance log is flushed line by line (a killed process
loses nothing) and fsync'd at least once a second (a power cut loses at most that second); a torn last line is
dropped on resume. Old builds (another state or manifest format) are refused with the fix: delete and rebuild.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from merge.checkpoint import INDEX_NAME
from merge.errors import OutputError
from merge.writer import Finished, disk_error, fsync_dir, write_json_atomic

log = logging.getLogger("merge")
FORMAT = 2  # of the state, the manifest and the fingerprint; 1 had no checksums, pins or distance log
STATE_NAME = ".chimera-merge-state.json"
DISTANCES_NAME = ".chimera-merge-distances.jsonl"
MANIFEST_NAME = "merge-manifest.json"
SYNC_SECONDS = 1.0
_READ = 16 << 20


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 16 MiB blocks (hashlib releases the GIL: threads hash in parallel)."""
    h, buf = hashlib.sha256(), bytearray(_READ)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def check_free_space(root: Path, needed: int) -> None:
    """Refuse to start writing `needed` bytes to a file system that has less free."""
    free = shutil.disk_usage(root).free
    if free < needed:
        raise OutputError(
            f"{root}: the build still has {needed / 1e9:.2f} GB to write but its file system has "
            f"{free / 1e9:.2f} GB free; free space or choose another --out"
        )


class DistanceLog:
    """Append-only log of distances r (JSON lines), flushed per line, fsync'd at least every SYNC_SECONDS."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = path.open("ab")
        self._synced = time.monotonic()

    def append(self, name: str, r: float) -> None:
        try:
            self._f.write((json.dumps({"name": name, "r": r}) + "\n").encode())
            self._f.flush()
            if time.monotonic() - self._synced >= SYNC_SECONDS:
                self.sync()
        except OSError as e:
            raise disk_error(e, self.path) from None

    def sync(self) -> None:
        os.fsync(self._f.fileno())
        self._synced = time.monotonic()

    def close(self) -> None:
        if not self._f.closed:
            self.sync()
            self._f.close()


def read_distances(path: Path) -> dict[str, float]:
    """The logged distances; a torn or garbled tail (the process died mid-line) is cut off the file."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    out: dict[str, float] = {}
    good = 0
    for line in data.splitlines(keepends=True):
        try:
            rec = json.loads(line)
            r = float(rec["r"])
            if not line.endswith(b"\n") or math.isnan(r):
                raise ValueError(line)
        except (ValueError, KeyError, TypeError):
            break
        out[str(rec["name"])] = r
        good += len(line)
    if good != len(data):
        with path.open("r+b") as f:
            f.truncate(good)
    return out


class BuildDir:
    """One build's output directory: opened (and checked) before the parents are resolved, so that a resume
    reuses the hub commits the build began with; `start` then binds it to one fingerprint."""

    def __init__(self, root: Path, recipe_key: str, *, resume: bool) -> None:
        self.root = root
        self.recipe_key = recipe_key
        self.state: dict[str, Any] = {"format": FORMAT, "recipe": recipe_key, "pins": {}, "fingerprint": None,
                                      "files": {}, "shards": {}}  # fmt: skip
        self.manifest: dict[str, Any] | None = None
        self.complete = False  # a finished build of this recipe (reused when the fingerprint matches)
        self.created = False  # this run made the directory
        self._open(resume)

    def _load(self, path: Path, what: str) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            data = None
        if not isinstance(data, dict):
            raise OutputError(f"{path}: unreadable {what}; delete {self.root} and build again")
        if data.get("format") != FORMAT:
            raise OutputError(
                f"{self.root}: holds a build made by an older chimera-merge (no shard checksums); "
                f"delete {self.root} and build again"
            )
        return data

    def _open(self, resume: bool) -> None:
        root, state_path, manifest = self.root, self.root / STATE_NAME, self.root / MANIFEST_NAME
        if root.exists() and not root.is_dir():
            raise OutputError(f"{root}: exists and is not a directory; choose another --out")
        if not root.exists():
            try:
                root.mkdir(parents=True)
            except OSError as e:
                raise disk_error(e, root) from None
            self.created = True
        elif state_path.exists():
            state = self._load(state_path, "build state")
            if state.get("recipe") != self.recipe_key:
                raise OutputError(
                    f"{root}: holds an unfinished build of another recipe; delete it or choose another --out"
                )
            if not resume:
                raise OutputError(
                    f"{root}: holds an unfinished build of this recipe; add --resume to finish it"
                )
            self.state = state
            for p in [*root.glob(".*.partial"), *root.glob(".*.tmp")]:
                p.unlink()
        elif manifest.exists():
            m = self._load(manifest, "manifest")
            if not resume or m.get("recipe_key") != self.recipe_key:
                raise OutputError(
                    f"{root}: already holds a finished build; choose another --out or delete it"
                )
            self.manifest, self.complete = m, True
        elif any(root.iterdir()):
            raise OutputError(
                f"{root}: exists, is not empty and is not a chimera-merge build; choose a new --out"
            )

    @property
    def pins(self) -> dict[str, str]:
        """Hub commits the build is bound to (by an earlier run of it), by parent name."""
        if self.manifest is not None:
            return {n: p["commit"] for n, p in self.manifest["parents"].items() if "commit" in p}
        return dict(self.state["pins"])

    def pin(self, commits: dict[str, str]) -> None:
        """Record the hub parents' commits before anything is downloaded."""
        if not self.complete:
            self.state["pins"] = commits
            self._save()

    def start(self, fingerprint: str, files: dict[str, dict[str, str]]) -> None:
        """Bind the directory to one build; refuse when the parents' files changed since it began."""
        if self.complete:
            if self.manifest is not None and self.manifest.get("fingerprint") != fingerprint:
                raise OutputError(
                    f"{self.root}: already holds a finished build of other parent files; choose another --out "
                    "or delete it"
                )
            return
        old = self.state["fingerprint"]
        if old is not None and old != fingerprint:
            changed = next(
                (f"{p}/{f}" for p, fs in files.items() for f, v in fs.items()
                 if self.state["files"].get(p, {}).get(f) != v), "the plan",
            )  # fmt: skip
            raise OutputError(
                f"{self.root}: the parents changed since this build began ({changed}); restore them, or "
                f"delete {self.root} and build again"
            )
        self.state["fingerprint"], self.state["files"] = fingerprint, files
        self._save()

    def distances(self) -> dict[str, float]:
        return read_distances(self.root / DISTANCES_NAME)

    def distance_log(self) -> DistanceLog:
        try:
            return DistanceLog(self.root / DISTANCES_NAME)
        except OSError as e:
            raise disk_error(e, self.root / DISTANCES_NAME) from None

    def finished_shards(
        self, names: Iterable[str], pool: ThreadPoolExecutor
    ) -> dict[str, list[dict[str, Any]]]:
        """Manifest records of the shards a previous run finished and that still hold the bytes it wrote
        (size, then sha256, hashed in parallel). A damaged one is dropped from the state and rebuilt."""
        listed = [n for n in names if n in self.state["shards"]]

        def intact(name: str) -> bool:
            s, path = self.state["shards"][name], self.root / name
            return path.is_file() and path.stat().st_size == s["size"] and file_sha256(path) == s["sha256"]

        out: dict[str, list[dict[str, Any]]] = {}
        for name, ok in zip(listed, pool.map(intact, listed), strict=True):
            if ok:
                out[name] = self.state["shards"][name]["records"]
            else:
                log.warning("%s: damaged since it was finished (size or sha256 differs); rebuilding it", name)
                del self.state["shards"][name]
                (self.root / name).unlink(missing_ok=True)
        return out

    def mark_done(self, name: str, done: Finished, records: list[dict[str, Any]]) -> None:
        self.state["shards"][name] = {"size": done.size, "sha256": done.sha256, "records": records}
        self._save()

    def checksums(self) -> dict[str, str]:
        return {n: s["sha256"] for n, s in self.state["shards"].items()}

    def _save(self) -> None:
        write_json_atomic(self.root / STATE_NAME, self.state, indent=None)

    def finish(self, manifest: dict[str, Any]) -> None:
        """Write the manifest (the completion marker), then drop the state and the distance log."""
        write_json_atomic(self.root / MANIFEST_NAME, manifest)
        (self.root / STATE_NAME).unlink(missing_ok=True)
        (self.root / DISTANCES_NAME).unlink(missing_ok=True)
        fsync_dir(self.root)
        self.complete = True

    def discard(self, names: list[str]) -> int:
        """After an error that resuming alone cannot fix. Finished shards are never deleted (hours of work, and
        the cause may be fixable: a parent restored, a disk replaced): they and the state stay, and their number
        is returned. Without any, this build's files go, and the directory if this run made it."""
        for p in [*self.root.glob(".*.partial"), *self.root.glob(".*.tmp")]:
            p.unlink()
        if self.state["shards"]:
            return len(self.state["shards"])
        for n in [*names, STATE_NAME, DISTANCES_NAME, INDEX_NAME]:
            (self.root / n).unlink(missing_ok=True)
        if self.created and not any(self.root.iterdir()):
            self.root.rmdir()
        return 0
