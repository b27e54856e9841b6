"""One real `chimera-serve` per test session (an engine start costs ~40-60 s on 2 cores).

The model: the demo child, built here by the merge stage from merge/recipes/mini-chimera.yaml (the lab's
mini-v3 + mini-r1), or CHIMERA_TEST_MODEL. The tests of a template that opens `<think>` in the prompt run on a
tiny random model with DeepSeek-V3.1's template (tests/serve/tiny_model.py, test_serve_zzz_template.py); the lab's
mini-r1 / mini-v3 get their own servers in test_serve_zzz_lab.py. The server
runs with small limits so the 429, keepalive and disconnect paths are reachable quickly; the context is
the model's own up to 1024 tokens.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from benchmarks._common import free_port

REPO = Path(__file__).resolve().parents[2]
API_KEY = "test-key-0123456789abcdef"
MAX_NUM_SEQS = 3
MAX_QUEUED = 2
MAX_MODEL_LEN = 1024  # or the model's max_position_embeddings if smaller
LAB = REPO / "merge/lab/models"
DEMO_RECIPE = REPO / "merge/recipes/mini-chimera.yaml"
MAX_BODY_BYTES = 64 * 1024
START_TIMEOUT_S = 900  # an idle 2-core machine needs ~1 min; a loaded one many times that
DRAIN_GRACE_S = 8
MAX_OUTPUT_MARGIN = 60  # the advertised max_output_length is the context less this (below long_request's ask)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("CHIMERA_TEST_MODEL")
    if chosen:
        return Path(chosen)
    out = tmp_path_factory.mktemp("demo-child") / "mini-chimera"
    build = [sys.executable, "-m", "merge.cli", "build", str(DEMO_RECIPE), "--out", str(out), "--no-progress"]
    subprocess.run(build, cwd=REPO, check=True, capture_output=True, timeout=300)
    return out


@dataclass
class RunningServer:
    base_url: str
    model: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    tiny: bool  # tests/serve/tiny_model.py: DeepSeek-V3.1's template, thinking off unless thinking=True
    max_model_len: int
    model_dir: Path

    def client(self, **kw: object) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=180, **kw
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def serve_command(model: Path, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "chimera_serve.cli", "--model", str(model), "--port", str(port), *extra]


@contextlib.contextmanager
def running_server(
    model: Path, log_dir: Path, *extra: str, tiny: bool = False, env: dict[str, str | None] | None = None
) -> Iterator[RunningServer]:
    """A `chimera-serve` subprocess on a free port, ready to serve; SIGTERM (then kill) on exit.

    While the model loads, the port must already answer: /ready 503 "loading" and /health 200 "loading", at once.
    `env` adds variables (None removes one); by default the KV cache is 1 GiB, enough for these models.
    """
    log_path = log_dir / "server.log"
    positions = json.loads((model / "config.json").read_text()).get("max_position_embeddings", MAX_MODEL_LEN)
    max_model_len = min(MAX_MODEL_LEN, positions)
    args = (
        "--served-model-name", "chimera-test", "--api-key", API_KEY, "--max-model-len", str(max_model_len),
        "--enforce-eager", "--max-num-seqs", str(MAX_NUM_SEQS), "--max-queued", str(MAX_QUEUED),
        "--max-body-bytes", str(MAX_BODY_BYTES), "--keepalive-interval-s", "0.2", "--drain-grace-s", str(DRAIN_GRACE_S),
        "--price-prompt", "0.0000005", "--price-completion", "0.000002", "--hugging-face-id", "chimera/test",
        "--max-output-length", str(max_model_len - MAX_OUTPUT_MARGIN), *extra,
    )  # fmt: skip
    full_env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONWARNINGS": "ignore"}
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value

    def launch() -> RunningServer:
        port = free_port()
        with log_path.open("wb") as out:
            cmd = serve_command(model, port, *args)
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=full_env)
        return RunningServer(
            f"http://127.0.0.1:{port}", "chimera-test", proc, log_path, tiny, max_model_len, model
        )

    srv = launch()
    proc = srv.proc
    try:
        started = time.monotonic()
        seen_loading = False
        retries = 3  # another process on this machine may take the free port before the server binds it
        while True:
            if proc.poll() is not None:
                if "Address already in use" in srv.log() and retries:
                    retries -= 1
                    srv = launch()
                    proc = srv.proc
                    continue
                pytest.fail(f"chimera-serve exited with {proc.returncode}:\n{srv.log()[-3000:]}")
            try:
                ready = httpx.get(f"{srv.base_url}/ready", timeout=10)
                if ready.status_code == 200:
                    break
                assert ready.status_code == 503 and ready.json()["reason"] == "loading", ready.text
                health = httpx.get(f"{srv.base_url}/health", timeout=10)  # "ok" if the load ended in between
                assert health.status_code == 200 and health.json()["status"] in ("loading", "ok"), health.text
                seen_loading = True
            except httpx.TransportError:
                pass  # the interpreter and vLLM's import, before the port is bound
            if time.monotonic() - started > START_TIMEOUT_S:
                pytest.fail(f"chimera-serve not ready after {START_TIMEOUT_S} s:\n{srv.log()[-3000:]}")
            time.sleep(0.5)
        assert seen_loading, "the server was never seen loading: /ready must answer while the model loads"
        yield srv
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(model_dir, tmp_path_factory.mktemp("serve-log")) as srv:
        yield srv
