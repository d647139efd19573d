"""Printed tables in the layout of the papers' tables, and the PNG of accuracies and score margins."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .metrics import EDITSCORE_TASK_TYPES, MetricResult  # noqa: E402


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _grid(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def table(bench: str, result: MetricResult) -> str:
    m = result.metrics
    if bench == "editreward-bench":
        # EditScore's table: one row per dimension, one column per task type, then the average over task types.
        present = {t for d in m["dimensions"].values() for t in d["per_task_type"]}
        tasks = [t for t in EDITSCORE_TASK_TYPES if t in present] + sorted(present - set(EDITSCORE_TASK_TYPES))
        rows = [[dim.replace("_", " ").title()]
                + [_fmt(d["per_task_type"].get(t, {}).get("accuracy")) for t in tasks] + [_fmt(d["macro_average"])]
                for dim, d in m["dimensions"].items()]
        missing = [t for t in EDITSCORE_TASK_TYPES if t not in present]
        note = f"\n(task types absent from the data: {', '.join(missing)})" if missing else ""
        return _grid(["Dimension", *tasks, "Average"], rows) + note
    if bench == "editreward-bench-tiger":
        rows = [[k, str(v["pairs"]), _fmt(v["pairwise_accuracy"]), str(v["groups"]), _fmt(v["group_accuracy"])]
                for k, v in m["subsets"].items()]
        o = m["overall"]
        rows.append(["Overall", str(o["pairs"]), _fmt(o["pairwise_accuracy"]), str(o["groups"]),
                     _fmt(o["group_accuracy"])])
        return _grid(["Subset", "Pairs", "Pairwise acc", "Groups", "Group acc"], rows)
    if bench == "mmrb2-edit":
        s, o = m["subsets"], m["overall"]
        return _grid(["Image editing", "Single", "Multi", "Overall"],
                     [["Accuracy", _fmt(s["single"]["accuracy"]), _fmt(s["multi"]["accuracy"]), _fmt(o["accuracy"])],
                      ["Pairs", str(s["single"]["pairs"]), str(s["multi"]["pairs"]), str(o["pairs"])]])
    per = m["per_operation"]
    return _grid(["Synthetic held-out", *per, "Macro", "Overall"],
                 [["Accuracy", *(_fmt(v["accuracy"]) for v in per.values()), _fmt(m["macro_average"]),
                   _fmt(m["accuracy"])],
                  ["Pairs", *(str(v["total"]) for v in per.values()), "", str(m["pairs"])]])


def plot(bench: str, result: MetricResult, out_png: str | Path, title: str) -> Path:
    fig, (ax_bar, ax_hist) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    series = list(result.bars)
    categories = list(dict.fromkeys(c for s in series for c in result.bars[s]))
    x = np.arange(len(categories))
    width = 0.8 / max(1, len(series))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, s in enumerate(series):
        values = [result.bars[s].get(c) for c in categories]
        ax_bar.bar(x + (i - (len(series) - 1) / 2) * width, [np.nan if v is None else v for v in values], width,
                   label=s, color=colours[i % len(colours)])
        if result.lines.get(s) is not None:
            ax_bar.axhline(result.lines[s], color=colours[i % len(colours)], ls="--", lw=1.2,
                           label=f"{s} overall {result.lines[s]:.3f}")
    ax_bar.axhline(0.5, color="grey", ls=":", lw=1)
    ax_bar.set_xticks(x, categories, rotation=35 if len(categories) > 4 else 0, ha="right" if len(categories) > 4
                      else "center", fontsize=8)
    ax_bar.set_ylim(0, 1), ax_bar.set_ylabel("accuracy"), ax_bar.legend(fontsize=7, loc="best")
    ax_bar.set_title(f"{title}: accuracy per {'task type' if bench == 'editreward-bench' else 'subset'}")
    margins, correct = result.margins, result.correct
    if len(margins):
        bins = np.histogram_bin_edges(margins, bins=30)
        ax_hist.hist(margins[correct], bins=bins, alpha=0.7, label=f"right ({int(correct.sum())})")
        ax_hist.hist(margins[~correct], bins=bins, alpha=0.7, label=f"wrong ({int((~correct).sum())})")
        ax_hist.axvline(0, color="k", lw=1)
        ax_hist.legend(fontsize=8)
    ax_hist.set_xlabel("score(preferred) - score(other)"), ax_hist.set_ylabel("pairs")
    ax_hist.set_title("score margins")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)
