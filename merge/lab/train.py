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
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from merge.errors import MergeError
from merge.lab.data import Encoder, collate, greedy_exact, training_problems
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
                self.loads[i] = torch.bincount(output[2].flatten(), minlength=module.num_experts).float()

        return record

    @torch.no_grad()
    def update(self) -> None:
        for i, router in enumerate(self.routers):
            load = self.loads[i]
            router.e_score_correction_bias += self.rate * torch.sign(load.mean() - load)


def run_phase(
    model: torch.nn.Module,
    cfg: TrainConfig,
    enc: Encoder,
    styles: list[Style],
    steps: int,
    lr: float,
    reply_only: bool,
    name: str,
) -> None:
    """One training phase: AdamW, batches drawn from the training problems with a seeded generator."""
    problems = training_problems()
    encoded = {s: [enc.example(p, s) for p in problems] for s in set(styles)}
    gen = torch.Generator().manual_seed(cfg.seed + len(name))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    balancer = ExpertBalancer(model, cfg.bias_rate)
    model.train()
    start = time.monotonic()
    for step in range(steps):
        rows = torch.randint(len(problems), (cfg.batch_size,), generator=gen).tolist()
        kinds = torch.randint(len(styles), (cfg.batch_size,), generator=gen).tolist()
        ids, labels = collate(
            [encoded[styles[k]][r] for r, k in zip(rows, kinds, strict=True)], enc.pad_id, reply_only
        )
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, cfg.warmup)
        logits = model(input_ids=ids.to(cfg.device)).logits
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), labels.to(cfg.device).flatten(), ignore_index=-100
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        balancer.update()
        if step % 200 == 0 or step == steps - 1:
            print(
                f"[{name}] step {step:5d} loss {loss.item():.4f} ({time.monotonic() - start:.0f}s)",
                flush=True,
            )
        if cfg.report_every and (step + 1) % cfg.report_every == 0 and step + 1 < steps:
            model.eval()
            report(model, enc, cfg.device, f"{name}@{step + 1}")
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
    run_phase(base, cfg, enc, mix, cfg.base_steps, cfg.base_lr, reply_only=False, name="mini-base")
    report(base, enc, cfg.device, "mini-base")
    export_model(base, dims, out / "mini-base")
    state = {k: v.clone() for k, v in base.state_dict().items()}
    for name, style in (("mini-v3", "direct"), ("mini-r1", "think")):
        torch.manual_seed(cfg.seed + 1)
        child = DeepseekV3ForCausalLM(hf_config(dims)).to(cfg.device)
        child.load_state_dict(state)
        run_phase(child, cfg, enc, [style], cfg.ft_steps, cfg.ft_lr, reply_only=True, name=name)
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
