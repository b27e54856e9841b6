"""Token efficiency of the mini-Chimera children against their parents, served by chimera-serve.

    python -m benchmarks.efficiency [--n 200] [--concurrency 8] [--rounds 8] [--transition-lambda 0.55]

The lab's mini version of "R1T2 answers ~20% shorter than R1": the same held-out additions (merge/lab/task.py),
greedy, at the same load (`--concurrency` streams, closed loop) through `chimera-serve`, for
  mini-v3        the direct-answer parent
  mini-r1        the reasoning parent
  demo child     merge/recipes/mini-chimera.yaml: every tensor, lambda 0.65 (just past the think switch)
  transition     every tensor at `--transition-lambda` (default 0.55: inside the sharp 10%->90% switch that
                 benchmarks/results/think-sweep.md measured between lambda 0.47 and 0.59)
and per model: think-tag rate, reasoning and answer tokens per response (from `usage`), accuracy, output tok/s,
answers/s and correct answers/s. Tokens per answer do not depend on the machine; tok/s and answers/s do, and on
a shared machine they drift by tens of percent over minutes. So mini-r1's server stays up while each other model
is served beside it (two engines at a time), and the two alternate `--rounds` rounds (A B, B A, ...): a model's
answers/s relative to mini-r1 is the median of adjacent-round ratios.

Writes benchmarks/results/efficiency-lab.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks._common import build_demo_child, markdown_table, write_results
from benchmarks.load import Concurrency, LabWorkload, LoadConfig, run_load
from benchmarks.load.servers import LAB_MODELS, build_lambda_child, chimera_serve

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = ("think_rate", "accuracy", "mean_reasoning_tokens", "mean_answer_tokens", "mean_output_tokens",
        "output_tok_s", "requests_s", "e2e_p50_s", "ttfa_p50_s")  # fmt: skip


def models(work: Path, lam: float) -> dict[str, Path]:
    return {
        "mini-v3": LAB_MODELS / "mini-v3",
        "mini-r1": LAB_MODELS / "mini-r1",
        "demo child (lambda 0.65)": build_demo_child(work / "mini-chimera"),
        f"transition child (lambda {lam:g})": build_lambda_child(lam, work / f"child-{lam:g}"),
    }


def measure(base: str, name: str, n: int, concurrency: int) -> dict[str, Any]:
    """One round: the lab's n prompts once each at `concurrency`."""
    cfg = LoadConfig(url=base, model=name, workload=LabWorkload(n=n), shape=Concurrency(concurrency=concurrency),
                     max_requests=n, warmup_requests=4)  # fmt: skip
    res = run_load(cfg)
    s = res.levels[0]
    if s["errors"] or res.partial:
        raise SystemExit(f"error: {name}: {s['errors']} failed requests ({s['first_errors'][:1]})")
    x = res.crosscheck
    return {
        **{k: s[k] for k in KEYS if k in s},
        "e2e_p50_s": s["e2e_s"]["p50"],
        "ttfa_p50_s": s["ttfa_s"]["p50"] if s["ttfa_s"] else None,
        "correct_answers_s": s["requests_s"] * s["accuracy"],
        "reasoning_source": s["reasoning_source"],
        "crosscheck_exact": bool(x and x.get("checked") and x["exact"]),
        "loadavg_1": os.getloadavg()[0],
    }


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure, the median over rounds (counts per response do not vary under greedy decoding)."""
    out = {}
    for k, v in rounds[0].items():
        vals = [r[k] for r in rounds]
        out[k] = statistics.median(vals) if isinstance(v, int | float) and not isinstance(v, bool) else v
    out["crosscheck_exact"] = all(r["crosscheck_exact"] for r in rounds)
    return out


def plot(table: dict[str, dict[str, Any]], path: Path) -> str | None:
    """Tokens per response (reasoning + answer), accuracy and think rate, answers/s; None or why not."""
    try:
        import matplotlib
    except ImportError:
        return "no plot: matplotlib is not installed"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    x = range(len(names))
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    r = [table[n]["mean_reasoning_tokens"] for n in names]
    a = [table[n]["mean_answer_tokens"] for n in names]
    ax[0].bar(x, r, label="reasoning tokens")
    ax[0].bar(x, a, bottom=r, label="answer tokens")
    ax[0].set_title("output tokens per response")
    ax[1].bar([i - 0.2 for i in x], [table[n]["think_rate"] for n in names], 0.4, label="think-tag rate")
    ax[1].bar([i + 0.2 for i in x], [table[n]["accuracy"] for n in names], 0.4, label="accuracy")
    ax[1].set_ylim(0, 1.05)
    ax[1].set_title("think rate and accuracy")
    ans = [table[n]["answers_s_vs_r1"] for n in names]
    correct = [
        a * table[n]["accuracy"] / table["mini-r1"]["accuracy"] for a, n in zip(ans, names, strict=True)
    ]
    ax[2].bar([i - 0.2 for i in x], ans, 0.4, label="answers/s")
    ax[2].bar([i + 0.2 for i in x], correct, 0.4, label="correct answers/s")
    ax[2].axhline(1.0, color="grey", lw=0.8, ls=":")
    ax[2].set_title("answers/s at the same load, x mini-r1 (paired rounds)")
    for axis in ax:
        axis.set_xticks(list(x), [n.replace(" (", "\n(") for n in names], fontsize=8)
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def md_header(data: dict[str, Any]) -> str:
    """The Markdown head `write_results` wrote for this JSON (command, date, machine), for --report-only."""
    m = data["machine"]
    return (f"# efficiency-lab\n\n- command: `{data['command']}`\n- date: {data['date_utc']}\n- machine: {m['cpu']}, "
            f"{m['nproc']} cores, {m['ram_gib']} GiB RAM, Python {m['python']}, load average at the end "
            f"{m['loadavg_1_5_15']}\n\n")  # fmt: skip


def report(table: dict[str, dict[str, Any]], a: argparse.Namespace, plot_note: str | None) -> str:
    r1 = table["mini-r1"]
    rows = [
        [n, f"{t['think_rate']:.3f}", f"{t['accuracy']:.3f}", f"{t['mean_reasoning_tokens']:.1f}",
         f"{t['mean_answer_tokens']:.1f}", f"{t['mean_output_tokens']:.1f}",
         f"{t['mean_output_tokens'] / r1['mean_output_tokens']:.2f}", f"{t['output_tok_s']:.0f}",
         f"{t['requests_s']:.1f}", f"{t['correct_answers_s']:.1f}", f"{t['answers_s_vs_r1']:.2f}",
         f"{1000 * t['e2e_p50_s']:.0f}", "yes" if t["crosscheck_exact"] else "NO", f"{t['loadavg_1']:.1f}"]
        for n, t in table.items()
    ]  # fmt: skip
    headers = ["model", "think rate", "accuracy", "reasoning tok", "answer tok", "output tok", "x mini-r1",
               "output tok/s (median round)", "answers/s (median round)", "correct answers/s (median round)",
               "answers/s x mini-r1 (paired)", "e2e p50 ms", "server counts = client", "load avg"]  # fmt: skip
    children = [n for n in table if "child" in n]
    lines = [
        f"{a.n} held-out additions per round, greedy, max 64 tokens, {a.concurrency} concurrent streams (closed "
        f"loop), each model behind its own chimera-serve (vLLM CPU engine). mini-r1 stays up throughout; each other "
        f"model runs {a.rounds} rounds alternating with rounds of mini-r1 (A B, B A, ...), so 'x mini-r1' is the "
        "median of adjacent-round ratios: the machine's drift (other agents share these 2 cores) hits both alike. "
        "Other columns: the median round. Tokens per response come from `usage` (reasoning: "
        "`completion_tokens_details.reasoning_tokens`); 'server counts = client' is the /metrics cross-check.",
        "",
        markdown_table(headers, rows),
        "",
        *[
            f"- {n}: {table[n]['mean_output_tokens'] / r1['mean_output_tokens']:.0%} of mini-r1's output tokens per "
            f"answer at accuracy {table[n]['accuracy']:.3f} (mini-r1 {r1['accuracy']:.3f}); "
            f"{table[n]['answers_s_vs_r1']:.2f}x its answers/s at the same load (median of {a.rounds} paired rounds)."
            for n in children
        ],
        "",
        "Plot: efficiency-lab.png" if plot_note is None else f"Plot: {plot_note}",
    ]
    return "\n".join(lines)


def paired(
    ref: tuple[str, str], other: tuple[str, str], a: argparse.Namespace
) -> tuple[list[dict], list[dict]]:
    """`a.rounds` rounds of each of two servers, alternating which goes first: (other's rounds, ref's rounds)."""
    mine: list[dict] = []
    theirs: list[dict] = []
    for i in range(a.rounds):
        order = [(other, mine), (ref, theirs)]
        for (base, served), out in order if i % 2 == 0 else order[::-1]:
            out.append(measure(base, served, a.n, a.concurrency))
    return mine, theirs


def with_ratios(mine: list[dict], ref: list[dict]) -> dict[str, Any]:
    """A model's median round and its throughput relative to mini-r1, per pair of adjacent rounds."""
    out = median_round(mine)
    for key, name in (("requests_s", "answers_s_vs_r1"), ("output_tok_s", "tok_s_vs_r1")):
        out[name] = statistics.median(m[key] / r[key] for m, r in zip(mine, ref, strict=True))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.efficiency", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200, help="held-out prompts per round")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rounds", type=int, default=8, help="rounds per model, each paired with one of mini-r1")
    p.add_argument("--transition-lambda", type=float, default=0.55)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "chimera-efficiency")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--report-only", action="store_true", help="redraw the PNG and Markdown from the JSON")
    a = p.parse_args(argv)
    if a.report_only:
        data = json.loads((a.out / "efficiency-lab.json").read_text())
        a.n, a.concurrency, a.rounds = data["n"], data["concurrency"], data["rounds"]
        md = report(data["models"], a, plot(data["models"], a.out / "efficiency-lab.png"))
        (a.out / "efficiency-lab.md").write_text(md_header(data) + md + "\n")
        print(md)
        return 0
    a.work.mkdir(parents=True, exist_ok=True)
    table: dict[str, dict[str, Any]] = {}
    ref_rounds: list[dict] = []
    logs = a.work / "logs"
    extra = ("--max-queued", str(a.concurrency))
    all_models = models(a.work, a.transition_lambda)
    with chimera_serve(all_models.pop("mini-r1"), logs, *extra, name="mini-r1") as r1:
        measure(r1.base_url, "mini-r1", a.n, a.concurrency)  # warm-up round, not recorded (see below)
        for name, model in all_models.items():
            served = name.split(" (")[0].replace(" ", "-")
            with chimera_serve(model, logs, *extra, name=served) as srv:
                # A fresh engine's first rounds run slower (its KV cache pages are touched for the first time),
                # which would bias the pairing against the new model: one unrecorded round first.
                measure(srv.base_url, served, a.n, a.concurrency)
                mine, ref = paired((r1.base_url, "mini-r1"), (srv.base_url, served), a)
            ref_rounds += ref
            table[name] = {**with_ratios(mine, ref), "model_dir": str(model), "rounds": mine}
            t = table[name]
            print(f"{name}: think {t['think_rate']:.3f}, accuracy {t['accuracy']:.3f}, {t['mean_output_tokens']:.1f} "
                  f"tokens/answer, {t['answers_s_vs_r1']:.2f}x mini-r1's answers/s", flush=True)  # fmt: skip
    r1_row = {**median_round(ref_rounds), "answers_s_vs_r1": 1.0, "tok_s_vs_r1": 1.0, "rounds": ref_rounds}
    table = {"mini-r1": {**r1_row, "model_dir": str(LAB_MODELS / "mini-r1")}, **table}
    a.out.mkdir(parents=True, exist_ok=True)
    note = plot(table, a.out / "efficiency-lab.png")
    md = report(table, a, note)
    run = {"n": a.n, "concurrency": a.concurrency, "rounds": a.rounds}
    write_results("efficiency-lab", {**run, "models": table}, md, results_dir=a.out)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
