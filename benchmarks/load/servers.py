"""Real servers for the benchmarks and tests of chimera-load: chimera-serve, vLLM's OpenAI server and the fake
endpoint, each a subprocess on a free port, stopped (SIGTERM, then kill) when its context ends; and the lab's
children built by the merge stage. Not part of the tool a user points at an endpoint.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks._common import free_port, stop_process

REPO = Path(__file__).resolve().parents[2]
LAB_MODELS = REPO / "merge" / "lab" / "models"
START_TIMEOUT_S = 600


@dataclass
class Server:
    """A running server process and where to reach it."""

    name: str
    proc: subprocess.Popen[bytes]
    base_url: str
    command: list[str]
    log_path: Path

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def stop(self) -> None:
        stop_process(self.proc)


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


@contextlib.contextmanager
def _running(name: str, cmd: list[str], port: int, ready_path: str, log_dir: Path) -> Iterator[Server]:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{port}.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    with log_path.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    srv = Server(name, proc, f"http://127.0.0.1:{port}", cmd, log_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while _get(srv.base_url + ready_path) != 200:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{srv.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {START_TIMEOUT_S} s:\n{srv.log_tail()}")
            time.sleep(1)
        yield srv
    finally:
        srv.stop()


def chimera_serve(
    model: Path, log_dir: Path, *extra: str, name: str = "bench", api_key: str | None = None
) -> contextlib.AbstractContextManager[Server]:
    """`chimera-serve` on `model`, served as `name` (max_model_len 256: the lab models' context)."""
    port = free_port()
    cmd = [sys.executable, "-m", "chimera_serve.cli", "--model", str(model), "--port", str(port),
           "--served-model-name", name, "--max-model-len", "256", "--enforce-eager", *extra]  # fmt: skip
    if api_key:
        cmd += ["--api-key", api_key]
    return _running("chimera-serve", cmd, port, "/ready", log_dir)


def vllm_server(
    model: Path, log_dir: Path, *extra: str, name: str = "bench"
) -> contextlib.AbstractContextManager[Server]:
    """vLLM's own OpenAI server on `model`, with its DeepSeek-R1 reasoning parser."""
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--port", str(port),
           "--served-model-name", name, "--max-model-len", "256", "--enforce-eager",
           "--reasoning-parser", "deepseek_r1", "--disable-uvicorn-access-log", *extra]  # fmt: skip
    return _running("vllm", cmd, port, "/v1/models", log_dir)


@contextlib.contextmanager
def fake_server(*args: str) -> Iterator[Server]:
    """benchmarks.load.fake_server with `args` (e.g. "--itl-ms", "5"), on a port it picks itself."""
    cmd = [sys.executable, "-m", "benchmarks.load.fake_server", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("listening on "):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"fake server did not start: {line}{proc.stdout.read().decode()[-2000:]}")
    srv = Server("fake", proc, f"http://127.0.0.1:{int(line.split()[-1])}", cmd, Path(os.devnull))
    try:
        yield srv
    finally:
        srv.stop()
        proc.stdout.close()


def build_lambda_child(lam: float, out: Path) -> Path:
    """A child with every tensor mixed, mini-r1 at weight `lam` (the think sweep's `all` recipe)."""
    from benchmarks.think_sweep import sweep_recipe
    from merge.execute import build_child

    if not (out / "config.json").is_file():
        build_child(sweep_recipe("all", lam, LAB_MODELS / "mini-v3", LAB_MODELS / "mini-r1"), out)
    return out
