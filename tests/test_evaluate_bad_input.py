"""Bad benchmark rows and bad score files: an error that names the rows, or with --exclude-bad a report."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from jrm_engine.evaluate import main

FIXTURES = Path(__file__).parent / "fixtures"
SCORES = {"e1": 0.9, "e2": 0.1, "e3": 0.5, "e4": 0.5, "e5": 0.2, "e6": 0.8, "e7": 0.7, "e8": 0.3, "e9": 0.6,
          "e10": 0.4}


def editscore_copy(tmp_path, mutate) -> Path:
    """The EditScore fixture next to its images, with `mutate(rows)` applied."""
    shutil.copytree(FIXTURES / "editscore_images", tmp_path / "editscore_images")
    rows = [json.loads(line) for line in (FIXTURES / "editscore_bench.jsonl").read_text().splitlines()]
    mutate(rows)
    path = tmp_path / "bench.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def evaluate(tmp_path, data: Path, scores: dict | str, *extra: str, bench="editreward-bench") -> tuple[int, dict]:
    scores_file = tmp_path / "scores.json"
    scores_file.write_text(scores if isinstance(scores, str) else json.dumps(scores))
    out = tmp_path / "out"
    rc = main(["--bench", bench, "--data", str(data), "--scores", str(scores_file), "--out", str(out), "--quiet",
               *extra])
    report = json.loads((out / "report.json").read_text()) if rc == 0 else {}
    return rc, report


def break_rows(rows):
    rows[2]["output_images"][1] = "editscore_images/does_not_exist.png"  # missing image file
    rows[3]["instruction"] = "  "  # empty instruction
    rows[4]["output_images"][0] = "editscore_images/e3.png"  # key e1 reused for a different image


def test_bad_rows_are_named(tmp_path, capsys):
    rc, _ = evaluate(tmp_path, editscore_copy(tmp_path, break_rows), SCORES)
    err = capsys.readouterr().err
    assert rc == 2
    assert "3 bad rows" in err and "does_not_exist.png" in err and "row 2" in err
    assert "row 3" in err and "empty instruction" in err
    assert "row 4" in err and "'e1' was already used" in err


def test_bad_rows_excluded_and_reported(tmp_path):
    rc, r = evaluate(tmp_path, editscore_copy(tmp_path, break_rows), SCORES, "--exclude-bad")
    assert rc == 0 and len(r["excluded_rows"]) == 3
    # Left: prompt_following color_alter rows 0, 1 (1/2); overall subject-add row 5 (0/1); consistency (1/1).
    assert r["dimensions"]["prompt_following"]["macro_average"] == 0.5
    assert r["dimensions"]["overall"]["macro_average"] == 0.0
    # e5..e8 only belonged to excluded rows: their scores are listed as ignored, not used.
    assert r["ignored_score_keys"] == ["e7", "e8"]


def test_score_file_problems_are_named(tmp_path, capsys):
    scores = dict(SCORES, e11=1.0)  # an id the benchmark does not have
    del scores["e6"]  # an id it needs
    scores["e9"] = float("nan")
    rc, _ = evaluate(tmp_path, FIXTURES / "editscore_bench.jsonl", json.dumps(scores))
    err = capsys.readouterr().err
    assert rc == 2
    assert "e6: missing" in err and "e9: score is nan" in err and "'e11'" in err


def test_score_file_problems_excluded(tmp_path):
    scores = dict(SCORES, e11=1.0)
    del scores["e6"]
    rc, r = evaluate(tmp_path, FIXTURES / "editscore_bench.jsonl", scores, "--exclude-bad")
    assert rc == 0
    # Rows 2 and 5 need e6: left out. prompt_following: color_alter 1/2, text_change 1/1 -> (0.5 + 1) / 2
    assert len(r["excluded_items"]) == 2 and all("e6: missing" in x for x in r["excluded_items"])
    assert r["dimensions"]["prompt_following"]["macro_average"] == 0.75
    assert r["ignored_score_keys"] == ["e11"]


def test_scores_as_json_lines(tmp_path):
    lines = "".join(json.dumps({"key": k, "score": v}) + "\n" for k, v in SCORES.items())
    rc, r = evaluate(tmp_path, FIXTURES / "editscore_bench.jsonl", lines)
    assert rc == 0 and r["dimensions"]["prompt_following"]["macro_average"] == 0.5


def test_incomplete_tiger_group_and_missing_mmrb2_image(tmp_path, capsys):
    rows = [json.loads(line) for line in (FIXTURES / "tiger_bench.jsonl").read_text().splitlines()]
    shutil.copytree(FIXTURES / "tiger_images", tmp_path / "tiger_images")
    path = tmp_path / "tiger.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["id"] != "g5_BvsC"))
    rc, _ = evaluate(tmp_path, path, {}, bench="editreward-bench-tiger")
    assert rc == 2 and "group g5" in capsys.readouterr().err

    shutil.copytree(FIXTURES / "mmrb2", tmp_path / "mmrb2")
    (tmp_path / "mmrb2" / "images" / "p2_1.png").unlink()
    scores = {f"p{i}:{s}": 0.0 for i in (1, 3, 4, 5) for s in "AB"}
    rc, r = evaluate(tmp_path, tmp_path / "mmrb2" / "edit.json", scores, "--exclude-bad", bench="mmrb2-edit")
    assert rc == 0 and len(r["excluded_rows"]) == 1 and "p2_1.png" in r["excluded_rows"][0]
    assert r["subsets"]["single"]["pairs"] == 3


def test_needs_checkpoint_or_scores(capsys):
    assert main(["--bench", "synthetic"]) == 2
    assert "CHECKPOINT" in capsys.readouterr().err
