"""A shard counts as finished only once it is durable: the real build's system calls, traced with strace, show
for every shard fsync(shard) -> rename(partial -> final) -> fsync(directory) -> the state naming it fsync'd and
renamed into place; and the manifest (the completion marker) written the same way, last."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from merge_helpers import ROOT, write_recipe

from merge.state import MANIFEST_NAME, STATE_NAME
from merge.writer import partial_path


def _strace_works() -> bool:
    if shutil.which("strace") is None:
        return False
    return subprocess.run(["strace", "-qq", "-o", "/dev/null", "true"], capture_output=True).returncode == 0


_CALL = re.compile(r"^(\d+)\s+(?:<\.\.\. (\w+) resumed>(.*)|(\w+)\((.*))$")


def syscalls(log: Path) -> list[tuple[str, str]]:
    """('fsync', path) and ('rename', 'old -> new') in the order the calls started, fds mapped to paths through
    openat/close (threads share one fd table; a call split by another thread is joined by pid)."""
    fds: dict[str, str] = {}
    pending: dict[str, tuple[str, str]] = {}
    events: list[tuple[str, str]] = []
    slots: dict[str, int] = {}
    for line in log.read_text().splitlines():
        m = _CALL.match(line)
        if m is None:
            continue
        pid = m.group(1)
        if m.group(2) is not None:  # "<... openat resumed>, ...) = 5"
            name, args = pending.pop(pid, (m.group(2), ""))
            rest = args + m.group(3)
        else:
            name, rest = m.group(4), m.group(5)
            if rest.endswith("<unfinished ...>"):
                pending[pid] = (name, rest.removesuffix("<unfinished ...>"))
                if name in ("fsync", "rename", "renameat", "renameat2"):
                    slots[pid] = len(events)
                    events.append(("", ""))  # placed where the call started
                continue
        result = rest.rsplit("=", 1)[-1].split()[0] if "=" in rest else ""
        strings = re.findall(r'"((?:[^"\\]|\\.)*)"', rest)
        event: tuple[str, str] | None = None
        if name == "openat" and result.isdigit() and strings:
            fds[result] = strings[0]
        elif name == "close":
            fds.pop(rest.split(")")[0].strip(), None)
        elif name == "fsync":
            event = ("fsync", fds.get(rest.split(")")[0].strip(), "?"))
        elif name.startswith("rename") and len(strings) >= 2:
            event = ("rename", f"{strings[0]} -> {strings[1]}")
        if event is not None:
            if pid in slots:
                events[slots.pop(pid)] = event
            else:
                events.append(event)
    return [e for e in events if e[0]]


@pytest.mark.skipif(not _strace_works(), reason="needs strace (and ptrace permission)")
def test_a_shard_is_durable_before_it_counts_as_finished(parents: dict[str, Path], tmp_path: Path) -> None:
    r = write_recipe(tmp_path / "r.yaml", {"name": "d", "base": "a", "parents": {"a": str(parents["a"]), "b": str(parents["b"])},
                                           "rules": [{"select": "routed_experts", "weights": {"a": 0.5, "b": 0.5}}],
                                           "output": {"shard_size": "300KB"}})  # fmt: skip
    out, log = tmp_path / "out", tmp_path / "strace.log"
    cmd = [sys.executable, "-m", "merge.cli", "build", str(r), "--out", str(out), "--no-progress"]
    trace = ["strace", "-f", "-qq", "-s", "4096", "-e", "trace=openat,close,fsync,rename,renameat,renameat2"]
    p = subprocess.run([*trace, "-o", str(log), *cmd], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    ev = syscalls(log)
    state, root = str(out / STATE_NAME), str(out)
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) >= 2
    for shard in shards:
        partial = str(partial_path(shard))
        renamed = ev.index(("rename", f"{partial} -> {shard}"))
        assert ("fsync", partial) in ev[:renamed], f"{shard.name} renamed before its bytes were fsync'd"
        synced = ev.index(("fsync", root), renamed)  # the rename itself made durable
        state_at = next(
            i for i, e in enumerate(ev) if i > synced and e[0] == "rename" and e[1].endswith(state)
        )
        tmp = ev[state_at][1].split(" -> ")[0]
        assert ("fsync", tmp) in ev[synced:state_at], (
            f"state naming {shard.name} renamed before it was fsync'd"
        )
    manifest_at = next(i for i, e in enumerate(ev) if e[0] == "rename" and e[1].endswith(MANIFEST_NAME))
    last_shard = max(ev.index(("rename", f"{partial_path(s)} -> {s}")) for s in shards)
    assert (
        last_shard < manifest_at
        and ("fsync", ev[manifest_at][1].split(" -> ")[0]) in ev[last_shard:manifest_at]
    )
