"""schemathesis against the running server's own OpenAPI document: no 5xx, no status it does not document.

A short run here (a few examples per operation, fixed seed); `benchmarks/reliability.py` runs the long one
and records its figures. `positive_data_acceptance` is left out: the document cannot say everything the
server refuses with a 400 for good reason (a prompt longer than the context, `tool_choice` without tools).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import API_KEY, RunningServer

pytestmark = pytest.mark.engine
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
    "response_schema_conformance,negative_data_rejection,missing_required_header,unsupported_method,ignored_auth"
)


def schemathesis_command(base_url: str, examples: int, seed: int, report: Path) -> list[str]:
    st = Path(sys.executable).parent / "st"
    return [
        str(st), "run", f"{base_url}/openapi.json", "--checks", CHECKS, "--max-examples", str(examples),
        "--seed", str(seed), "--no-shrink", "--workers", "1", "--request-timeout", "120",
        "--header", f"Authorization: Bearer {API_KEY}", "--generation-database", "none",
        "--phases", "examples,coverage,fuzzing", "--report", "junit", "--report-junit-path", str(report),
        "--suppress-health-check", "all", "--no-color",
    ]  # fmt: skip


def test_schemathesis_finds_no_server_error_and_no_undocumented_status(
    server: RunningServer, tmp_path: Path
) -> None:
    report = tmp_path / "junit.xml"
    r = subprocess.run(
        schemathesis_command(server.base_url, examples=8, seed=18, report=report),
        capture_output=True, text=True, timeout=1500, env={**os.environ, "NO_COLOR": "1"}, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "tests" in report.read_text()  # it ran and reported
