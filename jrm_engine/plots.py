"""PNG plots of a training run's curves, from its metrics.jsonl."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_training(metrics_file: str | Path, out_png: str | Path) -> Path:
    rows = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("loss", "joint"), ("rank_loss", "rank (BT)"), ("lm_loss", "LM (explanation)")):
        ax_loss.plot([r["step"] for r in train], [r[key] for r in train], label=label, lw=1)
    ax_loss.set_xlabel("step"), ax_loss.set_ylabel("train loss"), ax_loss.set_yscale("log"), ax_loss.legend()
    ax_loss.set_title("training losses")
    ax_acc.plot([r["step"] for r in evals], [r["accuracy"] for r in evals], "o-", label="held-out")
    ax_acc.plot([r["step"] for r in train], [r["train_accuracy_ema"] for r in train], lw=1, label="train (EMA)")
    ax_acc.axhline(0.5, color="grey", ls=":", lw=1)
    ax_acc.set_xlabel("step"), ax_acc.set_ylabel("pairwise accuracy"), ax_acc.set_ylim(0.3, 1.0), ax_acc.legend()
    ax_acc.set_title("preference accuracy")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)
