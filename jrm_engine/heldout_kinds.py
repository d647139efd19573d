"""`python -m jrm_engine.heldout_kinds CHECKPOINT`: held-out pairwise accuracy of a checkpoint trained on the
synthetic set, overall, per operation, per candidate-kind pair and per verdict pair (a wrong attribute split into
which one: colour, shape, place, direction, action), each with a 95% Wilson interval.

The trainer's held-out figure is one pooled number; which part of the task is unlearnt (where an object went,
which attribute changed) only shows per kind. Scoring goes through the `Scorer` (the same path users take), and
`--pairs` can exceed the trainer's `data.n_heldout` so the intervals are narrow enough to compare two runs: item i
of the held-out split is the same pair whatever the split's length.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from .cli import exit_status
from .config import JRMConfig
from .data.synthetic import SyntheticEditDataset
from .metrics import wilson_interval
from .scoring import Scorer


def kind_label(kinds: tuple[str, str], grades: tuple[int, int]) -> str:
    """'correct vs no_change': the better candidate's kind first, whatever side it was drawn on. Also for verdicts
    ('correct vs wrong shape')."""
    better, worse = kinds if grades[0] > grades[1] else kinds[::-1]
    return f"{better} vs {worse}"


SECTIONS = ("per_operation", "per_kind", "per_verdict")


def summarise(right: list[bool], groups: dict[str, list[int]]) -> dict:
    """{group: {accuracy, low, high, pairs}} for every group of pair indices, plus the pooled figure."""
    def one(idx: list[int]) -> dict:
        k = sum(right[i] for i in idx)
        low, high = wilson_interval(k, len(idx))
        return {"accuracy": k / len(idx), "low": low, "high": high, "pairs": len(idx)}
    return {"all": one(list(range(len(right)))), **{g: one(idx) for g, idx in sorted(groups.items())}}


def heldout_kinds(checkpoint: str | Path, pairs: int = 2048, batch: int = 32) -> dict:
    checkpoint = Path(checkpoint)
    cfg_file = checkpoint / "jrm.json"
    if not cfg_file.is_file():
        raise ValueError(f"{checkpoint}: not a jrm_engine checkpoint (no jrm.json)")
    cfg = JRMConfig.from_dict(json.loads(cfg_file.read_text()))
    if cfg.data.source != "synthetic":
        raise ValueError(f"{checkpoint}: trained on data.source={cfg.data.source!r}; per-kind held-out figures "
                         "exist only for the synthetic set")
    if pairs <= 0:
        raise ValueError(f"--pairs must be positive, got {pairs}")
    data = SyntheticEditDataset(pairs, seed=cfg.data.seed, image_size=cfg.model.image_size, split="heldout")
    scorer = Scorer.load(checkpoint)
    right: list[bool] = []
    by_op: dict[str, list[int]] = defaultdict(list)
    by_kind: dict[str, list[int]] = defaultdict(list)
    by_verdict: dict[str, list[int]] = defaultdict(list)  # a wrong attribute split by which one (shape, colour, ...)
    for start in range(0, pairs, batch):
        items = [data[i] for i in range(start, min(pairs, start + batch))]
        sources = [p.source for p in items for _ in (0, 1)]
        instructions = [p.instruction for p in items for _ in (0, 1)]
        edited = [c.image for p in items for c in (p.a, p.b)]
        rewards = np.asarray(scorer.score(sources, instructions, edited)).reshape(-1, 2)
        for j, (pair, (ra, rb)) in enumerate(zip(items, rewards)):
            i = start + j
            info = data.describe(i)
            right.append(bool(ra > rb) if pair.preference == "a" else bool(rb > ra))  # a reward tie counts wrong
            by_op[info.operation].append(i)
            by_kind[kind_label(info.kinds, info.grades)].append(i)
            by_verdict[kind_label(info.verdicts, info.grades)].append(i)
    overall = summarise(right, {})
    return {"checkpoint": str(checkpoint), "pairs": pairs, "overall": overall["all"],
            "per_operation": {k: v for k, v in summarise(right, by_op).items() if k != "all"},
            "per_kind": {k: v for k, v in summarise(right, by_kind).items() if k != "all"},
            "per_verdict": {k: v for k, v in summarise(right, by_verdict).items() if k != "all"}}


def _line(name: str, r: dict) -> str:
    return f"{name:34s} {r['accuracy']:.3f}  [{r['low']:.3f}, {r['high']:.3f}]  {r['pairs']:5d} pairs"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jrm_engine.heldout_kinds", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="checkpoint folder (e.g. runs/default/checkpoints/latest)")
    p.add_argument("--pairs", type=int, default=2048, help="held-out pairs to score")
    p.add_argument("--json", help="also write the figures to this JSON file")

    def run() -> None:
        args = p.parse_args(argv)
        result = heldout_kinds(args.checkpoint, args.pairs)
        print(_line("all", result["overall"]))
        for section in SECTIONS:
            print(f"{section.replace('_', ' ')}:")
            for name, r in result[section].items():
                print(_line(name, r))
        if args.json:
            path = Path(args.json)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(result, indent=2))
            tmp.replace(path)  # atomic: a reader never sees half a file
    return exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
