"""`python -m jrm_engine.evaluate`: benchmark numbers for a checkpoint, or for scores another model produced.

    python -m jrm_engine.evaluate runs/x --bench editreward-bench --data EditReward-Bench/test.parquet
    python -m jrm_engine.evaluate --bench mmrb2-edit --data MMRB2/benchmark/edit.json --scores gpt5.json

Writes OUT/report.json (every number, what was excluded and why), OUT/<bench>.png (accuracy per task type or subset
with the overall line; histogram of score margins for right and wrong pairs) and, when a checkpoint was scored,
OUT/scores.json in the `--scores` format, so the same numbers can be recomputed without the model.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from pathlib import Path

from .cli import exit_status
from .evaluation.benchmarks import BENCHMARKS, load_benchmark
from .evaluation.metrics import METRICS
from .evaluation.report import plot, table
from .evaluation.scores import check_scores, read_scores, score_candidates, write_scores

KEY_HELP = textwrap.dedent("""\
    benchmarks and their metrics (each as the benchmark's own scripts compute it):
      editreward-bench        EditScore's EditReward-Bench: a pair is right iff score(preferred) > score(rejected)
                              strictly; accuracy per task type, averaged over task types, per dimension.
      editreward-bench-tiger  TIGER-Lab's EditReward-Bench: groups of K = 2/3/4; pairwise accuracy (K = 2 with
                              tie-calibrated threshold: |margin| <= eps counts as a predicted tie; K = 3/4 without
                              ties) and group accuracy (all pairs of a group right), per K and overall.
      mmrb2-edit              MMRB2 image editing: strict accuracy on single- and multi-image prompts, overall =
                              (n_single*acc_single + n_multi*acc_multi) / (n_single + n_multi).
      synthetic               the built-in held-out split (no --data): strict accuracy per operation and overall.

    --scores FILE: a JSON object {"<key>": score} or JSON Lines {"key": ..., "score": ...}; keys per benchmark:
      editreward-bench        the row's `key` entries (key[0] = output_images[0], key[1] = output_images[1]);
                              a score may be {"prompt_following": x, "consistency": y, "overall": z}
      editreward-bench-tiger  <group>:<letter>, group = row id before its first "_", letter from comparison_type
      mmrb2-edit              <pair id>:A and <pair id>:B
      synthetic               <pair id>:a and <pair id>:b (pair ids synthetic-heldout-<seed>-<i>)
    A checkpoint run writes OUT/scores.json in this format.""")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jrm_engine.evaluate",
        description="Evaluate a Joint Reward Model checkpoint (or any model's scores) on EditReward-Bench, "
                    "MMRB2 image editing or the synthetic held-out split. Prints the table in the layout of the "
                    "papers' tables and writes a JSON report and a PNG.",
        epilog=KEY_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", nargs="?", help="checkpoint folder (or a training run's --out folder); "
                                                 "not needed with --scores")
    p.add_argument("--bench", required=True, choices=BENCHMARKS, help="which benchmark format --data holds")
    p.add_argument("--data", help="benchmark file: parquet, JSON Lines or JSON (image paths relative to it)")
    p.add_argument("--scores", help="evaluate these candidate scores instead of scoring with a checkpoint")
    p.add_argument("--backend", default="torch",
                   help="jrm_engine.scoring backend: torch (a checkpoint folder), compiled (.pt2), onnx, tensorrt, "
                        "or any other registered one (default: torch)")
    p.add_argument("--batch-size", type=int, default=16, help="candidates per scoring call (default: 16)")
    p.add_argument("--out", help="output folder (default: eval/<bench>)")
    p.add_argument("--exclude-bad", action="store_true",
                   help="leave out bad rows and items without a usable score, and report them, instead of stopping")
    p.add_argument("--multi-image", default="first", choices=("first", "concat"),
                   help="MMRB2 prompts with several input images: score against the first one (default) or all "
                        "pasted side by side; a scalar JRM reads one source image")
    p.add_argument("--synthetic-n", type=int, default=512, help="pairs in the synthetic held-out split")
    p.add_argument("--synthetic-seed", type=int, default=0, help="seed of the synthetic held-out split")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def resolve_checkpoint(path: str) -> Path:
    """A training run's --out folder stands for its latest checkpoint; a checkpoint folder is checked for readable
    safetensors; an exported engine file (.pt2, .onnx, .plan) is passed on to its backend's loader."""
    from .checkpoint import latest_checkpoint, verify_safetensors

    folder = Path(path)
    if folder.is_file():
        return folder
    if not folder.is_dir():
        raise FileNotFoundError(f"CHECKPOINT {folder}: no such checkpoint folder or engine file")
    if not (folder / "jrm.json").is_file() and (folder / "checkpoints").is_dir():
        latest = latest_checkpoint(folder)
        if latest is None:
            raise FileNotFoundError(f"{folder}: a training run without a saved checkpoint")
        return latest
    verify_safetensors(folder)
    return folder


def _image_size(checkpoint: Path | None) -> int:
    """The checkpoint's model.image_size (the synthetic split is rendered at it); 84 otherwise."""
    if checkpoint is not None and (checkpoint / "jrm.json").is_file():
        return int(json.loads((checkpoint / "jrm.json").read_text())["model"]["image_size"])
    return 84


def evaluate(args: argparse.Namespace) -> dict:
    if args.scores is None and args.checkpoint is None:
        raise ValueError("give a CHECKPOINT to score with, or --scores FILE")
    if args.scores is not None and args.checkpoint is not None:
        raise ValueError("give either a CHECKPOINT or --scores FILE, not both")
    checkpoint = resolve_checkpoint(args.checkpoint) if args.checkpoint is not None else None
    bench = load_benchmark(args.bench, args.data, exclude_bad=args.exclude_bad, multi_image=args.multi_image,
                           synthetic_n=args.synthetic_n, synthetic_seed=args.synthetic_seed,
                           image_size=_image_size(checkpoint))
    if not bench.items:
        raise ValueError(f"{args.bench} {args.data}: no rows left to evaluate")
    out = Path(args.out or f"eval/{args.bench}")
    out.mkdir(parents=True, exist_ok=True)  # only once the input is known good: a bad one leaves no empty folder
    t0 = time.perf_counter()
    if args.scores is not None:
        scores, source = read_scores(args.scores), {"scores_file": str(args.scores)}
    else:
        from .scoring import Scorer

        needed = list(dict.fromkeys(key for it in bench.items for key in it.keys))
        with Scorer.load(checkpoint, backend=args.backend) as scorer:  # the runtime backend stops its workers
            scores = score_candidates(scorer, [bench.candidates[k] for k in needed], args.batch_size, args.quiet)
        source = {"checkpoint": str(checkpoint), "backend": args.backend, "batch_size": args.batch_size,
                  "scores_file": str(write_scores(out / "scores.json", scores))}
    checked = check_scores(bench, scores, args.exclude_bad)
    result = METRICS[args.bench](checked.items, checked.score)
    report = {"bench": args.bench, "data": bench.path, **source, "seconds": time.perf_counter() - t0,
              "items": len(checked.items), "candidates_scored": len(scores), "notes": bench.notes,
              "excluded_rows": bench.excluded, "excluded_items": checked.excluded,
              "ignored_score_keys": checked.ignored_keys, **result.metrics}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    png = plot(args.bench, result, out / f"{args.bench}.png", args.bench)
    print(table(args.bench, result))
    for note in bench.notes:
        print(f"note: {note}")
    left_out = len(bench.excluded) + len(checked.excluded)
    if left_out or checked.ignored_keys:
        print(f"excluded: {len(bench.excluded)} bad rows, {len(checked.excluded)} items without a usable score, "
              f"{len(checked.ignored_keys)} unknown score keys ignored (listed in report.json)")
    print(f"report: {out / 'report.json'}\nplot:   {png}")
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_status(lambda: evaluate(args))


if __name__ == "__main__":
    sys.exit(main())
