"""`python -m jrm_engine.train`: train a Joint Reward Model (ranking loss + explanation LM loss, one backbone).

With no arguments it builds a tiny random-init Qwen2.5-VL, saves it as a normal model folder, loads it back
through `from_pretrained`, and trains it on the built-in synthetic edit-preference set on the CPU.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .backbone import build_tiny_backbone
from .checkpoint import latest_checkpoint, restore_training_state, save_checkpoint
from .cli import exit_status
from .config import PRESETS, JRMConfig, load_config
from .data.collate import Batch, PairCollator
from .data.sources import build_datasets, vocabulary_for
from .losses import joint_loss
from .metrics import effective_rank, pairwise_accuracy
from .model import RewardModel
from .plots import plot_training
from .vision import VisionSpec


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def loss_impl(cfg: JRMConfig, device: torch.device) -> str:
    if cfg.loss.impl != "auto":
        return cfg.loss.impl
    return "triton" if device.type == "cuda" else "torch"


class StepSampler:
    """The pairs of optimizer step s, micro-batch m: a pure function of (seed, s, m), so a resumed run sees
    exactly the batches an uninterrupted one would."""

    def __init__(self, n: int, batch: int, grad_accum: int, seed: int):
        if n < batch:
            raise ValueError(f"data has {n} training pairs, fewer than train.batch_pairs={batch}")
        self.n, self.batch, self.accum, self.seed = n, batch, grad_accum, seed
        self.per_epoch = n // batch
        self._epoch, self._perm = -1, None

    def indices(self, step: int, micro: int) -> list[int]:
        k = step * self.accum + micro
        epoch, pos = divmod(k, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return self._perm[pos * self.batch:(pos + 1) * self.batch].tolist()


def make_model(cfg: JRMConfig, out: Path) -> RewardModel:
    folder = cfg.model.backbone
    if folder is None:
        spec = VisionSpec(image_size=cfg.model.image_size)
        folder = build_tiny_backbone(out / "tiny-backbone", vocabulary_for(cfg.data), cfg.model.tiny, spec,
                                     cfg.model.reward_token, seed=cfg.train.seed)
    return RewardModel.from_backbone(folder, cfg)


def param_groups(model: RewardModel, cfg: JRMConfig) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.backbone.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    head_lr = cfg.train.head_lr or cfg.train.lr
    return [{"params": decay, "weight_decay": cfg.train.weight_decay, "lr": cfg.train.lr},
            {"params": no_decay, "weight_decay": 0.0, "lr": cfg.train.lr},
            {"params": list(model.head.parameters()), "weight_decay": 0.0, "lr": head_lr}]


def cosine_with_warmup(optimizer, total: int, warmup_frac: float):
    warmup = max(1, int(total * warmup_frac))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def compute_loss(model: RewardModel, batch: Batch, cfg: JRMConfig, impl: str):
    out = model(**batch.model_inputs())
    result = joint_loss(out.hidden.flatten(0, 1), model.lm_weight, batch.lm_labels.flatten(), out.rewards,
                        batch.chosen, batch.rejected, alpha=cfg.loss.alpha, rank_loss=cfg.loss.rank_loss,
                        margin=cfg.loss.margin, impl=impl, tie_a=batch.tie_a, tie_b=batch.tie_b,
                        num_labelled=batch.num_labelled)
    return result, out


@torch.no_grad()
def evaluate(model: RewardModel, pairs, collate: PairCollator, cfg: JRMConfig, device, impl: str,
             batch_pairs: int = 32, keep_features: bool = False) -> dict:
    model.eval()
    correct = total = 0
    rank_sum = lm_sum = 0.0
    n_batches = 0
    features = []
    for start in range(0, len(pairs), batch_pairs):
        batch = collate([pairs[i] for i in range(start, min(len(pairs), start + batch_pairs))]).to(device)
        with autocast(device, cfg):
            result, out = compute_loss(model, batch, cfg, impl)
        if len(batch.chosen):
            correct += int(pairwise_accuracy(out.rewards.float(), batch.chosen, batch.rejected).item()
                           * len(batch.chosen) + 0.5)
            total += len(batch.chosen)
        rank_sum += float(result.rank_loss)
        lm_sum += float(result.lm_loss)
        n_batches += 1
        if keep_features:
            features.append(out.features.float().cpu())
    model.train()
    metrics = {"accuracy": correct / max(1, total), "pairs": total, "rank_loss": rank_sum / n_batches,
               "lm_loss": lm_sum / n_batches}
    if keep_features:
        metrics["effective_rank"] = effective_rank(torch.cat(features))
    return metrics


def autocast(device: torch.device, cfg: JRMConfig):
    enabled = device.type == "cuda" and cfg.train.bf16
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def train(cfg: JRMConfig, resume: bool = False, quiet: bool = False) -> dict:
    tc = cfg.train
    out = Path(tc.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(tc.device)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    seed_everything(tc.seed)
    impl = loss_impl(cfg, device)

    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is not None:
        saved = JRMConfig.from_dict(json.loads((ckpt / "jrm.json").read_text()))
        if saved.to_dict() != cfg.to_dict():
            raise ValueError(f"--resume: the config differs from the one saved in {ckpt}; "
                             "resume with the same arguments (see jrm.json there)")
        model = RewardModel.from_pretrained(ckpt)
    else:
        model = make_model(cfg, out)
    model.to(device)
    if device.type == "cuda" and cfg.model.gradient_checkpointing:
        model.backbone.gradient_checkpointing_enable()
    model.train()

    train_set, heldout = build_datasets(cfg.data, cfg.model.image_size)
    collate = PairCollator(model.layout, model.spec)
    sampler = StepSampler(len(train_set), tc.batch_pairs, tc.grad_accum, tc.seed)
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=tc.lr, betas=tuple(tc.betas))
    scheduler = cosine_with_warmup(optimizer, tc.max_steps, tc.warmup_frac)
    start = 0
    if ckpt is not None:
        start = restore_training_state(ckpt, optimizer, scheduler)["step"]
        print(f"resumed from {ckpt} at step {start}")
    else:
        (out / "metrics.jsonl").write_text("")
    (out / "config.json").write_text(cfg.to_json())

    metrics_file = (out / "metrics.jsonl").open("a")
    log = lambda row: (metrics_file.write(json.dumps(row) + "\n"), metrics_file.flush())
    acc_ema, last_eval = None, None
    t0 = time.perf_counter()
    bar = tqdm(range(start, tc.max_steps), initial=start, total=tc.max_steps, desc="train", disable=quiet,
               dynamic_ncols=True)
    for step in bar:
        stats = {"loss": 0.0, "rank_loss": 0.0, "lm_loss": 0.0, "accuracy": 0.0}
        for micro in range(tc.grad_accum):
            batch = collate([train_set[i] for i in sampler.indices(step, micro)]).to(device)
            with autocast(device, cfg):
                result, out_ = compute_loss(model, batch, cfg, impl)
            (result.loss / tc.grad_accum).backward()
            for key in ("loss", "rank_loss", "lm_loss"):
                stats[key] += float(getattr(result, key).detach()) / tc.grad_accum
            if len(batch.chosen):
                stats["accuracy"] += float(pairwise_accuracy(out_.rewards.detach().float(), batch.chosen,
                                                             batch.rejected)) / tc.grad_accum
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        acc_ema = stats["accuracy"] if acc_ema is None else 0.98 * acc_ema + 0.02 * stats["accuracy"]
        done = step + 1
        log({"kind": "train", "step": done, **stats, "train_accuracy_ema": acc_ema, "grad_norm": grad_norm,
             "lr": scheduler.get_last_lr()[0], "elapsed_s": time.perf_counter() - t0})
        postfix = {"loss": f"{stats['loss']:.3f}", "lm": f"{stats['lm_loss']:.3f}", "acc": f"{acc_ema:.2f}"}
        if done % tc.eval_every == 0 or done == tc.max_steps:
            last_eval = evaluate(model, heldout, collate, cfg, device, impl)
            log({"kind": "eval", "step": done, **last_eval, "elapsed_s": time.perf_counter() - t0})
            postfix["heldout"] = f"{last_eval['accuracy']:.3f}"
        bar.set_postfix(postfix)
        if done % tc.save_every == 0 or done == tc.max_steps:
            save_checkpoint(out, done, model, optimizer, scheduler)
    metrics_file.close()

    final = evaluate(model, heldout, collate, cfg, device, impl, keep_features=True)
    final.update(step=tc.max_steps, alpha=cfg.loss.alpha, train_seconds=time.perf_counter() - t0,
                 device=str(device), torch=torch.__version__, loss_impl=impl)
    (out / "final_metrics.json").write_text(json.dumps(final, indent=2))
    plot = plot_training(out / "metrics.jsonl", out / "training_curves.png")
    checkpoint = latest_checkpoint(out)
    print(f"\nheld-out pairwise accuracy: {final['accuracy']:.4f} ({final['pairs']} pairs), "
          f"effective rank of reward features: {final['effective_rank']:.2f}")
    print(f"checkpoint: {checkpoint}\nmetrics:    {out / 'metrics.jsonl'}, {out / 'final_metrics.json'}\n"
          f"plots:      {plot}")
    return final


def parse_overrides(items: list[str]) -> dict[str, str]:
    overrides = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set expects KEY=VALUE (e.g. loss.margin=0.5), got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value.strip()
    return overrides


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jrm_engine.train",
        description="Train a Joint Reward Model: a Bradley-Terry reward head and the LM head (explanations of "
                    "each judgement) on one vision-language backbone, L = (1 - alpha) L_rank + alpha L_LM. "
                    "With no arguments: a tiny random-init Qwen2.5-VL trained on the built-in synthetic "
                    "image-editing preference set, on the CPU in about ten minutes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="named starting configuration")
    p.add_argument("--config", help="YAML or TOML file overriding the preset (sections: model, data, loss, train)")
    p.add_argument("--out", help="output folder: checkpoints/, metrics.jsonl, training_curves.png")
    p.add_argument("--backbone", help="local Qwen2-VL / Qwen2.5-VL / Qwen3-VL model folder (default: tiny)")
    p.add_argument("--data", help="EditReward-style preference data (parquet or JSON Lines); default: synthetic")
    p.add_argument("--max-steps", type=int, help="optimizer steps")
    p.add_argument("--alpha", type=float, help="weight of the explanation LM loss (0 = ranking only)")
    p.add_argument("--rank-loss", choices=["bt", "bt_uncertainty"], help="ranking loss")
    p.add_argument("--seed", type=int, help="seed for initialisation, data order and synthetic data")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/latest")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set train.lr=1e-3 --set loss.margin=0.5")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> JRMConfig:
    overrides = parse_overrides(args.set)
    direct = {"train.out": args.out, "model.backbone": args.backbone, "train.max_steps": args.max_steps,
              "loss.alpha": args.alpha, "loss.rank_loss": args.rank_loss, "train.device": args.device,
              "data.path": args.data}
    if args.data:
        direct["data.source"] = "editreward"
    if args.seed is not None:
        direct["train.seed"] = direct["data.seed"] = args.seed
    overrides.update({k: v for k, v in direct.items() if v is not None})
    cfg = load_config(args.preset, args.config, overrides)
    if not 0.0 <= cfg.loss.alpha <= 1.0:
        raise ValueError(f"--alpha must be in [0, 1], got {cfg.loss.alpha}")
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_status(lambda: train(config_from_args(args), resume=args.resume, quiet=args.quiet))


if __name__ == "__main__":
    sys.exit(main())
