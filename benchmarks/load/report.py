"""A run's record: `<stem>.json` (every figure), `<stem>.md` (tables for people) and `<stem>.png` (plots,
when matplotlib is there), each with the command, the machine and the date. A partial run says so at the top
of both files."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.load.plots import plot
from benchmarks.load.runner import LoadResult


def command_line() -> str:
    """How this process was started, as a user would type it."""
    argv0 = Path(sys.argv[0]).name
    if argv0 == "chimera-load":
        return shlex.join(["chimera-load", *sys.argv[1:]])
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    head = ["python", "-m", spec.name] if spec is not None else ["python", sys.argv[0]]
    return shlex.join([*head, *sys.argv[1:]])


def machine() -> dict[str, Any]:
    """The client's machine (the server's may be another): CPU, cores, RAM, Python, load average."""
    cpu, mem = platform.processor() or platform.machine(), 0
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), cpu)
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        mem = next((int(ln.split()[1]) for ln in meminfo if ln.startswith("MemTotal")), 0)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "ram_gib": round(mem / 2**20, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_1_5_15": list(os.getloadavg()),
    }


def write_report(
    result: LoadResult, out_dir: Path, stem: str, *, command: str | None = None
) -> dict[str, Any]:
    """Write the JSON, Markdown and (if possible) PNG; returns their paths and the plot's note."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"command": command or command_line(), "machine": machine(), **result.to_dict()}
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md", "png": out_dir / f"{stem}.png"}
    note = plot(data, paths["png"])
    data["plot"] = note or paths["png"].name
    paths["json"].write_text(json.dumps(data, indent=2) + "\n")
    paths["md"].write_text(markdown(data))
    return {"paths": {k: v for k, v in paths.items() if k != "png" or note is None}, "plot_note": note}


def _ms(d: dict[str, float] | None, key: str) -> str:
    return f"{1000 * d[key]:.1f}" if d else "-"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _workload(cfg: dict[str, Any]) -> str:
    w = cfg["workload"]
    if w["kind"] == "synthetic":
        unit = "tokens" if w["tokenizer"] else "words"

        def d(x: dict[str, Any]) -> str:
            return (
                ":".join(str(v) for k, v in x.items() if k != "kind")
                if x["kind"] != "fixed"
                else str(x["value"])
            )

        return (f"synthetic, seed {w['seed']}: input {w['input_len']['kind']} {d(w['input_len'])} {unit}, "
                f"output {w['output_len']['kind']} {d(w['output_len'])} tokens")  # fmt: skip
    if w["kind"] == "jsonl":
        return f"prompt file {w['path']}"
    return f"lab: {w['n']} held-out additions (merge/lab/task.py), max_tokens {w['max_tokens']}"


LEVEL_HEADERS = (
    "load | ok | err | out tok/s | steady tok/s | goodput tok/s | TTFT p50/p99 ms | TTFA p50/p99 ms | "
    "TPOT p50/p99 ms | ITL p50/p99 ms | e2e p50/p99 s | think | accuracy | reasoning / answer tok | SLO"
)


def level_row(s: dict[str, Any]) -> str:
    steady = "-" if s["steady_output_tok_s"] is None else f"{s['steady_output_tok_s']:.1f}"
    e2e = s["e2e_s"]
    e2e_txt = f"{e2e['p50']:.2f} / {e2e['p99']:.2f}" if e2e else "-"
    tokens = (
        f"{s['mean_reasoning_tokens']:.1f} / {s['mean_answer_tokens']:.1f}"
        if s["mean_answer_tokens"] is not None
        else "-"
    )
    slo = ("met" if s["slo"]["met"] else "missed") + (" (probe)" if s.get("probe") else "")
    return (
        f"| {s['load']['label']}{' PARTIAL' if s['partial'] else ''} | {s['ok']} | {s['errors']} | "
        f"{s['output_tok_s']:.1f} | {steady} | {s['goodput_tok_s']:.1f} | "
        f"{_ms(s['ttft_s'], 'p50')} / {_ms(s['ttft_s'], 'p99')} | {_ms(s['ttfa_s'], 'p50')} / {_ms(s['ttfa_s'], 'p99')} | "
        f"{_ms(s['tpot_s'], 'p50')} / {_ms(s['tpot_s'], 'p99')} | {_ms(s['itl_s'], 'p50')} / {_ms(s['itl_s'], 'p99')} | "
        f"{e2e_txt} | {_pct(s['think_rate'])} | {_pct(s['accuracy'])} | {tokens} | {slo} |"
    )


def _capacity(c: dict[str, Any] | None) -> list[str]:
    if c is None:
        return ["**No load met the SLO**: no tokens/day figure."]
    lines = [
        f"**Tokens/day** at {c['load']}: **{c['tokens_per_day']:,.0f}** ({c['output_tok_s']:.1f} output tok/s, "
        f"{c['tok_s_basis']}, x 86,400); goodput there {c['goodput_tok_s']:.1f} tok/s, "
        f"{c['goodput_requests_s']:.2f} requests/s."
    ]
    if c.get("replicas") is not None:
        lines.append(f"Replicas for {c['target_tokens_per_day']:,.0f} tokens/day: **{c['replicas']}**.")
    return lines


def _crosscheck(x: dict[str, Any] | None) -> list[str]:
    if x is None:
        return ["Cross-check: off."]
    if not x["checked"]:
        return [f"Cross-check: not done ({x['note']})."]
    lines = ["Cross-check, server /metrics increase vs the client's `usage` sums:", ""]
    lines += ["| counters | token kind | server | client | difference |", "|---|---|---:|---:|---:|"]
    for fam, f in x["families"].items():
        lines += [
            f"| {fam} | {k} | {f['server'][k]} | {f['client'][k]} | {f['difference'][k]:+d} |"
            for k in f["server"]
        ]
    lines += [
        "",
        f"**{'Exact agreement' if x['exact'] else 'DIFFERENCES'}**" + (f": {x['note']}" if x["note"] else ""),
    ]
    return lines


def markdown(data: dict[str, Any]) -> str:
    """The human-readable report of a run's JSON."""
    cfg, m, ep = data["config"], data["machine"], data["endpoint"]
    slo = cfg["slo"]
    lines = [f"# chimera-load: {cfg['label'] or ep['model']}", ""]
    if data["partial"]:
        lines += [f"**PARTIAL RESULTS**: {data['abort_reason']}", ""]
    lines += [
        f"- command: `{data['command']}`",
        f"- date: {data['started_utc']}",
        f"- client machine: {m['cpu']}, {m['nproc']} cores, {m['ram_gib']} GiB RAM, Python {m['python']}, "
        f"load average at the end {[round(x, 2) for x in m['loadavg_1_5_15']]}",
        f"- endpoint: {ep['url']} (model `{ep['model']}`, server: {ep['server_kind']})",
        f"- workload: {_workload(cfg)}; temperature {cfg['temperature']}, ignore_eos {cfg['ignore_eos']}",
        f"- bounds per level: {cfg['max_requests']} requests, {cfg['max_duration_s']} s; SLO: p99 TTFT <= "
        f"{slo['ttft_p99_s']} s, p99 TPOT <= {1000 * slo['tpot_p99_s']:.0f} ms, errors <= {slo['max_error_rate']:.0%}",
        f"- client CPU: {data['client_cpu_s']:.1f} s over {data['wall_s']:.1f} s",
        "",
        "| " + LEVEL_HEADERS + " |",
        "|" + "---|" * len(LEVEL_HEADERS.split("|")),
        *[level_row(s) for s in data["levels"]],
        "",
    ]
    sw = data["sweep"]
    if sw is not None:
        sat = sw["saturation"]
        state = {True: "confirmed", False: "not confirmed within the levels run", None: "throughput probe"}
        lines += [
            f"Sweep over {sw['over']}, stopped: {sw['stopped']}.",
            f"Saturation ({state[sat['confirmed']]}): peak {sat['peak_output_tok_s']:.1f} output tok/s at "
            f"{sat['peak_load']}" + (f"; throughput stopped rising at {sat['knee_load']}" if sat["knee_load"] else "") + ".",
            "Highest load meeting the SLO: " + (sw["highest_slo_load"] or "none") + "; the most goodput within the "
            "SLO (capacity below): " + (sw["best"]["load"] if sw["best"] else "none") + "."
            + (f" ({sw['note']})" if sw["note"] else ""),
            "",
        ]  # fmt: skip
    lines += [*_capacity(data["capacity"]), "", *_crosscheck(data["crosscheck"]), ""]
    errors = sum((Counter(s["errors_by_kind"]) for s in data["levels"]), Counter())
    if errors:
        firsts = list(dict.fromkeys(e for s in data["levels"] for e in s["first_errors"]))[:5]
        lines += [f"Errors by kind, all levels: {dict(errors)}; first messages: {firsts}", ""]
    lines += [f"Plots: {data['plot']}", ""]
    return "\n".join(lines)
