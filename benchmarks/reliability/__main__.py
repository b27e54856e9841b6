"""`python -m benchmarks.reliability [--quick] [--only NAMES]`: run the scenarios, write the figures."""

from __future__ import annotations

import argparse
import hashlib
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks._common import build_demo_child, markdown_table, write_results
from benchmarks.load.servers import REPO
from benchmarks.reliability import scenarios
from benchmarks.reliability.harness import Outcome, adopt_orphans
from benchmarks.reliability.schema import schemathesis

SEED = 18


@dataclass(frozen=True)
class Plan:
    examples: int  # schemathesis examples per operation
    hangups: int
    warmup: int  # whole streams, then as many hang-ups, before the RSS baseline
    saturation_s: float
    sigterm_streams: int
    drain_grace_s: float = 20.0


FULL = Plan(examples=200, hangups=1000, warmup=100, saturation_s=60.0, sigterm_streams=50)
QUICK = Plan(examples=8, hangups=100, warmup=20, saturation_s=10.0, sigterm_streams=10)
TITLES = {
    "schemathesis": "1. schemathesis against the server's OpenAPI document",
    "hangups": "2. streams that hang up at random points",
    "saturation": "3. twice the capacity",
    "sigterm": "4. SIGTERM with streams in flight",
    "engine_kill": "5. the engine killed under load",
}


def run(name: str, model: Path, logs: Path, plan: Plan) -> Outcome:
    rng = random.Random(f"{SEED}-{name}")  # one seeded stream per scenario: --only reproduces the full run's
    logs.mkdir(parents=True)
    if name == "schemathesis":
        return schemathesis(model, logs, plan.examples, SEED)
    if name == "hangups":
        return scenarios.hangups(model, logs, plan.hangups, plan.warmup, rng)
    if name == "saturation":
        return scenarios.saturation(model, logs, plan.saturation_s, rng)
    if name == "sigterm":
        return scenarios.sigterm(model, logs, plan.sigterm_streams, plan.drain_grace_s, rng)
    return scenarios.engine_kill(model, logs, rng)


def cell(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}: {cell(x)}" for k, x in v.items()) or "-"
    if isinstance(v, list):
        return ", ".join(cell(x) for x in v) or "-"
    return "-" if v is None else str(v).replace("|", "\\|")


def section(name: str, out: Outcome) -> str:
    rows = [[k, f"`{v}`" if k == "command" else cell(v)] for k, v in out.figures.items()]
    held = "\n".join(f"- {'held' if ok else '**MISSED**'}: {check}" for check, ok in out.checks.items())
    text = f"## {TITLES[name]}\n\n{markdown_table(['figure', 'value'], rows)}\n\nMust hold:\n{held}\n"
    if "note" in out.details:
        text += f"\n{out.details['note']}\n"
    for check, reasons in out.details.get("failure_reasons", {}).items():
        text += f"\n`{check}` failures by reason (most common first):\n\n"
        text += markdown_table(["reason", "test cases"], [[cell(r), n] for r, n in reasons.items()]) + "\n"
    return text


def summary(model: Path, code: str, outcomes: dict[str, Outcome], missed: list[str]) -> str:
    """The Markdown: what ran, a line per scenario, then each scenario's figures and checks."""
    rows = [[TITLES[n], f"{sum(o.checks.values())} of {len(o.checks)}"] for n, o in outcomes.items()]
    return (
        f"chimera-serve (`python -m chimera_serve.cli`, code {code}) on the demo child ({model.name}) with "
        f"vLLM's CPU engine, a server of its own per scenario, real HTTP clients and signals; seed {SEED}. "
        "The machine was shared with other work: times are this machine's under that load.\n\n"
        + markdown_table(["scenario", "must-hold figures held"], rows)
        + f"\n\nMissed: {len(missed)}"
        + "".join(f"\n- {m}" for m in missed)
        + "\n\n"
        + "\n".join(section(n, o) for n, o in outcomes.items())
    )


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()


def code_version() -> str:
    """The commit, and whether the server served had uncommitted changes (then the hash of its files)."""
    head = git("rev-parse", "--short", "HEAD")
    if not git("status", "--porcelain", "--", "chimera_serve"):
        return head
    files = sorted(p for p in (REPO / "chimera_serve").rglob("*.py") if "__pycache__" not in p.parts)
    digest = hashlib.sha256(b"".join(f"{p.relative_to(REPO)}\0".encode() + p.read_bytes() for p in files))
    return f"{head} + uncommitted chimera_serve/ (*.py sha256 {digest.hexdigest()[:12]})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reliability", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes, for a developer (a few minutes)")
    p.add_argument("--only", help=f"comma-separated scenarios of {','.join(TITLES)}")
    p.add_argument(
        "--model", type=Path, default=REPO / "build/mini-chimera", help="demo child (built if missing)"
    )
    a = p.parse_args(argv)
    names = a.only.split(",") if a.only else list(TITLES)
    if unknown := [n for n in names if n not in TITLES]:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(TITLES)}")
    plan = QUICK if a.quick else FULL
    model = a.model if (a.model / "config.json").is_file() else build_demo_child(a.model)
    adopt_orphans()
    logs = Path(tempfile.mkdtemp(prefix="reliability-"))
    print(f"server logs and schemathesis reports under {logs}")
    outcomes: dict[str, Outcome] = {}
    for name in names:
        print(f"\n== {TITLES[name]}", flush=True)
        t0 = time.monotonic()
        try:
            out = run(name, model, logs / name, plan)
        except Exception as e:  # a scenario that cannot finish misses its figures; the others still run
            out = Outcome({"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"}, {"ran": False})
        out.figures["seconds, server start included"] = round(time.monotonic() - t0, 1)
        outcomes[name] = out
        for k, v in out.figures.items():
            print(f"  {k}: {cell(v)}")
        for check, ok in out.checks.items():
            print(f"  {'held  ' if ok else 'MISSED'} {check}")
    missed = [
        f"{name}: {check}" for name, out in outcomes.items() for check, ok in out.checks.items() if not ok
    ]
    stem = "reliability" if not a.quick and names == list(TITLES) else "reliability-dev"
    data = {"code": code_version(), "model": str(model), "seed": SEED, "plan": asdict(plan),
            "scenarios": {n: asdict(o) for n, o in outcomes.items()}, "missed": missed}  # fmt: skip
    _, md = write_results(stem, data, summary(model, data["code"], outcomes, missed))
    print(
        f"\nwrote {md}"
        + (f"; MISSED {len(missed)}: " + "; ".join(missed) if missed else "; every figure held")
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
