"""Scenario 1: schemathesis against the server's own OpenAPI document, every check, all phases, a fixed seed.

Must hold: no server error (`not_a_server_error`) and no status the document does not list
(`status_code_conformance`). Every other check is reported with what it found, grouped by reason: for
`positive_data_acceptance` (a schema-valid request refused) the reason is the server's own 400 message, which
says what a JSON schema cannot (a prompt longer than the context, a tool message without its call, ...).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.reliability.harness import API_KEY, SMALL, Outcome, serving

NUMBER = re.compile(r"(?<=messages\.)\d+|(?<![\w.{,-])-?\d{2,}\b")  # message indexes, numbers of 2+ digits
WHY_POSITIVE = (
    "`positive_data_acceptance` is reported, not required: the document gives each field's type and range, "
    "not the rules across fields and the model that the server enforces with a 400 naming the field (a "
    "`tool` message needs the `tool_call_id` of an earlier call; `n` > 1 needs sampling; a prompt must fit "
    "the context). Each reason below is the server's own message."
)
MUST = {"not_a_server_error": "0 server errors", "status_code_conformance": "0 undocumented statuses"}


def st_command(base_url: str, examples: int, seed: int, report: Path) -> list[str]:
    st = Path(sys.executable).parent / "st"
    return [
        str(st), "run", f"{base_url}/openapi.json", "--checks", "all", "--max-examples", str(examples),
        "--seed", str(seed), "--phases", "examples,coverage,fuzzing,stateful", "--no-shrink",
        "--continue-on-failure", "--workers", "1", "--request-timeout", "120",
        "--generation-database", "none",
        "--header", f"Authorization: Bearer {API_KEY}", "--suppress-health-check", "all", "--no-color",
        "--report", "ndjson", "--report-ndjson-path", str(report),
    ]  # fmt: skip


def schemathesis(model: Path, logs: Path, examples: int, seed: int) -> Outcome:
    report = logs / "schemathesis.ndjson"
    with serving(model, logs, *SMALL) as srv:
        cmd = st_command(srv.base_url, examples, seed, report)
        t0 = time.monotonic()
        run = subprocess.run(
            cmd, capture_output=True, text=True, timeout=7200, env={**os.environ, "NO_COLOR": "1"}
        )
        wall = time.monotonic() - t0
    (logs / "schemathesis.out").write_text(run.stdout + run.stderr)
    if not report.is_file():
        raise RuntimeError(
            f"schemathesis wrote no report (exit {run.returncode}): {run.stderr.strip()[-300:]}"
        )
    cases, phases = read_report(report)
    per_check: dict[str, Counter[str]] = {}
    reasons: dict[str, Counter[str]] = {}
    for case in cases:
        for check in case["checks"]:
            per_check.setdefault(check["name"], Counter())[check["status"]] += 1
            if check["status"] == "failure":
                reasons.setdefault(check["name"], Counter())[reason(check, case)] += 1
    statuses = Counter(str(c["status"]) for c in cases)
    failed = {name: c["failure"] for name, c in sorted(per_check.items())}
    figures = {
        "command": shlex.join(cmd).replace(API_KEY, "$KEY"), "seconds": round(wall, 1),
        "schemathesis exit code": run.returncode, "phases": phases, "test cases": len(cases),
        "responses by status": dict(sorted(statuses.items())),
        "failures by check": failed,
    }  # fmt: skip
    checks = {f"{text} ({name})": failed.get(name, 0) == 0 for name, text in MUST.items()}
    checks["0 responses with a 5xx status"] = not any(s.startswith("5") for s in statuses)
    top = {name: dict(r.most_common(12)) for name, r in sorted(reasons.items())}
    details = {
        "note": WHY_POSITIVE,
        "failure_reasons": top,
        "checks": {k: dict(v) for k, v in per_check.items()},
    }
    return Outcome(figures, checks, details)


def read_report(path: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The test cases in schemathesis' NDJSON report (operation, status, body, checks), and phase statuses."""
    cases, phases = [], {}
    with path.open() as f:
        for line in f:
            event = json.loads(line)
            if "PhaseFinished" in event:
                phase = event["PhaseFinished"]
                phases[phase["phase"]["name"]] = phase["status"]
            rec = event.get("ScenarioFinished", {}).get("recorder") or {}
            for case_id, checks in rec.get("checks", {}).items():  # none in a skipped scenario
                response = (rec["interactions"].get(case_id) or {}).get("response") or {}
                body = base64.b64decode(response.get("content", {}).get("$base64", "")).decode(
                    errors="replace"
                )
                cases.append({"operation": rec["label"], "status": response.get("status_code"), "body": body,
                              "checks": checks})  # fmt: skip
    return cases, phases


def reason(check: dict[str, Any], case: dict[str, Any]) -> str:
    """Why a check failed, in words that group alike failures (numbers in the server's messages as N)."""
    failure = check.get("failure_info", {}).get("failure", {})
    if check["name"] == "positive_data_acceptance":  # the server's 400 says why it refused
        try:
            text = json.loads(case["body"])["error"]["message"]
        except (ValueError, KeyError, TypeError):
            text = case["body"][:120]
        return f"{case['operation']}: {NUMBER.sub('N', text)}"
    message = failure.get("message", "")
    lines = [ln for ln in message.splitlines() if ln.startswith("Invalid component")] or message.splitlines()[
        :1
    ]
    return f"{case['operation']}: {failure.get('title', '')}: {(lines or [''])[0][:160]}".rstrip(": ")
