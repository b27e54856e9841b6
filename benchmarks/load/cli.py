"""`chimera-load URL [...]`: load-test an OpenAI-compatible chat endpoint; figures to JSON + Markdown + PNG.

    chimera-load http://127.0.0.1:8000 --concurrency 32 --requests 500
    chimera-load http://127.0.0.1:8000 --rate 4 --arrivals poisson --duration 300
    chimera-load http://127.0.0.1:8000 --sweep --slo-ttft 2 --slo-tpot 0.1 --target-tokens-per-day 1e9
    chimera-load https://router.example/v1 --model m --prompts prompts.jsonl --api-key "$KEY"

Exit codes: 0 done; 2 bad arguments; 3 endpoint unusable (unreachable, 401, not OpenAI-compatible);
4 run stopped early (server gone, Ctrl-C: partial results written, marked); 5 the server's /metrics token
counters differ from the client's counts. Every failure prints one line, without a traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from benchmarks.load.config import (
    Concurrency,
    JsonlWorkload,
    LabWorkload,
    LoadConfig,
    Rate,
    Slo,
    Sweep,
    SyntheticWorkload,
    parse_lengths,
)
from benchmarks.load.crosscheck import mismatch_line
from benchmarks.load.errors import ConfigError, CrossCheckError, LoadError, RunAborted
from benchmarks.load.progress import level_line, make_display
from benchmarks.load.report import write_report
from benchmarks.load.runner import run_load

API_KEY_ENV = "CHIMERA_LOAD_API_KEY"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chimera-load",
        description=__doc__.split("\n")[0],
        epilog="Exit codes: 0 ok, 2 bad arguments, 3 endpoint unusable, 4 partial run, 5 cross-check differs.",
    )
    p.add_argument("url", help="base URL of the server, e.g. http://127.0.0.1:8000 (a trailing /v1 is fine)")
    p.add_argument("--model", help="model name (default: the first of GET /v1/models)")
    p.add_argument("--api-key", help=f"bearer key (default: ${API_KEY_ENV})")
    load = p.add_argument_group("load (one of)").add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=int, help="fixed number of streams (default 8)")
    load.add_argument("--rate", type=float, help="requests per second (open loop)")
    load.add_argument("--sweep", nargs="?", const="concurrency", choices=["concurrency", "rate"],
                      help="rising load until saturation; the highest load meeting the SLO")  # fmt: skip
    p.add_argument(
        "--arrivals", choices=["constant", "poisson"], default="poisson", help="for --rate and rate sweeps"
    )
    p.add_argument(
        "--levels", help="sweep concurrencies, e.g. 1,2,4,8 (default: doubling to --max-concurrency)"
    )
    p.add_argument("--max-concurrency", type=int, default=256, help="sweep ceiling (default 256)")
    p.add_argument("--all-levels", action="store_true", help="sweep: run every level, even past saturation")
    p.add_argument("--saturation-gain", type=float, default=0.1,
                   help="sweep: a doubled load gaining less output tok/s than this share is saturated (default "
                        "0.1; raise it on a noisy shared machine)")  # fmt: skip
    p.add_argument(
        "--rate-fractions", help="rate sweep: fractions of the saturating rate (default .25,.5,.75,.9,1)"
    )
    w = p.add_argument_group("workload")
    w.add_argument("--prompts", default="synthetic", help="synthetic (default) | lab | FILE.jsonl")
    w.add_argument("--input-len", default="128", help="N | uniform:LO:HI | lognormal:MEDIAN:SIGMA[:CAP]")
    w.add_argument("--output-len", default="128", help="max_tokens per request, same forms as --input-len")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument(
        "--tokenizer", type=Path, help="tokenizer.json or model dir: exact synthetic input lengths"
    )
    w.add_argument("--lab-n", type=int, default=200, help="lab prompts (default 200)")
    w.add_argument("--max-tokens", type=int, help="for lab and file prompts without their own")
    b = p.add_argument_group("bounds (per level)")
    b.add_argument("--requests", type=int, default=200, help="at most this many requests (default 200)")
    b.add_argument("--duration", type=float, default=120.0, help="no request starts after this many s (120)")
    b.add_argument(
        "--drain", type=float, default=60.0, help="then wait this long for requests in flight (60)"
    )
    b.add_argument("--warmup", type=int, default=2, help="unmeasured requests first (default 2)")
    b.add_argument("--timeout", type=float, default=600.0, help="per request, seconds (default 600)")
    s = p.add_argument_group("SLO")
    s.add_argument("--slo-ttft", type=float, default=2.0, help="p99 TTFT bound, s (default 2)")
    s.add_argument("--slo-tpot", type=float, default=0.1, help="p99 TPOT bound, s (default 0.1)")
    s.add_argument("--slo-errors", type=float, default=0.0, help="largest error share (default 0)")
    r = p.add_argument_group("requests and report")
    r.add_argument("--temperature", type=float, default=0.0)
    r.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=None,
                   help="vLLM's ignore_eos (default: on for synthetic prompts, off otherwise)")  # fmt: skip
    r.add_argument("--extra-body", help="JSON object merged into every request body")
    r.add_argument(
        "--target-tokens-per-day", type=float, help="report the replicas this many tokens/day need"
    )
    r.add_argument("--no-crosscheck", action="store_true", help="skip the /metrics token cross-check")
    r.add_argument(
        "--out", type=Path, help="results directory (default benchmarks/results, else load-results)"
    )
    r.add_argument("--name", help="file stem (default load-<model>-<UTC time>)")
    r.add_argument("--label", default="", help="free text for the report (e.g. the server's command)")
    r.add_argument("--quiet", action="store_true", help="no progress display")
    return p


def _floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{what} {text!r}: give comma-separated numbers") from None


def build_config(a: argparse.Namespace) -> LoadConfig:
    """The validated configuration of a command line (raises ConfigError / ValidationError)."""
    workload: Any
    if a.prompts == "synthetic":
        workload = SyntheticWorkload(input_len=parse_lengths(a.input_len), output_len=parse_lengths(a.output_len),
                                     seed=a.seed, tokenizer=a.tokenizer)  # fmt: skip
    elif a.prompts == "lab":
        workload = LabWorkload(n=a.lab_n, **({"max_tokens": a.max_tokens} if a.max_tokens else {}))
    else:
        workload = JsonlWorkload(
            path=Path(a.prompts), **({"output_len": a.max_tokens} if a.max_tokens else {})
        )
    shape: Any
    if a.rate is not None:
        shape = Rate(rate=a.rate, arrivals=a.arrivals, seed=a.seed)
    elif a.sweep:
        levels = _floats(a.levels, "--levels")
        fractions = _floats(a.rate_fractions, "--rate-fractions")
        shape = Sweep(over=a.sweep, levels=tuple(int(x) for x in levels) if levels else None,
                      max_concurrency=a.max_concurrency, arrivals=a.arrivals, run_all_levels=a.all_levels,
                      saturation_gain=a.saturation_gain,
                      **({"rate_fractions": fractions} if fractions else {}))  # fmt: skip
    else:
        shape = Concurrency(concurrency=a.concurrency or 8)
    try:
        extra = json.loads(a.extra_body) if a.extra_body else {}
    except ValueError:
        raise ConfigError(f"--extra-body {a.extra_body!r} is not JSON") from None
    return LoadConfig(
        url=a.url, api_key=a.api_key or os.environ.get(API_KEY_ENV) or None, model=a.model,
        workload=workload, shape=shape, slo=Slo(ttft_p99_s=a.slo_ttft, tpot_p99_s=a.slo_tpot,
        max_error_rate=a.slo_errors), max_requests=a.requests, max_duration_s=a.duration, drain_s=a.drain,
        warmup_requests=a.warmup, request_timeout_s=a.timeout, temperature=a.temperature,
        ignore_eos=a.ignore_eos, extra_body=extra, crosscheck=not a.no_crosscheck,
        target_tokens_per_day=a.target_tokens_per_day, label=a.label,
    )  # fmt: skip


def _validation_line(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(x) for x in err["loc"] if not str(x).startswith(("function-", "tagged-")))
    return f"{where}: {err['msg']}" if where else err["msg"]


def _default_stem(model: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9.-]+", "-", model).strip("-") or "endpoint"
    return f"load-{slug}-{dt.datetime.now(dt.UTC).strftime('%Y%m%d-%H%M%S')}"


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        config = build_config(a)
    except ValidationError as e:
        return _fail(ConfigError(_validation_line(e)))
    except LoadError as e:
        return _fail(e)
    display = make_display(a.quiet)
    try:
        result = run_load(config, display=display, handle_sigint=True)
    except ValidationError as e:
        return _fail(ConfigError(_validation_line(e)))
    except LoadError as e:
        return _fail(e)
    finally:
        if display is not None:
            display.close()
    out = a.out or (
        Path("benchmarks/results") if Path("benchmarks/results").is_dir() else Path("load-results")
    )
    try:
        written = write_report(result, out, a.name or _default_stem(result.endpoint["model"]))
    except OSError as e:
        return _fail(LoadError(f"cannot write the results to {out}: {e.strerror or e}"))
    _print_summary(result, written)
    paths = ", ".join(str(p) for p in written["paths"].values())
    if result.partial:
        return _fail(RunAborted(f"{result.abort_reason}; partial results in {paths} (marked partial)"))
    if result.crosscheck and result.crosscheck.get("checked") and not result.crosscheck["exact"]:
        return _fail(CrossCheckError(f"{mismatch_line(result.crosscheck)}; results in {paths}"))
    return 0


def _print_summary(result: Any, written: dict[str, Any]) -> None:
    for s in result.levels:
        print(level_line(s))
    c = result.capacity
    if c is not None:
        extra = (
            f", {c['replicas']} replicas for {c['target_tokens_per_day']:.3g}/day"
            if c.get("replicas")
            else ""
        )
        print(f"tokens/day at {c['load']}: {c['tokens_per_day']:,.0f} ({c['output_tok_s']:.1f} tok/s){extra}")
    elif result.sweep is not None:
        print("no load met the SLO")
    x = result.crosscheck
    if x and x.get("checked"):
        print(
            "cross-check: server /metrics token counters "
            + ("equal the client's counts" if x["exact"] else "DIFFER")
        )
    if written["plot_note"]:
        print(written["plot_note"])
    print("results: " + ", ".join(str(p) for p in written["paths"].values()))


def _fail(e: LoadError) -> int:
    print(f"chimera-load: error: {e}", file=sys.stderr)
    return e.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
