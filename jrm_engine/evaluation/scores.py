"""Candidate scores: the `--scores` file format, its checks, and scoring a benchmark with a checkpoint.

File format (what `--scores` reads and what checkpoint scoring writes as `scores.json`):
- a JSON object `{"<candidate key>": score, ...}`, or JSON Lines of `{"key": "<candidate key>", "score": score}`;
- a score is a number; for `editreward-bench` it may instead be `{"prompt_following": x, "consistency": y,
  "overall": z}` (EditScore's per-dimension scores), used for the rows of that dimension.
Keys are per benchmark (see `benchmarks.py`). Every key the evaluated items need must be present and finite; keys the
benchmark does not have are an error too (a typo would otherwise go unnoticed). With `exclude_bad`, items with a
missing or non-finite score are left out and listed, and unknown keys are listed as ignored.
"""
from __future__ import annotations

import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .benchmarks import MAX_NAMED, Benchmark, CandidateInput, SideBySide

def read_scores(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--scores {path}: no such file")
    text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        return data
    scores: dict[str, Any] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"--scores {path} line {n}: not JSON ({e.msg})") from None
        if not isinstance(row, dict) or "key" not in row or "score" not in row:
            raise ValueError(f"--scores {path} line {n}: expected {{\"key\": ..., \"score\": ...}}")
        if str(row["key"]) in scores:
            raise ValueError(f"--scores {path} line {n}: key {row['key']!r} appears twice")
        scores[str(row["key"])] = row["score"]
    return scores


def write_scores(path: str | Path, scores: dict[str, float]) -> Path:
    """Atomic write (temporary file + rename) of a `{key: score}` JSON object."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(scores, f, indent=1)
    os.replace(tmp, path)
    return path


@dataclass
class CheckedScores:
    """The benchmark's items that can be judged, with the scores they use, and what was left out and why."""

    items: list
    scores: dict[str, Any]
    excluded: list[str] = field(default_factory=list)
    ignored_keys: list[str] = field(default_factory=list)

    def score(self, key: str, dimension: str | None) -> float:
        value = self.scores[key]
        return float(value[dimension]) if isinstance(value, dict) else float(value)


def _problem(value: Any, dimension: str | None) -> str | None:
    if isinstance(value, dict):
        if dimension is None:
            return "per-dimension scores are only meaningful for editreward-bench"
        if dimension not in value:
            return f"no score for dimension {dimension!r}"
        value = value[dimension]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"score {value!r} is not a number"
    if not math.isfinite(value):
        return f"score is {value}"
    return None


def check_scores(bench: Benchmark, scores: dict[str, Any], exclude_bad: bool) -> CheckedScores:
    needed = {key for it in bench.items for key in it.keys}
    unknown = sorted(set(scores) - needed)
    kept, excluded = [], []
    for it in bench.items:
        dimension = getattr(it, "dimension", None)
        problems = [f"{key}: missing" if key not in scores else f"{key}: {_problem(scores[key], dimension)}"
                    for key in it.keys if key not in scores or _problem(scores[key], dimension)]
        if problems:
            excluded.append(f"{it.name}: " + "; ".join(problems))
        else:
            kept.append(it)
    if not exclude_bad and (excluded or unknown):
        parts = []
        if excluded:
            parts.append(f"{len(excluded)} items lack a usable score:\n  " + "\n  ".join(excluded[:MAX_NAMED])
                         + (f"\n  ... and {len(excluded) - MAX_NAMED} more" if len(excluded) > MAX_NAMED else ""))
        if unknown:
            parts.append(f"{len(unknown)} keys are not candidates of this benchmark: "
                         + ", ".join(repr(k) for k in unknown[:MAX_NAMED])
                         + (" ..." if len(unknown) > MAX_NAMED else ""))
        raise ValueError("scores do not match the benchmark: " + "\n".join(parts)
                         + "\n(pass --exclude-bad to evaluate the rest and report what was left out)")
    return CheckedScores(kept, scores, excluded, unknown)


def side_by_side(images: list[Image.Image]) -> Image.Image:
    """Input images pasted left to right at the height of the first."""
    height = images[0].height
    resized = [im.resize((max(1, round(im.width * height / im.height)), height)) for im in images]
    canvas = Image.new("RGB", (sum(im.width for im in resized), height))
    x = 0
    for im in resized:
        canvas.paste(im, (x, 0))
        x += im.width
    return canvas


def _pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(image).convert("RGB")
    with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as im:
        return im.convert("RGB")


def _materialise(image):
    return side_by_side([_pil(im) for im in image.images]) if isinstance(image, SideBySide) else image


def score_candidates(scorer, candidates: list[CandidateInput], batch_size: int, quiet: bool = False
                     ) -> dict[str, float]:
    """Score every candidate once, in batches, through `scorer.score(sources, instructions, edited)`."""
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    out: dict[str, float] = {}
    with tqdm(total=len(candidates), desc="scoring", unit="cand", disable=quiet, dynamic_ncols=True) as bar:
        for start in range(0, len(candidates), batch_size):
            batch = candidates[start:start + batch_size]
            rewards = np.asarray(scorer.score([_materialise(c.source) for c in batch],
                                              [c.instruction for c in batch], [c.image for c in batch]),
                                 dtype=np.float64).reshape(-1)
            if len(rewards) != len(batch):
                raise RuntimeError(f"scorer returned {len(rewards)} scores for {len(batch)} candidates")
            out.update({c.key: float(r) for c, r in zip(batch, rewards)})
            bar.update(len(batch))
    return out
