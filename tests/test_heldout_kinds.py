"""Per-kind held-out report: its pooled figure equals the trainer's, groups partition the pairs, bad input named."""
import json

import pytest

from jrm_engine.checkpoint import latest_checkpoint
from jrm_engine.heldout_kinds import SECTIONS, heldout_kinds, kind_label, main
from jrm_engine.train import build_parser, config_from_args, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("kinds")
    cfg = config_from_args(build_parser().parse_args(["--preset", "smoke", "--out", str(out), "--quiet"]))
    final = train(cfg, quiet=True)
    return latest_checkpoint(out), final


def test_pooled_accuracy_equals_the_trainers_held_out_figure(run):
    ckpt, final = run
    result = heldout_kinds(ckpt, pairs=final["pairs"], batch=5)  # the trainer's 16 pairs, in odd-sized batches
    assert result["overall"]["accuracy"] == pytest.approx(final["accuracy"])
    assert result["overall"]["low"] <= result["overall"]["accuracy"] <= result["overall"]["high"]


def test_groups_partition_the_pairs_and_the_json_is_written(run, tmp_path, capsys):
    ckpt, _ = run
    path = tmp_path / "kinds.json"
    assert main([str(ckpt), "--pairs", "40", "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    for section in SECTIONS:
        groups = result[section].values()
        assert sum(g["pairs"] for g in groups) == 40
        correct = sum(round(g["accuracy"] * g["pairs"]) for g in groups)
        assert correct == round(result["overall"]["accuracy"] * 40)
    assert set(result["per_operation"]) <= {"recolour", "remove", "add", "move"}
    assert all(k.split(" vs ")[0] in ("correct", "over_edit", "artefact", "wrong_object", "wrong_attribute")
               for k in result["per_kind"])
    verdicts = {"correct", "overdone", "noisy", "wrong object", "unchanged", "wrong colour", "wrong shape",
                "wrong place", "wrong direction", "wrong action"}
    assert all(set(k.split(" vs ")) <= verdicts for k in result["per_verdict"])
    assert "all" in capsys.readouterr().out


def test_kind_label_names_the_better_candidate_first():
    assert kind_label(("no_change", "correct"), (0, 3)) == "correct vs no_change"
    assert kind_label(("correct", "artefact"), (3, 2)) == "correct vs artefact"


def test_bad_input_is_named(run, tmp_path, capsys):
    ckpt, _ = run
    assert main([str(tmp_path), "--pairs", "4"]) == 2
    assert "not a jrm_engine checkpoint" in capsys.readouterr().err
    assert main([str(ckpt), "--pairs", "0"]) == 2
    assert "--pairs must be positive" in capsys.readouterr().err
