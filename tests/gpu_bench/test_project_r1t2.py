"""The R1T2 projection on a results file of plausible single-H200 figures (no GPU needed)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks.gpu import project_r1t2 as pr

MEASURED = {
    "device": "NVIDIA H200 (plausible inputs, not measured)",
    "vocab": 129280,
    "prompt_tokens": 256,
    "output_tokens": 128,
    "plan": {"dense": 3, "moe": 10, "layers": 13},
    "chimera": {"levels": {
        "c1": {"tpot_p50": 0.012, "ttft_p50": 0.05}, "c8": {"tpot_p50": 0.016}, "c32": {"tpot_p50": 0.024},
        "c128": {"tpot_p50": 0.030}, "c256": {"tpot_p50": 0.034}, "rate": {"tpot_p50": 0.05},
    }},
}  # fmt: skip


@pytest.fixture(scope="module")
def shape() -> pr.Shape:
    return pr.Shape.dsv3()


def test_experts_touched_goes_from_top_k_to_all() -> None:
    assert pr.experts_touched(1) == pytest.approx(8)
    assert pr.experts_touched(0) == 0
    assert pr.experts_touched(4096) == pytest.approx(256, rel=1e-6)


def test_calibration_reads_bandwidth_off_the_largest_batch(shape: pr.Shape) -> None:
    cal = pr.calibrate(MEASURED, shape)
    big = max(cal["levels"], key=lambda r: r["c"])
    assert big["c"] == 256 and cal["bw_eff"] == pytest.approx(big["bytes"] / 0.034)
    # 10 MoE layers with every expert touched, 3 dense, the head: ~121 GB per step in 34 ms.
    assert 3.0e12 < cal["bw_eff"] < 4.8e12
    assert cal["overhead_per_layer_s"] > 0


def test_tp8_allreduce_term_by_hand(shape: pr.Shape) -> None:
    a = pr.Assumptions()
    cal = {"bw_eff": 4e12, "overhead_per_layer_s": 0.0}
    st = pr.step_time("tp8", 100, 300, cal, a, shape)
    msg = 100 * 7168 * 2
    assert st["comm_s"] == pytest.approx(2 * 61 * (a.allreduce_latency_s + 2 * 7 / 8 * msg / a.nvlink_busbw))


def test_projection_meets_its_slo_and_kv_capacity(shape: pr.Shape) -> None:
    cal, a = pr.calibrate(MEASURED, shape), pr.Assumptions()
    for mode in ("tp8", "dp8ep"):
        p = pr.project(mode, cal, a, shape, mtp=False)
        best = p["best"]
        assert best is not None and best["ttft_p99_s"] <= a.ttft_slo_s
        assert best["batch"] * (a.prompt_tokens + a.output_tokens / 2) <= p["kv_capacity_tokens"]
        assert best["tokens_per_day"] == pytest.approx(best["output_tok_s"] * 86400)
    # TP8 replicates the latent cache on every rank: the node holds fewer tokens than with DP8+EP.
    assert pr.capacity_tokens("tp8", a, shape) < pr.capacity_tokens("dp8ep", a, shape)


def test_more_bandwidth_never_projects_less(shape: pr.Shape) -> None:
    cal, a = pr.calibrate(MEASURED, shape), pr.Assumptions()
    slow = pr.project("tp8", cal, a, shape, mtp=False)["best"]["output_tok_s"]
    fast = pr.project("tp8", {**cal, "bw_eff": 2 * cal["bw_eff"]}, a, shape, mtp=False)["best"][
        "output_tok_s"
    ]
    assert fast >= slow
    mtp = pr.project("tp8", cal, replace(a, mtp_acceptance=0.0), shape, mtp=True)["best"]["output_tok_s"]
    assert mtp <= slow  # a draft layer that is never accepted only costs


def test_main_writes_a_labelled_projection(tmp_path: Path) -> None:
    src = tmp_path / "gpu-serve-throughput.json"
    src.write_text(json.dumps(MEASURED))
    pr.main([str(src), "--results", str(tmp_path), "--set", "mtp_acceptance=0.5"])
    out = json.loads((tmp_path / "gpu-r1t2-projection.json").read_text())
    assert out["label"] == "PROJECTION" and out["assumptions"]["mtp_acceptance"] == 0.5
    assert len(out["projections"]) == 4 and all(p["best"] for p in out["projections"])
    assert "PROJECTION" in (tmp_path / "gpu-r1t2-projection.md").read_text()
    with pytest.raises(SystemExit, match="unknown assumption"):
        pr.main([str(src), "--results", str(tmp_path), "--set", "nope=1"])


def test_r1t2_bytes_from_one_layer_configs_match_the_full_plan() -> None:
    assert pr.r1t2_bytes() == 688_574_839_360


def test_refuses_a_run_of_other_widths(tmp_path: Path) -> None:
    src = tmp_path / "tiny.json"
    src.write_text(json.dumps({**MEASURED, "widths": "tiny"}))
    with pytest.raises(SystemExit, match="needs DeepSeek-V3's"):
        pr.main([str(src), "--results", str(tmp_path)])
