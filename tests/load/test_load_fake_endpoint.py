"""chimera-load over real HTTP against the canned-token endpoint (benchmarks/load/fake_server.py) and against
endpoints that are wrong on purpose: unreachable, 401, not OpenAI, dying mid-run. No model needed."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from benchmarks._common import free_port
from benchmarks.load import Concurrency, Fixed, LoadConfig, Rate, Sweep, SyntheticWorkload, run_load
from benchmarks.load.cli import main
from benchmarks.load.servers import REPO, fake_server

SMALL = SyntheticWorkload(input_len=Fixed(value=8), output_len=Fixed(value=20))


def metric(base: str, name: str) -> float:
    text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
    return float(re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M).group(1))


def test_reasoning_stream_with_keepalives_counts_exactly() -> None:
    with fake_server("--itl-ms", "5", "--reasoning", "6", "--keepalive") as srv:
        cfg = LoadConfig(url=srv.base_url, workload=SMALL, shape=Concurrency(concurrency=4), max_requests=24)
        res = run_load(cfg)
    s = res.levels[0]
    assert (s["ok"], s["errors"]) == (24, 0) and not res.partial
    assert (
        s["completion_tokens"] == 24 * 20
        and s["reasoning_tokens"] == 24 * 6
        and s["answer_tokens"] == 24 * 14
    )
    assert s["reasoning_source"] == "usage" and s["think_rate"] == 1.0
    # The answer starts 6 tokens after the first token (a stalled client may read both at once: >=).
    rs = res.runs[0].results
    assert all(r.ttfa >= r.ttft for r in rs) and any(r.ttfa > r.ttft for r in rs)
    assert s["itl_s"]["n"] == 24 * 19
    x = res.crosscheck
    assert x["checked"] and x["exact"], x
    assert res.endpoint["server_kind"] == "chimera-serve"  # the fake exposes chimera_* counters
    tok_s = s["steady_output_tok_s"] or s["output_tok_s"]  # a run under 1 s has no steady window
    assert res.capacity["tokens_per_day"] == pytest.approx(86400 * tok_s)


def test_five_hundred_concurrent_streams() -> None:
    with fake_server("--itl-ms", "20") as srv:
        wl = SyntheticWorkload(input_len=Fixed(value=4), output_len=Fixed(value=50))
        cfg = LoadConfig(url=srv.base_url, workload=wl, shape=Concurrency(concurrency=500), max_requests=500,
                         warmup_requests=0, crosscheck=False)  # fmt: skip
        res = run_load(cfg)
        peak = metric(srv.base_url, "fake_peak_streams")
    s = res.levels[0]
    assert s["ok"] == 500 and s["completion_tokens"] == 500 * 50
    assert peak >= 500  # the server saw all 500 streams open at once


def test_poisson_rate_and_sweep() -> None:
    with fake_server("--itl-ms", "2") as srv:
        rate = run_load(LoadConfig(url=srv.base_url, workload=SMALL, max_requests=40,
                                   shape=Rate(rate=40.0, arrivals="poisson", seed=3)))  # fmt: skip
        sw = run_load(LoadConfig(url=srv.base_url, workload=SMALL, max_requests=30, crosscheck=False,
                                 shape=Sweep(levels=(1, 2, 4)), target_tokens_per_day=1e9))  # fmt: skip
        rs = run_load(LoadConfig(url=srv.base_url, workload=SMALL, max_requests=20, crosscheck=False,
                                 shape=Sweep(over="rate", max_concurrency=4, rate_fractions=(0.5, 1.0))))  # fmt: skip
    s = rate.levels[0]
    assert s["ok"] == 40 and s["load"]["label"] == "poisson rate 40/s"
    assert 0.5 < s["requests_s"] / 40 < 1.5  # ~40 requests/s offered, about that served
    assert [lv["load"]["value"] for lv in sw.levels] == [1, 2, 4]
    assert sw.sweep["best"] is not None and sw.capacity["replicas"] >= 1
    assert sw.levels[2]["output_tok_s"] > 1.5 * sw.levels[0]["output_tok_s"]  # the fake scales with streams
    probe, half, full = rs.levels  # the throughput probe at max_concurrency, then fractions of its rate
    assert probe["probe"] and probe["load"]["label"] == "concurrency 4"
    assert [half["load"]["value"], full["load"]["value"]] == pytest.approx(
        [0.5, 1.0] * np.array(probe["requests_s"])
    )
    assert rs.sweep["saturation"]["peak_load"] == "concurrency 4" and rs.capacity is not None


def test_cli_writes_json_markdown_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with fake_server("--itl-ms", "1") as srv:
        rc = main([srv.base_url, "--concurrency", "2", "--requests", "10", "--input-len", "5", "--output-len",
                   "10", "--out", str(tmp_path), "--name", "run", "--quiet", "--label", "fake run"])  # fmt: skip
    assert rc == 0
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["command"].startswith("python") and data["machine"]["nproc"] and data["started_utc"]
    assert data["levels"][0]["ok"] == 10 and data["crosscheck"]["exact"]
    md = (tmp_path / "run.md").read_text()
    assert "# chimera-load: fake run" in md and "Exact agreement" in md and "Tokens/day" in md
    assert (tmp_path / "run.png").stat().st_size > 10_000
    assert "results:" in capsys.readouterr().out


def test_counters_that_disagree_fail_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with fake_server("--itl-ms", "1", "--miscount", "2") as srv:
        rc = main([srv.base_url, "--concurrency", "2", "--requests", "5", "--output-len", "10", "--out",
                   str(tmp_path), "--name", "lying", "--quiet", "--warmup", "0"])  # fmt: skip
    assert rc == 5
    assert "chimera completion_tokens +10" in one_line_error(capsys)  # 5 responses x 2 tokens
    assert "DIFFERENCES" in (tmp_path / "lying.md").read_text()


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("chimera-load: error: ")
    return err


def test_unreachable_url(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    port = free_port()  # bound and released: nothing listens there
    assert main([f"http://127.0.0.1:{port}", "--quiet", "--out", str(tmp_path)]) == 3
    assert "cannot reach" in one_line_error(capsys)
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written


def test_wrong_api_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with fake_server("--api-key", "right-key-0123456789") as srv:
        assert main([srv.base_url, "--api-key", "wrong-key", "--quiet", "--out", str(tmp_path)]) == 3
        assert "refused the request (401)" in one_line_error(capsys)
        ok = run_load(
            LoadConfig(url=srv.base_url, api_key="right-key-0123456789", workload=SMALL, max_requests=3)
        )
    assert ok.levels[0]["ok"] == 3


@contextlib.contextmanager
def plain_http_server(tmp_path: Path) -> Iterator[str]:
    """Python's static file server: HTTP, but not OpenAI."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


def test_not_an_openai_endpoint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with plain_http_server(tmp_path) as url:
        assert main([url, "--quiet", "--out", str(tmp_path / "out")]) == 3
        assert "not an OpenAI-compatible endpoint" in one_line_error(capsys)
        assert main([url, "--model", "m", "--quiet", "--out", str(tmp_path / "out")]) == 3
        assert "POST /v1/chat/completions: HTTP 501" in one_line_error(capsys)


def test_server_dying_mid_run_keeps_partial_results(tmp_path: Path) -> None:
    """A real process crash (os._exit) after 40 requests; the CLI as users run it, in its own process."""
    with fake_server("--itl-ms", "5", "--die-after", "40") as srv:
        cmd = [sys.executable, "-m", "benchmarks.load.cli", srv.base_url, "--concurrency", "8", "--requests",
               "400", "--output-len", "30", "--out", str(tmp_path), "--name", "dying", "--quiet"]  # fmt: skip
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 4, out.stderr
    err = out.stderr.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "went away mid-run" in err and "marked partial" in err
    data = json.loads((tmp_path / "dying.json").read_text())
    lv = data["levels"][0]
    assert data["partial"] and lv["partial"] and 30 <= lv["ok"] <= 40 and lv["errors"] >= 10
    assert data["capacity"] is None  # no capacity figure from a cut run
    assert "**PARTIAL RESULTS**" in (tmp_path / "dying.md").read_text()
