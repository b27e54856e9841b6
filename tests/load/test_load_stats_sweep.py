"""A level's figures, the sweep's decisions and the /metrics cross-check, on hand-made data (pure)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.load.client import RequestResult
from benchmarks.load.config import Slo, Sweep
from benchmarks.load.crosscheck import client_totals, compare, mismatch_line, parse_counters, server_kind
from benchmarks.load.scheduler import LevelRun, LoadPoint, arrival_offsets
from benchmarks.load.stats import dist, steady_tokens, summarize, within_slo
from benchmarks.load.sweep import (
    best_level,
    capacity,
    concurrency_levels,
    gains,
    highest_met,
    saturation,
    stop_reason,
    summarize_sweep,
)

SLO = Slo(ttft_p99_s=0.5, tpot_p99_s=0.05, max_error_rate=0.1)


def req(
    i: int, start: float, ttft: float, end: float, tokens: int, reasoning: int = 0, **kw: object
) -> RequestResult:
    r = RequestResult(i, start, end=end, ttft=ttft, ttfa=ttft, status=200, prompt_tokens=10,
                      completion_tokens=tokens, reasoning_tokens=reasoning, chunks=tokens, think=reasoning > 0,
                      itl=[(end - start - ttft) / max(tokens - 1, 1)] * (tokens - 1))  # fmt: skip
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def test_dist_against_numpy() -> None:
    x = np.random.default_rng(0).lognormal(size=1001)
    d = dist(x)
    assert d is not None and d["n"] == 1001
    assert d["p50"] == pytest.approx(np.median(x)) and d["mean"] == pytest.approx(x.mean())
    assert d["p99"] == pytest.approx(np.sort(x)[990])  # linear interpolation lands on a sample at n = 1001
    assert dist([]) is None


def test_steady_tokens_hand_computed() -> None:
    # tokens spread evenly from first token to end: a = 100 tokens over [1, 11], b = 50 over [0.5, 5.5]
    rs = [req(0, 0.0, 1.0, 11.0, 100), req(1, 0.0, 0.5, 5.5, 50)]
    assert steady_tokens(rs, (2.0, 6.0)) == pytest.approx((100 * 4 / 10 + 50 * 3.5 / 5) / 4)
    assert steady_tokens(rs, (2.0, 2.5)) is None  # too short a window to mean anything


def test_within_slo_is_per_request() -> None:
    assert within_slo(req(0, 0, 0.4, 0.4 + 0.04 * 9, 10), SLO)
    assert not within_slo(req(0, 0, 0.6, 1.0, 10), SLO)  # TTFT over
    assert not within_slo(req(0, 0, 0.1, 0.1 + 0.06 * 9, 10), SLO)  # TPOT over
    assert not within_slo(req(0, 0, 0.1, 0.2, 10, error="boom"), SLO)


def test_summarize_counts_and_rates() -> None:
    rs = [req(i, i * 0.5, 0.2, i * 0.5 + 2.0, 40, reasoning=30 if i % 2 else 0) for i in range(8)]
    rs.append(req(8, 1.0, 0.0, 1.1, 0, error="HTTP 429: busy", error_kind="http_429", completion_tokens=None))
    rs.append(req(9, 1.0, 0.0, 1.1, 0, error="cancelled", error_kind="cancelled", completion_tokens=None))
    rs[3].ttft = 0.9  # misses the TTFT bound: not goodput
    rs[5].expected, rs[5].text = "75", "<think>x</think>75"
    rs[6].expected, rs[6].text = "75", "76"
    s = summarize(LevelRun(LoadPoint("concurrency", 4), rs, 0.0, 5.5, (1.5, 3.5), "requests"), SLO)
    assert (s["requests"], s["ok"], s["errors"], s["cancelled"]) == (10, 8, 1, 1)
    assert s["error_rate"] == pytest.approx(1 / 9) and s["errors_by_kind"] == {"http_429": 1}
    assert s["completion_tokens"] == 320 and s["reasoning_tokens"] == 120 and s["answer_tokens"] == 200
    assert s["wall_s"] == pytest.approx(5.5) and s["output_tok_s"] == pytest.approx(320 / 5.5)
    assert s["goodput_requests_s"] == pytest.approx(7 / 5.5) and s["goodput_tok_s"] == pytest.approx(
        280 / 5.5
    )
    assert s["think_rate"] == 0.5 and s["accuracy"] == 0.5
    assert s["mean_reasoning_tokens"] == 15 and s["tokens_source"] == "usage"
    assert s["slo"] == {"met": False, "ttft_p99_ok": False, "tpot_p99_ok": True, "error_rate_ok": False}


def test_arrivals() -> None:
    c = arrival_offsets(4.0, "constant", 5, 0)
    assert list(c) == [0.0, 0.25, 0.5, 0.75, 1.0]
    p = arrival_offsets(10.0, "poisson", 20000, 1)
    assert p[0] == 0 and np.all(np.diff(p) >= 0)
    assert np.mean(np.diff(p)) == pytest.approx(0.1, rel=0.03)
    assert np.std(np.diff(p)) == pytest.approx(0.1, rel=0.05)  # exponential gaps: sd = mean
    assert list(arrival_offsets(10.0, "poisson", 50, 7)) == list(arrival_offsets(10.0, "poisson", 50, 7))


def level(
    load: int, tok_s: float, met: bool = True, error_rate: float = 0.0, steady: float | None = None
) -> dict:
    return {"load": {"label": f"concurrency {load}", "value": load}, "output_tok_s": tok_s, "slo": {"met": met},
            "error_rate": error_rate, "partial": False, "abort_reason": None, "steady_output_tok_s": steady,
            "goodput_tok_s": tok_s, "goodput_requests_s": tok_s / 10}  # fmt: skip


def test_concurrency_levels() -> None:
    assert concurrency_levels(Sweep(max_concurrency=48)) == [1, 2, 4, 8, 16, 32, 48]
    assert concurrency_levels(Sweep(max_concurrency=8)) == [1, 2, 4, 8]
    assert concurrency_levels(Sweep(levels=(8, 2, 2))) == [2, 8]


def test_saturation_needs_two_levels_without_gain() -> None:
    tok = [100, 190, 350, 600, 620, 640, 610]
    levels = [level(2**i, t) for i, t in enumerate(tok)]
    assert gains(levels, 0.05) == [True, True, True, True, False, False, False]
    assert stop_reason(levels[:5], 0.05) is None  # one level without a gain may be noise
    assert stop_reason(levels[:6], 0.05).startswith("saturated")
    sat = saturation(levels[:6], 0.05)
    assert sat["confirmed"] and sat["peak_load"] == "concurrency 32" and sat["knee_load"] == "concurrency 16"
    assert not saturation(levels[:5], 0.05)["confirmed"]
    overloaded = [*levels[:3], level(8, 500, error_rate=0.6)]
    assert stop_reason(overloaded, 0.05).startswith("overloaded")


def test_best_level_and_capacity() -> None:
    levels = [level(1, 100), level(2, 190), level(4, 350, met=False), level(8, 600, met=False)]
    assert best_level(levels) == 1
    past_saturation = [level(16, 1100), level(32, 1130), level(64, 745)]  # all meet the SLO
    assert best_level(past_saturation) == 1 and highest_met(past_saturation) == 2
    c = capacity(level(2, 190, steady=200.0), 1e9)
    assert c["tokens_per_day"] == 200.0 * 86400 and c["tok_s_basis"] == "steady window"
    assert c["replicas"] == math.ceil(1e9 / (200.0 * 86400)) == 58
    assert capacity(level(2, 190), None)["tokens_per_day"] == 190 * 86400 and "replicas" not in capacity(
        level(2, 190), None
    )
    sw = summarize_sweep(levels, Sweep(), 1e9, "saturated")
    assert (
        sw["best"]["load"] == "concurrency 2"
        and sw["highest_slo_load"] == "concurrency 2"
        and sw["note"] is None
    )
    assert summarize_sweep([level(1, 1, met=False)], Sweep(), None, None)["best"] is None
    noisy = summarize_sweep([level(1, 100, met=False), level(2, 190)], Sweep(), None, None)
    assert noisy["best"]["load"] == "concurrency 2" and noisy["note"]


METRICS = """# HELP chimera_prompt_tokens_total Prompt tokens processed.
# TYPE chimera_prompt_tokens_total counter
chimera_prompt_tokens_total{model="m"} 120.0
chimera_prompt_tokens_total{model="other"} 5.0
chimera_completion_tokens_total{model="m"} 300.0
chimera_reasoning_tokens_total{model="m"} 90.0
chimera_completion_tokens_created{model="m"} 1.7e9
vllm:prompt_tokens_total{engine="0",model_name="m"} 120.0
vllm:generation_tokens_total{engine="0",model_name="m"} 300.0
"""


def test_counters_parse_by_model() -> None:
    c = parse_counters(METRICS, "m")
    assert c == {"chimera": {"prompt_tokens": 120, "completion_tokens": 300, "reasoning_tokens": 90},
                 "vllm": {"prompt_tokens": 120, "completion_tokens": 300}}  # fmt: skip
    assert server_kind(METRICS) == "chimera-serve" and server_kind("vllm:generation_tokens_total 1") == "vllm"
    assert server_kind(None) == "unknown" and parse_counters("up 1\n", "m") == {}


def test_compare_exact_and_difference() -> None:
    after = METRICS.replace("300.0", "340.0").replace("120.0", "135.0").replace("90.0", "100.0")
    rs = [req(0, 0, 0.1, 1, 40, reasoning=10, prompt_tokens=15)]
    x = compare(METRICS, after, "m", client_totals(rs))
    assert x["checked"] and x["exact"]
    assert x["families"]["chimera"]["server"] == {
        "prompt_tokens": 15,
        "completion_tokens": 40,
        "reasoning_tokens": 10,
    }
    failed = req(1, 0, 0.1, 1, 0, error="lost", completion_tokens=None)
    short = [req(0, 0, 0.1, 1, 38, reasoning=10, prompt_tokens=15), failed]
    y = compare(METRICS, after, "m", client_totals(short))
    assert not y["exact"] and y["families"]["vllm"]["difference"] == {
        "prompt_tokens": 0,
        "completion_tokens": 2,
    }
    assert "1 requests failed without usage" in y["note"]
    assert "chimera completion_tokens +2" in mismatch_line(
        y
    ) and "vllm completion_tokens +2" in mismatch_line(y)
    assert not compare(None, after, "m", {})["checked"]


def test_progress_display_renders() -> None:
    import io

    from rich.console import Console

    from benchmarks.load.progress import LiveDisplay, level_line
    from benchmarks.load.scheduler import Counters

    rs = [req(i, 0.0, 0.2, 2.0, 40, reasoning=30) for i in range(4)]
    s = summarize(LevelRun(LoadPoint("concurrency", 4), rs, 0.0, 2.0, (0.0, 2.0), "requests"), SLO)
    line = level_line(s)
    assert line.startswith("concurrency 4: 4 ok, 0 errors, 80 tok/s") and "think 100%" in line
    out = io.StringIO()
    d = LiveDisplay(Console(file=out, force_terminal=True, width=120))
    c = Counters(label="concurrency 4", issued=7, done=5, errors=1, tokens=200, in_flight=2)
    d.level_started(c)
    d.refresh()
    d.level_finished(s)
    d.close()
    text = out.getvalue()
    assert "5 / 7" in text and "concurrency 4: 4 ok" in text
