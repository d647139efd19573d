"""Each benchmark metric against numbers worked out by hand on the fixtures in tests/fixtures/ (via --scores)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jrm_engine.evaluate import main
from jrm_engine.evaluation.metrics import accuracy_with_ties, accuracy_without_ties

FIXTURES = Path(__file__).parent / "fixtures"


def run(tmp_path, bench: str, data: str | None, scores: dict, *extra: str) -> dict:
    scores_file = tmp_path / "scores.json"
    scores_file.write_text(json.dumps(scores))
    out = tmp_path / "out"
    argv = ["--bench", bench, "--scores", str(scores_file), "--out", str(out), "--quiet", *extra]
    if data:
        argv += ["--data", str(FIXTURES / data)]
    assert main(argv) == 0
    assert (out / f"{bench}.png").is_file()
    return json.loads((out / "report.json").read_text())


# Scalar scores for EditScore's rows (preferred key first):
#   prompt_following: color_alter  e1 .9 > e2 .1 right, e3 .5 = e4 .5 tie -> wrong   -> 1/2
#                     subject-add  e5 .2 < e6 .8 wrong                                -> 0/1
#                     text_change  e7 .7 > e8 .3 right                                -> 1/1
#   overall:          color_alter  e1 > e2 right (key pair reused from prompt_following) -> 1/1
#                     subject-add  e5 < e6 wrong                                       -> 0/1  (no text_change row)
#   consistency:      style_change e9 .6 > e10 .4 right                               -> 1/1
EDITSCORE = {"e1": 0.9, "e2": 0.1, "e3": 0.5, "e4": 0.5, "e5": 0.2, "e6": 0.8, "e7": 0.7, "e8": 0.3, "e9": 0.6,
             "e10": 0.4}


def test_editscore_strict_per_task_macro_per_dimension(tmp_path):
    r = run(tmp_path, "editreward-bench", "editscore_bench.jsonl", EDITSCORE)
    pf = r["dimensions"]["prompt_following"]
    assert pf["per_task_type"]["color_alter"]["accuracy"] == 0.5  # 1 / 2: the tie counts wrong
    assert pf["macro_average"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)  # = 0.5, not the pooled 2/4
    ov = r["dimensions"]["overall"]
    assert set(ov["per_task_type"]) == {"color_alter", "subject-add"}  # text_change absent: not averaged in
    assert ov["macro_average"] == pytest.approx((1.0 + 0.0) / 2)
    assert r["dimensions"]["consistency"]["macro_average"] == 1.0
    assert r["candidates_scored"] == 10  # e1/e2 occur in two rows, scored once


def test_editscore_per_dimension_scores(tmp_path):
    # EditScore-style per-dimension scores: e1/e2 win on prompt_following but lose on overall.
    scores = {k: {"prompt_following": v, "consistency": v, "overall": v} for k, v in EDITSCORE.items()}
    scores["e1"] = {"prompt_following": 0.9, "consistency": 0.0, "overall": 0.0}
    r = run(tmp_path, "editreward-bench", "editscore_bench.jsonl", scores)
    assert r["dimensions"]["prompt_following"]["per_task_type"]["color_alter"]["accuracy"] == 0.5
    # overall: color_alter e1 0.0 < e2 0.1 -> 0/1; subject-add 0/1 -> macro 0
    assert r["dimensions"]["overall"]["macro_average"] == 0.0


# TIGER-Lab groups (pair margins m = s_i - s_j, human label h):
#   K=2: g1 A>B  m=+.5  h=+1 | g2 A=B m=+.05 h=0 | g3 B>A m=+.2 h=-1 | g4 A=B m=-.8 h=0
#        eps=0: C=1 (g1), Thm=0 -> 1/4;  eps=.05: + g2 both-tie -> 2/4;  eps=.2: g3 becomes model tie, still 2/4;
#        eps=.5: g1 becomes model tie -> 1/4;  eps=.8: C=0, Thm=2 -> 2/4.  Best 0.5 at the smallest eps=.05.
#        groups: g1 right, g2 |.05|<=.05 right, g3 wrong, g4 |.8|>.05 wrong -> 2/4
#   K=3: g5 A3 B2 C1, order A>B>C: 3/3 right;  g6 A2 B1 C0, order B>A>C: AB wrong, AC, BC right
#        pairwise 5/6, groups 1/2
#   K=4: g7 A4 B3 C3 D1, order A>B>C>D: BC margin 0 is discordant -> 5/6, group 0/1
#   overall pairwise, 16 pairs pooled: eps=0 C=11 -> 11/16; eps=.05 adds g2 -> 12/16; eps=.2, .5 no better;
#        eps=.8 C=10 Thm=2 -> 12/16 (tie, first kept); eps>=1 loses margins of 1 -> worse. 0.75
#   overall groups: (2 + 1 + 0) / 7
TIGER = {"g1:A": 0.8, "g1:B": 0.3, "g2:A": 0.5, "g2:B": 0.45, "g3:A": 0.6, "g3:B": 0.4, "g4:A": 0.1, "g4:B": 0.9,
         "g5:A": 3, "g5:B": 2, "g5:C": 1, "g6:A": 2, "g6:B": 1, "g6:C": 0, "g7:A": 4, "g7:B": 3, "g7:C": 3,
         "g7:D": 1}


@pytest.mark.parametrize("data", ["tiger_bench.jsonl", "tiger_bench.parquet"])  # paths / embedded bytes
def test_tiger_pairwise_and_group(tmp_path, data):
    r = run(tmp_path, "editreward-bench-tiger", data, TIGER)
    k2, k3, k4, o = r["subsets"]["K=2"], r["subsets"]["K=3"], r["subsets"]["K=4"], r["overall"]
    assert k2["pairwise_accuracy"] == 0.5 and k2["tie_epsilon"] == pytest.approx(0.05)
    assert k2["group_accuracy"] == 0.5
    assert k3["pairwise_accuracy"] == pytest.approx(5 / 6) and k3["group_accuracy"] == 0.5
    assert k4["pairwise_accuracy"] == pytest.approx(5 / 6) and k4["group_accuracy"] == 0.0
    assert o["pairwise_accuracy"] == 0.75 and o["pairs"] == 16
    assert o["group_accuracy"] == pytest.approx(3 / 7)


def test_tie_accuracy_helpers():
    h = np.array([1, 0, -1, 0])
    m = np.array([0.5, 0.05, 0.2, -0.8])
    assert accuracy_with_ties(h, m) == (0.5, 0.05)
    # Without ties: human ties leave the denominator, a zero margin is discordant: C=1 (0.5), D=2 (0.2, 0.0) -> 1/3
    assert accuracy_without_ties(np.array([1, -1, 0, 1]), np.array([0.5, 0.2, 0.3, 0.0])) == pytest.approx(1 / 3)


# MMRB2 pairs (chosen first): p1 A .9>.1 right, p2 B .2<.7 wrong, p3 B .3=.3 wrong (tie), p4 A .6>.5 right
# -> single 2/4; p5 (two input images) B .4>.1 right -> multi 1/1; overall (4*.5 + 1*1) / 5 = 0.6
MMRB2 = {"p1:A": 0.9, "p1:B": 0.1, "p2:A": 0.7, "p2:B": 0.2, "p3:A": 0.3, "p3:B": 0.3, "p4:A": 0.6, "p4:B": 0.5,
         "p5:A": 0.1, "p5:B": 0.4}


@pytest.mark.parametrize("multi_image", ["first", "concat"])
def test_mmrb2_single_multi_weighted(tmp_path, multi_image):
    r = run(tmp_path, "mmrb2-edit", "mmrb2/edit.json", MMRB2, "--multi-image", multi_image)
    assert r["subsets"]["single"] == {"accuracy": 0.5, "correct": 2, "pairs": 4}
    assert r["subsets"]["multi"] == {"accuracy": 1.0, "correct": 1, "pairs": 1}
    assert r["overall"]["accuracy"] == pytest.approx(0.6)
    assert any("multi-image" in n for n in r["notes"])


def test_synthetic_with_scores(tmp_path):
    from jrm_engine.data.synthetic import SyntheticEditDataset

    data = SyntheticEditDataset(8, seed=0, image_size=56, split="heldout")
    scores = {}
    for i in range(8):
        p = data[i]
        good = p.preference  # the held-out split has no ties
        flip = i < 2  # two pairs judged the wrong way round -> 6/8
        scores[f"{p.id}:{good}"] = 0.0 if flip else 1.0
        scores[f"{p.id}:{'b' if good == 'a' else 'a'}"] = 1.0 if flip else 0.0
    r = run(tmp_path, "synthetic", None, scores, "--synthetic-n", "8")
    assert r["accuracy"] == 0.75 and r["pairs"] == 8
