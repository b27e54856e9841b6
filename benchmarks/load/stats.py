"""A level's figures from its requests: latency distributions, throughput, goodput, thinking, errors.

Definitions (as vLLM's `bench serve` defines them where it has them, so the two can be compared):
  output tok/s   completion tokens of successful requests / the level's wall time (first send to last end)
  steady tok/s   the same inside the window where the full load was applied (see `steady_tokens`); tokens/day
                 is projected from this one, since ramp-up and drain are not what a loaded server sustains
  TPOT           per request, (e2e - TTFT) / (completion tokens - 1)
  ITL            every gap between token-bearing events, pooled over requests
  goodput        successful requests whose own TTFT and TPOT are within the SLO's bounds, per second (and their
                 tokens per second)
  think rate     share of successful responses that reasoned (reasoning deltas or an inline <think> block)
Reasoning tokens come from `usage.completion_tokens_details.reasoning_tokens`; a server that does not report
them is counted by reasoning events (one token each, usually), and the report says which was used.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import numpy as np

from benchmarks.load.client import RequestResult
from benchmarks.load.config import Slo
from benchmarks.load.scheduler import LevelRun
from benchmarks.load.workload import answer_of

QUANTILES = {"p50": 50, "p90": 90, "p99": 99}


def dist(values: Any) -> dict[str, float] | None:
    """mean, p50, p90, p99 (numpy's linear interpolation) and n; None for no values."""
    a = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=float)
    if a.size == 0:
        return None
    qs = np.percentile(a, list(QUANTILES.values()))
    return {
        "mean": float(a.mean()),
        **{k: float(q) for k, q in zip(QUANTILES, qs, strict=True)},
        "n": int(a.size),
    }


def steady_tokens(results: list[RequestResult], window: tuple[float, float]) -> float | None:
    """Output tokens per second inside `window`: each request's tokens spread evenly from its first token to
    its end. None when the window is too short to mean anything (under 1 s)."""
    lo, hi = window
    if hi - lo < 1.0:
        return None
    tokens = 0.0
    for r in results:
        if not r.ok or r.ttft is None:
            continue
        a, b = r.start + r.ttft, r.end
        if b <= a:  # all tokens at once
            tokens += r.output_tokens if lo <= b <= hi else 0
            continue
        overlap = min(b, hi) - max(a, lo)
        if overlap > 0:
            tokens += r.output_tokens * overlap / (b - a)
    return tokens / (hi - lo)


def within_slo(r: RequestResult, slo: Slo) -> bool:
    """A successful request whose TTFT and TPOT are within the SLO's bounds (counts toward goodput)."""
    if not r.ok or r.ttft is None or r.ttft > slo.ttft_p99_s:
        return False
    tpot = r.tpot
    return tpot is None or tpot <= slo.tpot_p99_s


def summarize(run: LevelRun, slo: Slo) -> dict[str, Any]:
    """Every figure of one level, as JSON-ready data."""
    rs = run.results
    ok = [r for r in rs if r.ok]
    cancelled = sum(r.error_kind == "cancelled" for r in rs)
    attempted = len(rs) - cancelled  # a request the run cancelled did not get an answer either way
    failed = len(rs) - len(ok) - cancelled
    wall = (max(r.end for r in rs) - min(r.start for r in rs)) if rs else 0.0
    completion = sum(r.output_tokens for r in ok)
    reasoning = [r.reasoning_tokens if r.reasoning_tokens is not None else r.reasoning_chunks for r in ok]
    good = [r for r in ok if within_slo(r, slo)]
    steady = steady_tokens(rs, run.steady)
    load = run.load
    out: dict[str, Any] = {
        "load": {"kind": load.kind, "value": load.value, "arrivals": load.arrivals, "label": load.label},
        "requests": len(rs),
        "ok": len(ok),
        "errors": failed,
        "cancelled": cancelled,
        "error_rate": failed / attempted if attempted else 0.0,
        "errors_by_kind": dict(
            Counter(r.error_kind for r in rs if r.error_kind and r.error_kind != "cancelled")
        ),
        "first_errors": list(dict.fromkeys(r.error for r in rs if r.error))[:5],
        "stopped_by": run.stopped_by,
        "partial": run.partial,
        "abort_reason": run.abort_reason,
        "late_starts": run.late_starts,
        "wall_s": wall,
        "prompt_tokens": sum(r.prompt_tokens or 0 for r in ok),
        "completion_tokens": completion,
        "reasoning_tokens": sum(reasoning),
        "answer_tokens": completion - sum(reasoning),
        "tokens_source": _source([r.completion_tokens is not None for r in ok]),
        "reasoning_source": _source([r.reasoning_tokens is not None for r in ok]),
        "output_tok_s": completion / wall if wall > 0 else 0.0,
        "steady_output_tok_s": steady,
        "requests_s": len(ok) / wall if wall > 0 else 0.0,
        "goodput_requests_s": len(good) / wall if wall > 0 else 0.0,
        "goodput_tok_s": sum(r.output_tokens for r in good) / wall if wall > 0 else 0.0,
        "goodput_share": len(good) / attempted if attempted else 0.0,
        "ttft_s": dist(r.ttft for r in ok if r.ttft is not None),
        "ttfa_s": dist(r.ttfa for r in ok if r.ttfa is not None),
        "tpot_s": dist(t for r in ok if (t := r.tpot) is not None),
        "itl_s": dist(np.fromiter(itertools.chain.from_iterable(r.itl for r in ok), dtype=float)),
        "e2e_s": dist(r.end - r.start for r in ok),
        "think_rate": sum(r.think for r in ok) / len(ok) if ok else None,
        "mean_output_tokens": completion / len(ok) if ok else None,
        "mean_reasoning_tokens": sum(reasoning) / len(ok) if ok else None,
        "mean_answer_tokens": (completion - sum(reasoning)) / len(ok) if ok else None,
        "accuracy": _accuracy(ok),
    }
    out["slo"] = slo_verdict(out, slo)
    return out


def _source(flags: list[bool]) -> str:
    if flags and all(flags):
        return "usage"
    return "events" if not any(flags) else "usage+events"


def _accuracy(ok: list[RequestResult]) -> float | None:
    """Share of answers equal to the expected text (prompts that carry one, answers kept)."""
    scored = [r for r in ok if r.expected is not None and r.text is not None]
    if not scored:
        return None
    return sum(answer_of(r.text or "") == r.expected for r in scored) / len(scored)


def slo_verdict(s: dict[str, Any], slo: Slo) -> dict[str, Any]:
    """Whether a level met the SLO: p99 TTFT, p99 TPOT and the error rate within bounds (and it finished)."""
    ttft = s["ttft_s"]["p99"] if s["ttft_s"] else None
    tpot = s["tpot_s"]["p99"] if s["tpot_s"] else None
    checks = {
        "ttft_p99_ok": ttft is not None and ttft <= slo.ttft_p99_s,
        "tpot_p99_ok": tpot is None or tpot <= slo.tpot_p99_s,
        "error_rate_ok": s["error_rate"] <= slo.max_error_rate,
    }
    return {"met": all(checks.values()) and not s["partial"] and s["ok"] > 0, **checks}
