"""Fine-tune `mini-tools` from `mini-base`: a DeepSeek-V3 mini that calls an `add` tool when one is offered.

    python -m merge.lab.train_tools --out merge/lab/models [--base merge/lab/models/mini-base] [--steps N]

1. mini-base's weights (`model.load_checkpoint`) in the tool flavour's config: 9 more token ids, 512 positions
   (RoPE has no position weights, so only the vocabulary needs new parameters);
2. the new embedding and lm_head rows start at the mean of the old rows plus seeded noise of 1% of their spread
   (transformers' `mean_resizing` idea: a new token starts as an average token, so its logit starts ordinary
   and its embedding in-distribution, and the noise keeps the nine rows apart);
3. one phase of `train.run_phase` on the kinds call : followup : plain = 2 : 1 : 1 (`tools.tool_pools`), loss on the
   reply, with DeepSeek-V3's bias balancing as for the other children. The system text before `<｜User｜>` (BOS and
   the ~290-token tools section) is the same in every row that offers the same tool JSON, so `shared_prefix_loss`
   runs it once per batch and attends the rows to its cache: the same loss and gradients as whole rows (the test
   compares them), for about a quarter of the tokens;
4. teacher-forced greedy exactness of each kind on held-out problems, then export to OUT/mini-tools.

Same reproducibility as `train`: fixed seed, deterministic kernels, fixed threads; bits match only on the same
device type and torch build. The shipped model was trained on the shared 2-core CPU (see merge/lab/README.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from merge.lab.data import IGNORE, Encoded, collate, greedy_exact
from merge.lab.model import export_model, hf_config, load_checkpoint, make_dims
from merge.lab.task import heldout_problems
from merge.lab.tokenizer import USER, vocab_size
from merge.lab.tools import KINDS, SYSTEM_PROMPT, TOOL_VARIANTS, Kind, ToolEncoder, tool_pools
from merge.lab.train import TrainConfig, run_phase, set_determinism

MIX: list[Kind] = ["call", "call", "followup", "plain"]
GROWN_ROWS = ("model.embed_tokens.weight", "lm_head.weight")


def grow_vocab(state: dict[str, torch.Tensor], size: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Embedding and lm_head [V, H] -> [size, H]: old rows kept, new rows = mean + 0.01 * std * N(0, 1)."""
    out = dict(state)
    for name in GROWN_ROWS:
        old = state[name]
        mean, std = old.mean(0), old.std(0)
        noise = torch.randn(size - old.shape[0], old.shape[1], generator=gen, dtype=old.dtype)
        out[name] = torch.cat([old, mean + 0.01 * std * noise])
    return out


def shared_prefix_loss(
    model: torch.nn.Module, rows: list[Encoded], user_id: int, pad_id: int, device: str
) -> torch.Tensor:
    """Mean reply cross-entropy of `rows`, each row's text before its first `<｜User｜>` computed once per distinct
    prefix: prefix [1, P] -> cache expanded to [B, P] (a view: its gradient sums over the rows) -> suffixes [B, S]."""
    groups: dict[tuple[int, ...], list[Encoded]] = {}
    for row in rows:
        cut = row.ids.index(user_id)
        groups.setdefault(tuple(row.ids[:cut]), []).append(Encoded(row.ids[cut:], row.reply_start - cut))
    total = torch.zeros((), device=device)
    count = 0
    for prefix, suffixes in groups.items():
        cache = model(input_ids=torch.tensor([prefix], device=device), use_cache=True).past_key_values
        for layer in cache.layers:
            layer.keys = layer.keys.expand(len(suffixes), -1, -1, -1)
            layer.values = layer.values.expand(len(suffixes), -1, -1, -1)
        ids, labels = collate(suffixes, pad_id, reply_only=True)
        logits = model(input_ids=ids.to(device), past_key_values=cache).logits
        labels = labels.to(device)
        total = total + torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum"
        )
        count += int((labels != IGNORE).sum())
    return total / count


def report(
    model: torch.nn.Module, enc: ToolEncoder, device: str, label: str, n: int = 96
) -> dict[str, float]:
    """Teacher-forced greedy exactness of each kind's whole reply on `n` held-out problems, cycling through the
    tool variants and a system prompt on every third (so a model tied to one layout scores low)."""
    problems = heldout_problems(n)
    heads = [(TOOL_VARIANTS[i % len(TOOL_VARIANTS)], SYSTEM_PROMPT if i % 3 == 0 else None) for i in range(n)]
    rows = {k: [enc.example(p, k, *h) for p, h in zip(problems, heads, strict=True)] for k in KINDS}
    scores = {k: greedy_exact(model, rows[k], enc.pad_id, device) for k in KINDS}
    print(
        f"[{label}] held-out greedy exact: " + " ".join(f"{k} {v:.3f}" for k, v in scores.items()), flush=True
    )
    return scores


def train_tools(base_dir: Path, out: Path, cfg: TrainConfig) -> dict[str, float]:
    """Fine-tune mini-tools from the model in `base_dir`, write it to out/mini-tools; returns the final report."""
    from transformers import DeepseekV3ForCausalLM

    set_determinism(cfg)
    dims = make_dims()
    enc = ToolEncoder()
    pools = tool_pools(enc, MIX, cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    state = grow_vocab(load_checkpoint(base_dir), vocab_size(tools=True), gen)
    model = DeepseekV3ForCausalLM(hf_config(dims, tools=True))
    model.load_state_dict(state)
    model.to(cfg.device)

    def check(m: torch.nn.Module, label: str) -> None:
        report(m, enc, cfg.device, label)

    user_id = enc.tok.convert_tokens_to_ids(USER)

    def loss(m: torch.nn.Module, rows: list[Encoded]) -> torch.Tensor:
        return shared_prefix_loss(m, rows, user_id, enc.pad_id, cfg.device)

    run_phase(model, cfg, pools, enc.pad_id, cfg.ft_steps, cfg.ft_lr, True, "mini-tools", check, loss)
    final = report(model, enc, cfg.device, "mini-tools")
    export_model(model.cpu(), dims, out / "mini-tools", tools=True)
    return final


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m merge.lab.train_tools", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path("merge/lab/models"))
    parser.add_argument("--base", type=Path, default=Path("merge/lab/models/mini-base"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--report-every", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.base / "model.safetensors").is_file():
        raise SystemExit(
            f"error: {args.base} has no model.safetensors; pass the mini-base directory with --base"
        )
    cfg = TrainConfig(
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        batch_size=args.batch_size,
        ft_steps=args.steps,
        ft_lr=args.lr,
        warmup=args.warmup,
        report_every=args.report_every,
        log_every=25,
    )
    train_tools(args.base, args.out, cfg)


if __name__ == "__main__":
    main()
