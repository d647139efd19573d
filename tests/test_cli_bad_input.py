"""Bad command-line input to `jrm train` / `evaluate` / `explain` / `jrm-export`: one line on stderr naming the
problem, exit status 2, and nothing written. A table of cases run in process through each command's `main(argv)`,
and two through a real subprocess."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jrm_engine import evaluate, explain, train
from jrm_engine.export import cli as export_cli

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "tests" / "fixtures" / "editscore_images" / "e1.png"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished two-step smoke run: OUT/checkpoints/latest is a complete checkpoint."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert train.main(["--preset", "smoke", "--out", str(out), "--quiet", "--max-steps", "2"]) == 0
    return out


def truncated_copy(run_dir: Path, tmp_path: Path, file: str) -> Path:
    """A copy of the run whose latest checkpoint has `file` cut to half its length."""
    copy = tmp_path / "broken-run"
    shutil.copytree(run_dir, copy, symlinks=True)
    target = copy / "checkpoints" / "latest" / file
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return copy


def assert_one_line_error(rc: int, err: str, expected: str) -> None:
    """Exit status 2 and one error line, the last on stderr (before it, only transformers' weight-loading progress
    bar may appear, from a load that succeeded)."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert rc == 2, f"exit status {rc}, stderr {err!r}"
    errors = [line for line in lines if "error: " in line]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, f"not one error line: {err!r}"
    assert all(line.startswith("Loading weights") for line in lines[:-1]), f"other output: {err!r}"
    assert expected in errors[0], f"{expected!r} not in {errors[0]!r}"


# (argv after --preset smoke --quiet --out OUT, text the error line must contain)
TRAIN_CASES = [
    (["--set", "nope.lr=1"], "unknown config section 'nope'"),
    (["--set", "train.nope=1"], "unknown config key 'train.nope'"),
    (["--set", "train.lr=fast"], "train.lr: expected a number, got 'fast'"),
    (["--set", "train.lr"], "--set expects KEY=VALUE"),
    (["--set", "train.lr=-1e-3"], "train.lr: must be positive"),
    (["--set", "train.bf16=maybe"], "train.bf16: expected a boolean"),
    (["--set", "model.tiny=3"], "'model.tiny' is a section"),
    (["--set", "train.betas=[0.9]"], "train.betas: expected tuple"),
    (["--set", "loss.impl=cuda"], "loss.impl: must be one of"),
    (["--set", "model.image_size=50"], "multiple of 28"),
    (["--max-steps", "0"], "train.max_steps: must be at least 1, got 0"),
    (["--max-steps", "-5"], "train.max_steps: must be at least 1, got -5"),
    (["--set", "train.batch_pairs=0"], "train.batch_pairs: must be at least 1"),
    (["--set", "train.grad_accum=-1"], "train.grad_accum: must be at least 1"),
    (["--set", "train.save_every=0"], "train.save_every: must be at least 1"),
    (["--alpha", "1.5"], "must be in [0, 1]"),
    (["--backbone", "{tmp}/no-such-model"], "no-such-model: no such folder"),
    (["--data", "{tmp}/no-such-data.jsonl"], "no-such-data.jsonl: no such file"),
    (["--config", "{tmp}/no-such.yaml"], "no-such.yaml: no such file"),
]


@pytest.mark.parametrize("extra, expected", TRAIN_CASES, ids=[" ".join(c[0]) for c in TRAIN_CASES])
def test_train_rejects_bad_arguments_before_writing(extra, expected, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--preset", "smoke", "--quiet", "--out", str(out), *(a.format(tmp=tmp_path) for a in extra)]
    assert_one_line_error(train.main(argv), capsys.readouterr().err, expected)
    assert not out.exists()


def test_train_unwritable_output_path(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    rc = train.main(["--preset", "smoke", "--quiet", "--out", str(blocker / "out")])
    assert_one_line_error(rc, capsys.readouterr().err, "Not a directory")
    assert blocker.read_text() == ""


def test_resume_with_a_different_config_changes_nothing(run_dir, capsys):
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    rc = train.main(["--preset", "smoke", "--quiet", "--out", str(run_dir), "--max-steps", "2", "--resume",
                     "--alpha", "0.1"])
    assert_one_line_error(rc, capsys.readouterr().err, "the config differs from the one saved in "
                          f"{run_dir / 'checkpoints' / 'step-000002'} (saved -> given: loss.alpha: 0.7 -> 0.1)")
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before


def test_a_run_saved_before_vision_lr_existed_resumes_as_it_trained(tmp_path, capsys):
    """Its jrm.json has no train.vision_lr: its tower trained at train.lr, so it reads as None, not as today's
    default 0 (frozen), whose optimizer would lack the tower's state."""
    out = tmp_path / "old-run"
    common = ["--preset", "smoke", "--out", str(out), "--max-steps", "2"]
    assert train.main([*common, "--quiet", "--set", "train.vision_lr=none"]) == 0
    saved = out / "checkpoints" / "latest" / "jrm.json"
    config = json.loads(saved.read_text())
    del config["train"]["vision_lr"]
    saved.write_text(json.dumps(config))
    capsys.readouterr()
    assert_one_line_error(train.main([*common, "--quiet", "--resume"]), capsys.readouterr().err,
                          "train.vision_lr: None -> 0.0")
    assert train.main([*common, "--resume", "--set", "train.vision_lr=none"]) == 0
    assert "resumed from" in capsys.readouterr().out


@pytest.mark.parametrize("file", ["optimizer.safetensors", "reward_head.safetensors"])
def test_resume_from_a_truncated_checkpoint(run_dir, tmp_path, file, capsys):
    broken = truncated_copy(run_dir, tmp_path, file)
    rc = train.main(["--preset", "smoke", "--quiet", "--out", str(broken), "--max-steps", "2", "--resume"])
    assert_one_line_error(rc, capsys.readouterr().err, f"{file}: not a readable safetensors file")


def test_evaluate_bad_checkpoints(run_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    common = ["--bench", "synthetic", "--synthetic-n", "4", "--out", str(out), "--quiet"]
    rc = evaluate.main([str(tmp_path / "no-such-ckpt"), *common])
    assert_one_line_error(rc, capsys.readouterr().err, "no-such-ckpt: no such checkpoint folder or engine file")
    broken = truncated_copy(run_dir, tmp_path, "reward_head.safetensors")
    rc = evaluate.main([str(broken / "checkpoints" / "latest"), *common])
    assert_one_line_error(rc, capsys.readouterr().err, "reward_head.safetensors: not a readable safetensors file")
    rc = evaluate.main([str(broken), *common])  # the run folder stands for its latest checkpoint
    assert_one_line_error(rc, capsys.readouterr().err, "reward_head.safetensors: not a readable safetensors file")
    assert not out.exists()


def test_explain_bad_checkpoints_and_images(run_dir, tmp_path, capsys):
    images = ["--source", str(IMAGE), "--edited", str(IMAGE), "--instruction", "make it red"]
    rc = explain.main([str(tmp_path / "no-such-ckpt"), *images])
    assert_one_line_error(rc, capsys.readouterr().err, "not a jrm_engine checkpoint")
    broken = truncated_copy(run_dir, tmp_path, "reward_head.safetensors")
    rc = explain.main([str(broken / "checkpoints" / "latest"), *images])
    assert_one_line_error(rc, capsys.readouterr().err, "not a readable safetensors file")
    rc = explain.main([str(run_dir / "checkpoints" / "latest"), *images[:3], str(tmp_path / "no.png"),
                       *images[4:]])
    assert_one_line_error(rc, capsys.readouterr().err, "no.png")


def test_export_bad_checkpoints_and_outputs(run_dir, tmp_path, capsys):
    ckpt = run_dir / "checkpoints" / "latest"
    rc = export_cli.main([str(tmp_path / "no-such-ckpt"), "--onnx", str(tmp_path / "m.onnx")])
    assert_one_line_error(rc, capsys.readouterr().err, "no-such-ckpt")
    broken = truncated_copy(run_dir, tmp_path, "reward_head.safetensors")
    rc = export_cli.main([str(broken / "checkpoints" / "latest"), "--onnx", str(tmp_path / "m.onnx")])
    assert_one_line_error(rc, capsys.readouterr().err, "not a readable safetensors file")
    rc = export_cli.main([str(ckpt), "--onnx", str(tmp_path / "m.onnx"), "--buckets", "16,big"])
    assert_one_line_error(rc, capsys.readouterr().err, "--buckets '16,big'")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    rc = export_cli.main([str(ckpt), "--onnx", str(blocker / "m.onnx")])
    assert_one_line_error(rc, capsys.readouterr().err, "a-file")  # "File exists" or "Not a directory", by the OS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "broken-run"]


@pytest.mark.parametrize("argv, expected", [
    ([sys.executable, "-m", "jrm_engine.train", "--preset", "smoke", "--quiet", "--max-steps", "0"],
     "train.max_steps: must be at least 1"),
    ([sys.executable, "-m", "jrm_engine.cli", "export", "no-such-ckpt", "--onnx", "m.onnx"], "no-such-ckpt"),
])
def test_real_processes_exit_2_with_one_line(argv, expected, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([*argv, "--out", str(tmp_path / "out")] if "train" in argv[2] else argv, cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc.returncode, proc.stderr, expected)
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.onnx").exists()
