"""Shared helpers for benchmark scripts: measured subprocesses, page-cache control, machine facts, results.

Every benchmark result we commit says which command made it, on which machine, and when; `write_results`
puts those next to the figures. Peak RSS and CPU time are those of one command (from `wait4`'s rusage via a
tiny launcher, so they are exact, cover the command's whole life unlike polling, and do not inherit the
benchmark script's own RSS), and wall time is measured around the same fork/exec/wait.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Measured:
    """One finished subprocess: wall seconds, CPU seconds (user + system, all its threads), peak resident set
    size (bytes), the 1-minute load average when it started (others' work on a shared machine), exit code,
    output."""

    cmd: list[str]
    wall_s: float
    cpu_s: float
    peak_rss: int
    load_before: float
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> Measured:
        """Raise with the command's last output lines when it failed."""
        if self.returncode != 0:
            tail = "\n".join((self.stderr or self.stdout).splitlines()[-20:])
            raise RuntimeError(f"command failed ({self.returncode}): {shlex.join(self.cmd)}\n{tail}")
        return self


# Linux carries a process's peak RSS across fork and exec (the child's ru_maxrss starts at the forking
# parent's RSS), so a benchmark script holding torch would inflate every child's figure. A tiny launcher
# forks the command from a ~10 MB interpreter and reports the command's own rusage and wall time.
_LAUNCHER = """
import json, os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(sys.argv[1], "w") as f:
    json.dump({"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "maxrss_kib": ru.ru_maxrss}, f)
sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""


def run_measured(
    cmd: list[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None
) -> Measured:
    """Run `cmd` to completion; its wall time, CPU time and peak RSS (its own and its waited-for children's)."""
    import tempfile

    full_env = {**os.environ, **(env or {})}
    load = os.getloadavg()[0]
    with tempfile.NamedTemporaryFile("r", suffix=".json") as stats:
        proc = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, stats.name, *cmd],
            env=full_env,
            cwd=cwd,
            capture_output=True,
            text=True,
            errors="replace",
        )
        raw = stats.read()
    if not raw:  # the launcher itself failed
        return Measured(cmd, 0.0, 0.0, 0, load, proc.returncode or 1, proc.stdout, proc.stderr)
    st = json.loads(raw)
    peak = st["maxrss_kib"] * 1024  # ru_maxrss is in KiB on Linux
    return Measured(cmd, st["wall"], st["cpu"], peak, load, proc.returncode, proc.stdout, proc.stderr)


def drop_caches() -> bool:
    """sync, then drop the page cache (needs root). Returns False where that is not permitted."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def machine(disk_path: str | Path = ".") -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, RAM, the disk under `disk_path`, versions, load."""
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in _read("/proc/cpuinfo").splitlines()
            if ln.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem_kib = next(
        (int(ln.split()[1]) for ln in _read("/proc/meminfo").splitlines() if ln.startswith("MemTotal")), 0
    )
    usage = shutil.disk_usage(disk_path)
    dev = _block_device(Path(disk_path))
    rotational = _read(f"/sys/block/{dev}/queue/rotational").strip() if dev else ""
    info: dict[str, Any] = {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "ram_gib": round(mem_kib / 2**20, 1),
        "disk": {
            "path": str(Path(disk_path).resolve()),
            "device": dev or "unknown",
            "rotational": {"0": False, "1": True}.get(rotational),
            "size_gib": round(usage.total / 2**30, 1),
            "free_gib": round(usage.free / 2**30, 1),
        },
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_1_5_15": list(os.getloadavg()),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return info


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _block_device(path: Path) -> str | None:
    """The /sys/block name holding `path` (e.g. 'vda'), from /proc/self/mountinfo's longest matching mount."""
    best, dev = -1, None
    real = str(path.resolve())
    for ln in _read("/proc/self/mountinfo").splitlines():
        left, _, right = ln.partition(" - ")
        mnt, source = left.split()[4], [*right.split(), "", ""][1]
        if (
            (real == mnt or real.startswith(mnt.rstrip("/") + "/"))
            and len(mnt) > best
            and source.startswith("/dev/")
        ):
            best, dev = len(mnt), source.removeprefix("/dev/")
    if dev is None:
        return None
    # A partition (vda1, nvme0n1p2) belongs to its disk in /sys/block.
    while dev and not Path(f"/sys/block/{dev}").exists():
        dev = dev[:-1]
    return dev or None


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-markdown table; floats get 3 significant decimals."""

    def cell(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    """How this script was started, as a user would type it (`python -m pkg.mod ...` when run with -m)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = spec.name.removesuffix(".__main__") if spec is not None else None  # a package run as `-m pkg`
    head = ["python", "-m", name] if name else ["python", sys.argv[0]]
    return shlex.join([*head, *sys.argv[1:]])


def write_results(
    stem: str,
    data: dict[str, Any],
    summary_md: str,
    *,
    disk_path: str | Path = ".",
    results_dir: Path = RESULTS_DIR,
) -> tuple[Path, Path]:
    """Write `<stem>.json` and `<stem>.md` with the command, machine and UTC date; return both paths."""
    results_dir.mkdir(parents=True, exist_ok=True)
    header = {
        "command": command_line(),
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(disk_path),
    }
    json_path, md_path = results_dir / f"{stem}.json", results_dir / f"{stem}.md"
    json_path.write_text(json.dumps({**header, **data}, indent=2) + "\n")
    m = header["machine"]
    gpus = f"GPUs {', '.join(m['gpus'])}, " if m.get("gpus") else ""
    md_path.write_text(
        f"# {stem}\n\n"
        f"- command: `{header['command']}`\n"
        f"- date: {header['date_utc']}\n"
        f"- machine: {m['cpu']}, {m['nproc']} cores, {m['ram_gib']} GiB RAM, disk {m['disk']['device']} "
        f"({'rotational' if m['disk']['rotational'] else 'non-rotational'} per the kernel, "
        f"{m['disk']['size_gib']} GiB), Linux {m['kernel']}, Python {m['python']}, torch {m.get('torch', '-')}, "
        f"{gpus}load average at the end {m['loadavg_1_5_15']}\n\n{summary_md.strip()}\n"
    )
    return json_path, md_path


def gib(n: int | float) -> float:
    return n / 2**30


# Servers the benchmarks start ------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
DEMO_RECIPE = REPO / "merge" / "recipes" / "mini-chimera.yaml"


def free_port() -> int:
    """A loopback port free right now (another process may still take it before the server binds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 60) -> None:
    """SIGTERM (chimera-serve drains its streams), then SIGKILL once `grace_s` has passed."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def build_demo_child(out: Path) -> Path:
    """The demo child (merge/recipes/mini-chimera.yaml) built by the merge stage into `out`; a finished build
    of the same recipe there is reused (`--resume`)."""
    cmd = [sys.executable, "-m", "merge.cli", "build", str(DEMO_RECIPE), "--out", str(out), "--resume"]
    subprocess.run([*cmd, "--no-progress"], cwd=REPO, check=True, capture_output=True, timeout=600)
    return out
