"""The think-tag transition: how mini-r1's reasoning trait appears in children as its share lambda grows.

    python -m benchmarks.think_sweep [--all 0,0.1,...] [--routed 0,0.5,1] [--n 200] [--resume]

For two recipes over mini-v3 (base) + mini-r1, and each lambda (mini-r1's weight) on a grid:
  all     every tensor interpolated: W = (1 - lambda) W_v3 + lambda W_r1
  routed  only the routed experts interpolated (R1T-style); everything else, config and tokenizer from mini-v3
the child is built with the merge stage (`merge.execute.build_child`) and run through vLLM's offline API
(`python -m merge.lab.evaluate`, one engine at a time, in a subprocess) on a fixed held-out prompt set, greedy.
Per child: think-tag rate (output opens and closes a think block), accuracy, mean output tokens.

Writes benchmarks/results/think-sweep.json (after every point, so `--resume` continues a cut run),
think-sweep.png (the three curves vs lambda) and think-sweep.md (where the think rate crosses 50%, the 10%->90%
interval, gradual or sharp, how length and accuracy move; the command, machine and date).

The parents come from a recipe file (default merge/recipes/mini-chimera.yaml); a recipe whose parents are not the
lab's models is refused, and so is a lambda outside [0, 1].
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from merge.errors import MergeError
from merge.lab import LabError
from merge.recipe import Recipe, load_recipe

ROOT = Path(__file__).resolve().parents[1]
LAB_MODELS = ROOT / "merge" / "lab" / "models"
DEFAULT_RECIPE = ROOT / "merge" / "recipes" / "mini-chimera.yaml"
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_GRIDS = {
    # denser where an in-process transformers probe saw the first token switch to <think> (0.45-0.65)
    "all": [0.0, 0.3, 0.45, 0.5, 0.525, 0.55, 0.575, 0.6, 0.65, 0.8, 1.0],
    "routed": [0.0, 0.25, 0.5, 0.75, 1.0],
    # the complement of `routed`: where the trait does live (grid around the `all` switch)
    "rest": [0.4, 0.5, 0.55, 0.6, 0.7, 1.0],
}
LABELS = {
    "all": "all tensors mixed",
    "routed": "routed experts only",
    "rest": "all but routed experts",
}
SELECTORS = {
    "all": {"pattern": ".*"},
    "routed": {"select": "routed_experts"},
    "rest": {"pattern": r"^(?!.*\.mlp\.experts\.\d+\.)"},  # every tensor that is not a routed expert
}
SHARP_WIDTH = 0.15  # a 10%->90% interval narrower than this counts as a sharp switch


def parse_grid(text: str) -> list[float]:
    """'0,0.5,1' -> [0.0, 0.5, 1.0]; refuses values outside [0, 1], non-numbers and an empty grid."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LabError(
            f"grid {text!r}: write comma-separated numbers in [0, 1], e.g. 0,0.25,0.5,0.75,1"
        ) from None
    return check_grid(values)


def check_grid(values: list[float]) -> list[float]:
    """Sorted, de-duplicated lambdas; every one finite and within [0, 1]."""
    if not values:
        raise LabError("grid is empty: give at least one lambda in [0, 1]")
    for v in values:
        if not math.isfinite(v) or not 0.0 <= v <= 1.0:
            raise LabError(
                f"lambda {v} is outside [0, 1]: it is mini-r1's share of a convex mix; use 0 <= lambda <= 1"
            )
    return sorted(set(values))


def _weights_digest(model_dir: Path) -> str:
    return hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()


def lab_parents(recipe: Recipe, lab_models: Path = LAB_MODELS) -> tuple[Path, Path]:
    """(mini-v3 dir, mini-r1 dir) named by `recipe`; refuses parents whose weights are not the lab's."""
    wanted = {"mini-v3": lab_models / "mini-v3", "mini-r1": lab_models / "mini-r1"}
    digests = {_weights_digest(d): name for name, d in wanted.items()}
    found: dict[str, Path] = {}
    for key, spec in recipe.parents.items():
        path = Path(spec)
        weights = path / "model.safetensors"
        name = digests.get(_weights_digest(path)) if weights.is_file() else None
        if name is None:
            raise LabError(
                f"recipe parent {key!r} ({spec}) is not one of the lab's models ({', '.join(wanted)} under "
                f"{lab_models}); the sweep measures the lab task, so point the recipe at those directories"
            )
        found[name] = path
    if set(found) != set(wanted):
        raise LabError(f"recipe parents must be mini-v3 and mini-r1 (found {sorted(found)}); name both")
    return found["mini-v3"], found["mini-r1"]


def sweep_recipe(kind: str, lam: float, v3: Path, r1: Path) -> Recipe:
    """The child recipe for one point: mini-r1 at weight `lam` on the tensors `kind` selects (SELECTORS)."""
    selector = SELECTORS[kind]
    return Recipe.model_validate(
        {
            "name": f"mini-{kind}-{lam:.3f}",
            "base": "v3",
            "parents": {"v3": str(v3), "r1": str(r1)},
            "rules": [{**selector, "weights": {"v3": 1.0 - lam, "r1": lam}}],
            "output": {"dtype": "bf16"},
        }
    )


def measure(model_dir: Path, n: int) -> dict:
    """Run `merge.lab.evaluate` on one directory in its own process (one vLLM engine at a time)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eval.json"
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
        cmd = [sys.executable, "-m", "merge.lab.evaluate", str(model_dir), "--n", str(n), "--json", str(out)]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise MergeError(f"evaluating {model_dir} failed (exit {proc.returncode}): {' | '.join(tail)}")
        return json.loads(out.read_text())


def level_crossing(points: list[tuple[float, float]], level: float) -> float | None:
    """First lambda where the (lambda-sorted) curve reaches `level`, linearly interpolated; None if never."""
    pts = sorted(points)
    if not pts:
        return None
    if pts[0][1] >= level:
        return pts[0][0]
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        if y0 < level <= y1:
            return x0 + (level - y0) * (x1 - x0) / (y1 - y0)
    return None


def transition(points: list[tuple[float, float]]) -> dict:
    """Where the think rate crosses 50%, its 10%->90% interval, and whether the switch is sharp."""
    lo, mid, hi = (level_crossing(points, v) for v in (0.1, 0.5, 0.9))
    width = hi - lo if lo is not None and hi is not None else None
    verdict = "no full switch in [0, 1]" if width is None else "sharp" if width < SHARP_WIDTH else "gradual"
    return {"cross_50": mid, "from_10": lo, "to_90": hi, "width_10_90": width, "verdict": verdict}


def run_sweep(
    grids: dict[str, list[float]], v3: Path, r1: Path, n: int, out_json: Path, resume: bool
) -> dict:
    """Build and measure every (recipe, lambda) point; the JSON is rewritten after each one."""
    data = json.loads(out_json.read_text()) if resume and out_json.is_file() else {"points": []}
    data.update(n=n, grids=grids)
    done = {(p["recipe"], p["lambda"]) for p in data["points"] if p.get("n") == n}
    for kind, grid in grids.items():
        for lam in grid:
            if (kind, lam) in done:
                continue
            with tempfile.TemporaryDirectory(prefix="think-sweep-") as tmp:
                child = Path(tmp) / "child"
                t0 = time.monotonic()
                build_child_quietly(sweep_recipe(kind, lam, v3, r1), child)
                result = measure(child, n)
            point = {"recipe": kind, "lambda": lam, "n": n, "seconds": round(time.monotonic() - t0, 1)}
            point.update({k: result[k] for k in ("think_rate", "accuracy", "mean_output_tokens", "samples")})
            data["points"].append(point)
            print(
                f"{kind:6s} lambda={lam:.3f} think={point['think_rate']:.3f} acc={point['accuracy']:.3f} "
                f"tokens={point['mean_output_tokens']:.1f} ({point['seconds']}s)",
                flush=True,
            )
            out_json.write_text(json.dumps(data, indent=2) + "\n")
    return data


def build_child_quietly(recipe: Recipe, out_dir: Path) -> None:
    from merge.execute import build_child

    build_child(recipe, out_dir)


def curves(data: dict, kind: str) -> list[dict]:
    return sorted((p for p in data["points"] if p["recipe"] == kind), key=lambda p: p["lambda"])


def plot(data: dict, path: Path) -> None:
    """Three panels vs lambda: think-tag rate, accuracy, mean output tokens; one line per recipe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = [
        ("think_rate", "think-tag rate"),
        ("accuracy", "accuracy"),
        ("mean_output_tokens", "mean output tokens"),
    ]
    for kind, style in (("all", "o-"), ("routed", "s--"), ("rest", "^:")):
        pts = curves(data, kind)
        if not pts:
            continue
        label = LABELS[kind]
        for ax, (key, _) in zip(axes, panels, strict=True):
            ax.plot([p["lambda"] for p in pts], [p[key] for p in pts], style, label=label)
    for ax, (key, title) in zip(axes, panels, strict=True):
        ax.set_title(title)
        ax.set_xlabel("lambda (mini-r1 share)")
        ax.set_xlim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if key != "mean_output_tokens":
            ax.set_ylim(-0.03, 1.03)
    axes[0].axhline(0.5, color="grey", lw=0.8, ls=":")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(f"mini-Chimera children of mini-v3 + mini-r1, vLLM greedy, {data['n']} held-out prompts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
    return names[0] if names else platform.machine()


def _fmt(x: float | None) -> str:
    return "not reached" if x is None else f"{x:.3f}"


def _step(pts: list[dict], t: dict) -> float:
    """Grid spacing around the 50% crossing (or the widest step when there is none): the interval's resolution."""
    xs = [p["lambda"] for p in pts]
    steps = [(b - a, a, b) for a, b in itertools.pairwise(xs)] or [(0.0, 0.0, 0.0)]
    at = t["cross_50"]
    near = [d for d, a, b in steps if at is not None and a <= at <= b]
    return near[0] if near else max(d for d, _, _ in steps)


def _reading(pts: list[dict]) -> list[str]:
    """How output length and accuracy move with the think rate (computed, not hand-written)."""
    off = [p for p in pts if p["think_rate"] < 0.1]
    on = [p for p in pts if p["think_rate"] > 0.9]
    out = []
    if off and on:
        mean = lambda ps, k: sum(p[k] for p in ps) / len(ps)  # noqa: E731
        out.append(
            f"- output length follows the think rate: {mean(off, 'mean_output_tokens'):.1f} tokens where children "
            f"do not think (think < 10%, {len(off)} points) vs {mean(on, 'mean_output_tokens'):.1f} where they do "
            f"(> 90%, {len(on)} points)."
        )
    else:
        out.append(
            f"- output length moves from {pts[0]['mean_output_tokens']:.1f} tokens (lambda={pts[0]['lambda']:.2f}) "
            f"to {pts[-1]['mean_output_tokens']:.1f} (lambda={pts[-1]['lambda']:.2f}) without a think switch."
        )
    worst = min(pts, key=lambda p: p["accuracy"])
    out.append(
        f"- accuracy: {pts[0]['accuracy']:.3f} at lambda={pts[0]['lambda']:.2f}, {pts[-1]['accuracy']:.3f} at "
        f"lambda={pts[-1]['lambda']:.2f}, lowest {worst['accuracy']:.3f} at lambda={worst['lambda']:.3f}."
    )
    return out


def summary(data: dict, command: str) -> str:
    """The markdown report: per recipe, the transition and how length and accuracy move."""
    lines = [
        "# Think-tag transition of mini-Chimera children",
        "",
        f"Command: `{command}`  ",
        f"Machine: {_cpu_name()}, {os.cpu_count()} cores ({platform.platform()}); vLLM-CPU offline API, "
        "one engine at a time  ",
        f"Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}  ",
        f"Prompts: {data['n']} held-out two-digit additions (never trained on), greedy, max 64 tokens.",
        "",
        "lambda is mini-r1's weight (mini-v3 gets 1 - lambda). `all`: every tensor mixed; `routed`: only the",
        "routed experts mixed, everything else (attention, shared expert, dense MLP, routers, norms, embeddings,",
        "lm_head) from mini-v3; `rest`: the complement, every tensor but the routed experts mixed, experts from",
        "mini-v3. Plot: `think-sweep.png`; raw numbers and sample outputs: `think-sweep.json`.",
        "",
    ]
    for kind in LABELS:
        pts = curves(data, kind)
        if not pts:
            continue
        t = transition([(p["lambda"], p["think_rate"]) for p in pts])
        lines += [
            f"## `{kind}`",
            "",
            "| lambda | think rate | accuracy | mean output tokens |",
            "|---:|---:|---:|---:|",
            *[
                f"| {p['lambda']:.3f} | {p['think_rate']:.3f} | {p['accuracy']:.3f} | {p['mean_output_tokens']:.1f} |"
                for p in pts
            ],
            "",
            f"- think rate crosses 50% at lambda = {_fmt(t['cross_50'])}; 10% -> 90% from {_fmt(t['from_10'])} "
            f"to {_fmt(t['to_90'])} (width {_fmt(t['width_10_90'])}): **{t['verdict']}** "
            f"(linear interpolation between measured points; grid step there {_step(pts, t):.3f}).",
            *_reading(pts),
            "",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.think_sweep", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE, help="recipe naming the lab parents")
    parser.add_argument("--all", dest="grid_all", default=",".join(map(str, DEFAULT_GRIDS["all"])))
    parser.add_argument("--routed", dest="grid_routed", default=",".join(map(str, DEFAULT_GRIDS["routed"])))
    parser.add_argument("--rest", dest="grid_rest", default=",".join(map(str, DEFAULT_GRIDS["rest"])))
    parser.add_argument("--n", type=int, default=200, help="held-out prompts per child")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--resume", action="store_true", help="keep points already in the JSON")
    parser.add_argument("--report-only", action="store_true", help="redraw PNG + markdown from the JSON")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.think_sweep " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        grids = {
            "all": parse_grid(args.grid_all),
            "routed": parse_grid(args.grid_routed),
            "rest": parse_grid(args.grid_rest),
        }
        v3, r1 = lab_parents(load_recipe(args.recipe))
        args.out.mkdir(parents=True, exist_ok=True)
        out_json = args.out / "think-sweep.json"
        if args.report_only:
            if not out_json.is_file():
                raise LabError(f"{out_json} does not exist; run the sweep first (without --report-only)")
            data = json.loads(out_json.read_text())
        else:
            data = run_sweep(grids, v3, r1, args.n, out_json, args.resume)
            data["command"] = command.strip()
            out_json.write_text(json.dumps(data, indent=2) + "\n")
    except MergeError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    plot(data, args.out / "think-sweep.png")
    (args.out / "think-sweep.md").write_text(
        summary(data, data.get("command", "python -m benchmarks.think_sweep"))
    )
    print((args.out / "think-sweep.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
