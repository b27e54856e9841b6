"""Train the three mini parents: `mini-base`, then `mini-v3` and `mini-r1` fine-tuned from it.

    python -m merge.lab.train --out merge/lab/models [--device cpu|cuda] [--base-steps N] [--ft-steps N]

1. base: pretrained on the task in both styles (half the replies direct, half with a think block), loss on
   every token, like a base model that has seen both kinds of text;
2. mini-v3: the base fine-tuned on direct replies only (loss on the reply);
3. mini-r1: the base fine-tuned on think replies only. The two children share the base, as V3-0324 and R1 share
   DeepSeek-V3-Base, so the merge stage can interpolate between them.

Routing follows DeepSeek-V3's auxiliary-loss-free balancing: after each step every MoE layer's
`e_score_correction_bias` moves by `bias_rate` towards under-used experts, so all routed experts get work and the
bias the shipped config's `topk_method: noaux_tc` needs is a trained one.

Reproducibility: fixed seed, `torch.use_deterministic_algorithms(True)`, a fixed thread count. The shipped
models were trained with `--device cuda` on an H100 (the shared 2-core CPU was oversubscribed); two runs there
gave bit-identical model.safetensors (sha256 compared). Across devices (CPU vs CUDA) or torch builds the float
rounding differs, so a regenerated model matches within tolerance: it passes the same bars, its bits differ.
See merge/lab/README.md.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from merge.errors import MergeError
from merge.lab.data import IGNORE, Encoded, Encoder, collate, greedy_exact, training_problems
from merge.lab.model import LabDims, export_model, hf_config, make_dims
from merge.lab.task import Style, heldout_problems


class TrainConfig(BaseModel):
    """Optimisation settings of the three phases."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    device: str = "cpu"
    threads: int = Field(1, ge=1)
    batch_size: int = Field(128, ge=1)
    base_steps: int = Field(3000, ge=1)
    ft_steps: int = Field(600, ge=1)
    base_lr: float = Field(3e-3, gt=0)
    ft_lr: float = Field(1e-3, gt=0)
    warmup: int = Field(100, ge=0)
    bias_rate: float = Field(1e-3, ge=0)
    think_share: float = Field(0.5, ge=0, le=1)  # share of think-style replies in pretraining
    report_every: int = Field(0, ge=0)  # held-out check every N steps (0: only at the end of a phase)
    log_every: int = Field(200, ge=1)  # loss line every N steps


def set_determinism(cfg: TrainConfig) -> None:
    """Seeds and deterministic kernels; called before any model is built."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class ExpertBalancer:
    """DeepSeek-V3's bias update: bias_e += rate * sign(mean load - load_e), per MoE layer, after each step."""

    def __init__(self, model: torch.nn.Module, rate: float) -> None:
        self.rate = rate
        self.routers = [m for m in model.modules() if type(m).__name__ == "DeepseekV3TopkRouter"]
        self.loads: dict[int, torch.Tensor] = {}
        for i, router in enumerate(self.routers):
            router.register_forward_hook(self._hook(i))

    def _hook(self, i: int):
        def record(module: torch.nn.Module, args: tuple, output: tuple) -> None:
            if module.training:  # output: (router_logits, topk_weights, topk_indices [tokens, k])
                load = torch.bincount(output[2].flatten(), minlength=module.num_experts).float()
                # summed over a step's forwards (mini-tools runs a shared prefix, then the rows' suffixes)
                self.loads[i] = self.loads.get(i, 0) + load

        return record

    @torch.no_grad()
    def update(self) -> None:
        for i, router in enumerate(self.routers):
            load = self.loads.pop(i)
            router.e_score_correction_bias += self.rate * torch.sign(load.mean() - load)


def style_pools(enc: Encoder, styles: list[Style]) -> list[list[Encoded]]:
    """One pool of encoded training problems per entry of `styles` (a style listed twice is drawn twice as often)."""
    problems = training_problems()
    encoded = {s: [enc.example(p, s) for p in problems] for s in set(styles)}
    return [encoded[s] for s in styles]


LossFn = Callable[[torch.nn.Module, list[Encoded]], torch.Tensor]


def batch_loss(
    model: torch.nn.Module, rows: list[Encoded], pad_id: int, reply_only: bool, device: str
) -> torch.Tensor:
    """Mean next-token cross-entropy of a right-padded batch (prompt tokens excluded when `reply_only`)."""
    ids, labels = collate(rows, pad_id, reply_only)
    logits = model(input_ids=ids.to(device)).logits
    return torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), labels.to(device).flatten(), ignore_index=IGNORE
    )


def run_phase(
    model: torch.nn.Module,
    cfg: TrainConfig,
    pools: Sequence[Sequence[Encoded]],
    pad_id: int,
    steps: int,
    lr: float,
    reply_only: bool,
    name: str,
    check: Callable[[torch.nn.Module, str], object] | None = None,
    loss_fn: LossFn | None = None,
) -> None:
    """One training phase: AdamW; each batch row draws a pool, then an example of it, from a seeded generator.

    The pools are parallel (row i of every pool comes from the same training problem), so they have one length.
    `check(model, label)` runs every `cfg.report_every` steps, in eval mode. `loss_fn(model, rows)` replaces
    `batch_loss` (the tool model computes shared prompt prefixes once per batch).
    """
    if len({len(p) for p in pools}) != 1:
        raise ValueError("run_phase: pools must have the same length (one example per training problem)")
    gen = torch.Generator().manual_seed(cfg.seed + len(name))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    balancer = ExpertBalancer(model, cfg.bias_rate)
    model.train()
    start = time.monotonic()
    for step in range(steps):
        rows = torch.randint(len(pools[0]), (cfg.batch_size,), generator=gen).tolist()
        kinds = torch.randint(len(pools), (cfg.batch_size,), generator=gen).tolist()
        batch = [pools[k][r] for r, k in zip(rows, kinds, strict=True)]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, cfg.warmup)
        loss = loss_fn(model, batch) if loss_fn else batch_loss(model, batch, pad_id, reply_only, cfg.device)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        balancer.update()
        if step % cfg.log_every == 0 or step == steps - 1:
            print(
                f"[{name}] step {step:5d} loss {loss.item():.4f} ({time.monotonic() - start:.0f}s)",
                flush=True,
            )
        if check and cfg.report_every and (step + 1) % cfg.report_every == 0 and step + 1 < steps:
            model.eval()
            check(model, f"{name}@{step + 1}")
            model.train()
    model.eval()


def report(model: torch.nn.Module, enc: Encoder, device: str, name: str) -> dict[str, float]:
    """Teacher-forced greedy exactness on 400 held-out prompts, for each reply style."""
    problems = heldout_problems(400)
    scores = {
        s: greedy_exact(model, [enc.example(p, s) for p in problems], enc.pad_id, device)
        for s in ("direct", "think")
    }
    print(
        f"[{name}] held-out greedy exact: direct {scores['direct']:.3f} think {scores['think']:.3f}",
        flush=True,
    )
    return scores


def train_all(out: Path, dims: LabDims, cfg: TrainConfig) -> None:
    """Train base, mini-v3 and mini-r1 and write them to out/mini-base, out/mini-v3, out/mini-r1."""
    from transformers import DeepseekV3ForCausalLM

    set_determinism(cfg)
    enc = Encoder()
    base = DeepseekV3ForCausalLM(hf_config(dims)).to(cfg.device)
    think_every = max(1, round(1 / cfg.think_share)) if cfg.think_share > 0 else 0
    mix: list[Style] = [
        "think" if think_every and i % think_every == 0 else "direct" for i in range(max(1, think_every))
    ]

    def check(model: torch.nn.Module, label: str) -> None:
        report(model, enc, cfg.device, label)

    pools = style_pools(enc, mix)
    run_phase(base, cfg, pools, enc.pad_id, cfg.base_steps, cfg.base_lr, False, "mini-base", check)
    report(base, enc, cfg.device, "mini-base")
    export_model(base, dims, out / "mini-base")
    state = {k: v.clone() for k, v in base.state_dict().items()}
    for name, style in (("mini-v3", "direct"), ("mini-r1", "think")):
        torch.manual_seed(cfg.seed + 1)
        child = DeepseekV3ForCausalLM(hf_config(dims)).to(cfg.device)
        child.load_state_dict(state)
        pools = style_pools(enc, [style])
        run_phase(child, cfg, pools, enc.pad_id, cfg.ft_steps, cfg.ft_lr, True, name, check)
        report(child, enc, cfg.device, name)
        export_model(child, dims, out / name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m merge.lab.train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("merge/lab/models"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-steps", type=int, default=TrainConfig().base_steps)
    parser.add_argument("--ft-steps", type=int, default=TrainConfig().ft_steps)
    parser.add_argument("--batch-size", type=int, default=TrainConfig().batch_size)
    parser.add_argument("--base-lr", type=float, default=TrainConfig().base_lr)
    parser.add_argument("--ft-lr", type=float, default=TrainConfig().ft_lr)
    parser.add_argument("--report-every", type=int, default=0)
    parser.add_argument(
        "--dim", action="append", default=[], metavar="NAME=INT", help="override a LabDims field"
    )
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.dim:
        key, _, value = item.partition("=")
        if not value.lstrip("-").isdigit():
            raise SystemExit(f"error: --dim {item!r}: write NAME=INT, e.g. --dim hidden_size=128")
        overrides[key] = int(value)
    try:
        dims = make_dims(**overrides)
    except MergeError as e:
        raise SystemExit(f"error: {e}") from None
    cfg = TrainConfig(
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        base_steps=args.base_steps,
        ft_steps=args.ft_steps,
        batch_size=args.batch_size,
        base_lr=args.base_lr,
        ft_lr=args.ft_lr,
        report_every=args.report_every,
    )
    train_all(args.out, dims, cfg)


if __name__ == "__main__":
    main()
