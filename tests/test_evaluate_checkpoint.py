"""Checkpoint scoring: batched scoring through jrm_engine.scoring, scores.json round trip, and end to end."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from jrm_engine.evaluate import main
from jrm_engine.vision import load_image

FIXTURES = Path(__file__).parent / "fixtures"
CASES = [("editreward-bench", "editscore_bench.jsonl"), ("editreward-bench-tiger", "tiger_bench.parquet"),
         ("mmrb2-edit", "mmrb2/edit.json")]


class PixelScorer:
    """A deterministic stand-in model: mean edited-image brightness minus mean source brightness."""

    calls: list[int] = []

    def __init__(self, path, backend):
        self.path, self.backend = path, backend

    @classmethod
    def load(cls, path, backend="torch"):
        return cls(path, backend)

    def __enter__(self):  # Scorer is a context manager (the runtime backend stops its workers on exit)
        return self

    def __exit__(self, *exc):
        return None

    def score(self, sources, instructions, edited):
        assert len(sources) == len(instructions) == len(edited)
        PixelScorer.calls.append(len(edited))
        mean = lambda im: float(load_image(im, 16).astype(np.float64).mean())
        return np.array([mean(e) - mean(s) for s, e in zip(sources, edited)], dtype=np.float32)


def metrics_of(report: dict) -> dict:
    # notes differ only for synthetic (rendering size, read from the checkpoint)
    drop = {"checkpoint", "backend", "batch_size", "scores_file", "seconds", "notes"}
    return {k: v for k, v in report.items() if k not in drop}


@pytest.mark.parametrize("bench,data", CASES)
def test_checkpoint_scores_agree_with_scores_file(tmp_path, monkeypatch, bench, data):
    monkeypatch.setitem(sys.modules, "jrm_engine.scoring", types.SimpleNamespace(Scorer=PixelScorer))
    PixelScorer.calls = []
    out = tmp_path / "ckpt"
    assert main([str(tmp_path), "--bench", bench, "--data", str(FIXTURES / data), "--batch-size", "3",
                 "--out", str(out), "--quiet"]) == 0
    assert max(PixelScorer.calls) <= 3  # batched
    scored = json.loads((out / "report.json").read_text())
    assert sum(PixelScorer.calls) == scored["candidates_scored"]
    again = tmp_path / "again"
    assert main(["--bench", bench, "--data", str(FIXTURES / data), "--scores", str(out / "scores.json"),
                 "--out", str(again), "--quiet"]) == 0
    assert metrics_of(json.loads((again / "report.json").read_text())) == metrics_of(scored)


def test_train_on_fixture_data_then_evaluate(tmp_path):
    """`python -m jrm_engine.train --preset smoke --data FIXTURE --max-steps 2`, then evaluate the checkpoint."""
    pytest.importorskip("jrm_engine.scoring", reason="jrm_engine.scoring (the Scorer API) has not landed yet")
    from jrm_engine.train import main as train_main

    run = tmp_path / "run"
    assert train_main(["--preset", "smoke", "--data", str(FIXTURES / "editreward_data.parquet"), "--max-steps",
                       "2", "--out", str(run), "--quiet", "--set", "train.num_threads=1"]) == 0
    for bench, data in CASES[:1] + CASES[2:] + [("synthetic", None)]:
        where = ["--data", str(FIXTURES / data)] if data else ["--synthetic-n", "8"]
        out = tmp_path / bench
        assert main([str(run), "--bench", bench, *where, "--out", str(out), "--quiet", "--batch-size", "4"]) == 0
        scored = json.loads((out / "report.json").read_text())
        assert Path(scored["checkpoint"]).parent.name == "checkpoints"  # the run folder's latest checkpoint
        again = tmp_path / f"{bench}-again"
        assert main(["--bench", bench, *where, "--scores", str(out / "scores.json"), "--out", str(again),
                     "--quiet"]) == 0
        assert metrics_of(json.loads((again / "report.json").read_text())) == metrics_of(scored)


def test_help_explains_benchmarks_and_keys(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for phrase in ("editreward-bench-tiger", "<group>:<letter>", "<pair id>:A", "--exclude-bad", "tie-calibrated"):
        assert phrase in text
