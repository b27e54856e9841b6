"""Sweep decisions: which loads to try, when throughput has saturated, which load is the best that met the
SLO (the most goodput; the highest load meeting it is reported too), and what that means in tokens per day
and replicas. Pure functions over the levels' summaries.

Saturation: load doubles from level to level; a level "gains" when its output tok/s exceeds the best of all
lower levels by `saturation_gain` (10%: doubling the load for less is diminishing returns). Two levels in a row without a gain confirm saturation (one alone may
be noise on a shared machine); the saturation point is the level of peak throughput.
"""

from __future__ import annotations

import math
from typing import Any

from benchmarks.load.config import Sweep

CONFIRM_LEVELS = 2  # levels in a row without a gain that confirm saturation
OVERLOAD_ERROR_RATE = 0.5  # beyond this share of failed requests, higher loads tell nothing more


def concurrency_levels(shape: Sweep) -> list[int]:
    """The sweep's concurrencies: the explicit ones, or 1, 2, 4, ... up to `max_concurrency` (included)."""
    if shape.levels:
        return list(shape.levels)
    levels, c = [], 1
    while c < shape.max_concurrency:
        levels.append(c)
        c *= 2
    return [*levels, shape.max_concurrency]


def rate_levels(shape: Sweep, max_rate: float) -> list[float]:
    """Request rates for a rate sweep: fractions of the saturating rate a throughput probe measured."""
    return [f * max_rate for f in shape.rate_fractions]


def _tok_s(s: dict[str, Any]) -> float:
    return s["output_tok_s"]


def gains(levels: list[dict[str, Any]], gain: float) -> list[bool]:
    """Per level: did its throughput exceed the best of all lower levels by `gain`? (The first one did.)"""
    out, best = [], -math.inf
    for s in levels:
        out.append(_tok_s(s) > best * (1 + gain) if best > 0 else True)
        best = max(best, _tok_s(s))
    return out


def saturation(levels: list[dict[str, Any]], gain: float) -> dict[str, Any]:
    """Where throughput peaked, the first level that stopped gaining (the knee), and whether it is confirmed."""
    g = gains(levels, gain)
    peak = max(range(len(levels)), key=lambda i: _tok_s(levels[i])) if levels else None
    knee = next((i for i, x in enumerate(g) if not x), None)
    confirmed = any(not any(g[i : i + CONFIRM_LEVELS]) for i in range(len(g) - CONFIRM_LEVELS + 1))
    return {
        "confirmed": confirmed,
        "peak_level": peak,
        "peak_load": levels[peak]["load"]["label"] if peak is not None else None,
        "peak_output_tok_s": _tok_s(levels[peak]) if peak is not None else None,
        "knee_level": knee,
        "knee_load": levels[knee]["load"]["label"] if knee is not None else None,
    }


def stop_reason(levels: list[dict[str, Any]], gain: float) -> str | None:
    """Why a concurrency sweep should stop after its last level, or None to go on."""
    last = levels[-1]
    if last["partial"]:
        return f"aborted: {last['abort_reason']}"
    if last["error_rate"] > OVERLOAD_ERROR_RATE:
        return f"overloaded: {last['error_rate']:.0%} of requests failed at {last['load']['label']}"
    g = gains(levels, gain)
    if len(g) >= CONFIRM_LEVELS and not any(g[-CONFIRM_LEVELS:]):
        return f"saturated: {CONFIRM_LEVELS} levels in a row raised throughput by less than {gain:.0%}"
    return None


def best_level(levels: list[dict[str, Any]]) -> int | None:
    """Among the loads that met the SLO, the one with the most goodput (output tok/s within the SLO); on a
    tie the lower load. Past saturation a higher load that still meets the SLO adds latency, not tokens, so
    the highest SLO-meeting load is reported beside it (`highest_met`), not used for capacity."""
    met = [i for i, s in enumerate(levels) if s["slo"]["met"] and not s.get("probe")]
    return max(met, key=lambda i: (levels[i]["goodput_tok_s"], -i)) if met else None


def highest_met(levels: list[dict[str, Any]]) -> int | None:
    """The highest load that met the SLO (levels are in ascending load)."""
    met = [i for i, s in enumerate(levels) if s["slo"]["met"] and not s.get("probe")]
    return met[-1] if met else None


def capacity(level: dict[str, Any], target_tokens_per_day: float | None) -> dict[str, Any]:
    """Tokens per day a replica sustains at this level (steady tok/s x 86,400) and replicas for a target."""
    steady = level["steady_output_tok_s"]
    tok_s = steady if steady is not None else level["output_tok_s"]
    per_day = tok_s * 86_400
    out: dict[str, Any] = {
        "load": level["load"]["label"],
        "output_tok_s": tok_s,
        "tok_s_basis": "steady window"
        if steady is not None
        else "whole level (too short for a steady window)",
        "tokens_per_day": per_day,
        "goodput_tok_s": level["goodput_tok_s"],
        "goodput_requests_s": level["goodput_requests_s"],
    }
    if target_tokens_per_day is not None:
        out["target_tokens_per_day"] = target_tokens_per_day
        out["replicas"] = math.ceil(target_tokens_per_day / per_day) if per_day > 0 else None
    return out


def summarize_sweep(
    levels: list[dict[str, Any]], shape: Sweep, target_tokens_per_day: float | None, stopped: str | None
) -> dict[str, Any]:
    """The sweep's verdict: saturation, the best SLO-meeting load with its goodput, tokens/day, replicas."""
    best, top = best_level(levels), highest_met(levels)
    lower_failed = top is not None and not all(s["slo"]["met"] for s in levels[:top] if not s.get("probe"))
    if shape.over == "rate":  # the throughput probe (closed loop at max_concurrency) is the saturation point
        probe = levels[0]
        sat = {"confirmed": None, "peak_level": 0, "peak_load": probe["load"]["label"],
               "peak_output_tok_s": _tok_s(probe), "knee_level": None, "knee_load": None}  # fmt: skip
    else:
        sat = saturation(levels, shape.saturation_gain)
    return {
        "over": shape.over,
        "stopped": stopped or "all levels run",
        "saturation": sat,
        "best_level": best,
        "highest_slo_load": levels[top]["load"]["label"] if top is not None else None,
        "best": capacity(levels[best], target_tokens_per_day) if best is not None else None,
        "note": "a lower load missed the SLO (noise, or a non-monotonic server)" if lower_failed else None,
    }
