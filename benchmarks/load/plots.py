"""Plots of a run (optional: matplotlib may be missing on a GPU host; the report then says so).

Four panels over the levels: output and goodput tok/s vs load; TTFT percentiles vs load; TPOT and ITL
percentiles vs load; and the throughput-latency curve (p99 TTFT and p99 TPOT against output tok/s).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

NO_MATPLOTLIB = "no plots: matplotlib is not installed (pip install matplotlib, or read the tables)"


def _series(levels: list[dict[str, Any]], key: str, q: str) -> list[float]:
    return [1000 * s[key][q] if s[key] else float("nan") for s in levels]


def plot(data: dict[str, Any], path: Path) -> str | None:
    """Draw `data`'s levels into `path`; returns None, or a note saying why there is no plot."""
    try:
        import matplotlib
    except ImportError:
        return NO_MATPLOTLIB
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [s for s in data["levels"] if s["ok"]]
    if not levels:
        return "no plots: no request succeeded"
    levels = [s for s in levels if not s.get("probe")] or levels  # a rate sweep's probe is not on its axis
    by_rate = {s["load"]["kind"] for s in levels} == {"rate"}
    x = [s["load"]["value"] for s in levels]
    xlabel = "request rate (1/s)" if by_rate else "concurrency"
    fig, ax = plt.subplots(2, 2, figsize=(12, 8))
    a = ax[0][0]
    a.plot(x, [s["output_tok_s"] for s in levels], "o-", label="output tok/s")
    a.plot(x, [s["goodput_tok_s"] for s in levels], "s--", label="goodput tok/s (within SLO)")
    a.set_title("throughput vs load")
    a.set_ylabel("tokens/s")
    for key, title, ax_ in (("ttft_s", "TTFT", ax[0][1]), ("tpot_s", "TPOT", ax[1][0])):
        for q, style in (("p50", "o-"), ("p90", "^-"), ("p99", "s-")):
            ax_.plot(x, _series(levels, key, q), style, label=f"{title} {q}")
        ax_.set_title(f"{title} percentiles vs load")
        ax_.set_ylabel("ms")
    ax[1][0].plot(x, _series(levels, "itl_s", "p99"), "x:", label="ITL p99")
    slo = data["config"]["slo"]
    ax[0][1].axhline(1000 * slo["ttft_p99_s"], color="red", lw=0.8, ls=":", label="SLO p99")
    ax[1][0].axhline(1000 * slo["tpot_p99_s"], color="red", lw=0.8, ls=":", label="SLO p99")
    for a in (ax[0][0], ax[0][1], ax[1][0]):
        a.set_xlabel(xlabel)
        if not by_rate and len(set(x)) > 2:
            a.set_xscale("log", base=2)
    c = ax[1][1]
    tok = [s["output_tok_s"] for s in levels]
    c.plot(tok, _series(levels, "ttft_s", "p99"), "o-", label="TTFT p99")
    c.plot(tok, _series(levels, "tpot_s", "p99"), "s-", label="TPOT p99")
    for t, y, s in zip(tok, _series(levels, "ttft_s", "p99"), levels, strict=True):
        c.annotate(
            s["load"]["label"].split()[-1], (t, y), fontsize=7, textcoords="offset points", xytext=(3, 3)
        )
    c.set_title("latency vs throughput")
    c.set_xlabel("output tokens/s")
    c.set_ylabel("ms")
    c.set_yscale("log")
    for a in ax.flat:
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.suptitle(
        f"chimera-load: {data['endpoint']['model']} at {data['endpoint']['url']} ({data['started_utc']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
