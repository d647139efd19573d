"""torchrun on the CPU (gloo, loopback): 2 processes under DDP and FSDP2 train exactly what 1 process trains;
checkpoints move between world sizes; a failing rank fails the job and leaves the last checkpoint resumable."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_reward_model
from safetensors.torch import load_file

from jrm_engine.checkpoint import latest_checkpoint
from jrm_engine.distributed import Dist, block_modules, choose_parallel
from jrm_engine.train import StepSampler, main

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# A global batch of 4 pairs per micro-batch (2 per rank at world size 2). lr 2.5e-4, not the smoke preset's 3e-3:
# AdamW divides each gradient by its own running RMS, so on an element whose gradient is ~0 the float noise of a
# different batch split (padding, GEMM shapes) becomes an update of up to lr, and the drift scales with lr. With
# the synthetic explanations of 2026-12 one element of 8,192 drifted by 1.4e-5 in 4 steps at lr 1e-3, 1.2e-5 at
# 5e-4 with grad_accum 2, and 6e-6 at 2.5e-4. The losses agree to ~1e-7 either way.
# The first-token term is on (an option users may set; every preset has it off), so its normalisation over ranks is
# checked too. fp32 steps on every CPU: a bf16 GEMM rounds each output, so a different batch split would move
# results by a bf16 ulp (2^-8), far beyond what this comparison can tell from a normalisation error.
COMMON = ["--preset", "smoke", "--quiet", "--set", "train.batch_pairs=4", "--set", "train.lr=2.5e-4",
          "--set", "train.num_threads=1", "--set", "loss.first_token_weight=1", "--set", "train.bf16=false"]


def run(out: Path, *args: str, nproc: int = 1, script: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m jrm_engine.train` (nproc=1) or `torchrun --standalone` (a free loopback port) in a subprocess."""
    entry = [str(script)] if script else ["-m", "jrm_engine.train"]
    launcher = [sys.executable] if nproc == 1 and script is None else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launcher, *entry, *COMMON, "--out", str(out), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def train_losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def weights(out: Path) -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint(out)
    return load_file(ckpt / "backbone" / "model.safetensors") | load_file(ckpt / "reward_head.safetensors")


def assert_same_run(got: Path, want: Path, steps: int = 4) -> None:
    lg, lw = train_losses(got), train_losses(want)
    assert lg.keys() == lw.keys() == set(range(1, steps + 1))
    for step in lw:
        assert abs(lg[step] - lw[step]) <= 1e-5 * abs(lw[step]), (step, lg[step], lw[step])
    wg, ww = weights(got), weights(want)
    assert wg.keys() == ww.keys()
    for name in ww:
        torch.testing.assert_close(wg[name], ww[name], rtol=1e-5, atol=1e-5, msg=name)
    fg, fw = (json.loads((o / "final_metrics.json").read_text()) for o in (got, want))
    assert (fg["accuracy"], fg["pairs"]) == (fw["accuracy"], fw["pairs"])  # sharded evaluation, gathered
    assert fg["effective_rank"] == pytest.approx(fw["effective_rank"], rel=1e-4)


def truncate_to_step_2(src: Path, dst: Path) -> Path:
    """A copy of a finished run as if it had stopped right after its step-2 checkpoint."""
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    root = dst / "checkpoints"
    subprocess.run(["rm", "-rf", str(root / "step-000004")], check=True)
    (root / "latest").unlink()
    (root / "latest").symlink_to("step-000002", target_is_directory=True)
    rows = (dst / "metrics.jsonl").read_text().splitlines()
    (dst / "metrics.jsonl").write_text("".join(r + "\n" for r in rows if json.loads(r)["step"] <= 2))
    return dst


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("dist")


@pytest.fixture(scope="module")
def one_process(runs):
    """The references: 1 process, grad_accum 1 and 2."""
    for accum in (1, 2):
        ok(run(runs / f"one-accum{accum}", "--set", f"train.grad_accum={accum}"))
    return {accum: runs / f"one-accum{accum}" for accum in (1, 2)}


@pytest.fixture(scope="module")
def fsdp_run(runs):
    proc = ok(run(runs / "fsdp-accum2", "--parallel", "fsdp", "--set", "train.grad_accum=2", nproc=2))
    return runs / "fsdp-accum2", proc


@pytest.mark.parametrize("parallel,accum", [("ddp", 1), ("ddp", 2), ("fsdp", 2)])
def test_two_processes_train_what_one_process_trains(one_process, runs, request, parallel, accum):
    if parallel == "fsdp":  # shared with the resume test
        out, proc = request.getfixturevalue("fsdp_run")
    else:
        out = runs / f"{parallel}-accum{accum}"
        proc = ok(run(out, "--parallel", parallel, "--set", f"train.grad_accum={accum}", nproc=2))
    assert f"2 processes, --parallel {parallel}" in proc.stdout
    assert proc.stdout.count("held-out pairwise accuracy") == 1  # only rank 0 reports
    assert_same_run(out, one_process[accum])


def test_checkpoint_from_two_fsdp_processes_resumes_in_one(one_process, fsdp_run, runs):
    out = truncate_to_step_2(fsdp_run[0], runs / "fsdp-then-one")
    proc = ok(run(out, "--set", "train.grad_accum=2", "--resume"))
    assert "resumed from" in proc.stdout
    assert_same_run(out, one_process[2])


def test_checkpoint_from_one_process_resumes_in_two_fsdp_processes(one_process, runs):
    out = truncate_to_step_2(one_process[2], runs / "one-then-fsdp")
    ok(run(out, "--parallel", "fsdp", "--set", "train.grad_accum=2", "--resume", nproc=2))
    assert_same_run(out, one_process[2])


def test_the_fused_triton_loss_under_fsdp_reads_the_whole_lm_head(runs):
    """The fused loss (TRITON_INTERPRET=1 on the CPU) gets the tied embedding FSDP2 gathered inside the root's
    forward: a sharded [V/2, H] weight would fail its shape check or give other losses."""
    triton = ["--max-steps", "2", "--set", "loss.impl=triton"]
    one, fsdp = runs / "triton-one", runs / "triton-fsdp"
    ok(run(one, *triton))
    ok(run(fsdp, *triton, "--parallel", "fsdp", nproc=2))
    assert json.loads((fsdp / "final_metrics.json").read_text())["loss_impl"] == "triton"
    assert_same_run(fsdp, one, steps=2)


DYING_RANK = """
import os, sys
import jrm_engine.train as t

forward, calls = t.JointObjective.forward, 0

def dying_forward(self, batch):
    global calls
    calls += self.training
    if self.training and calls == 5 and os.environ["RANK"] == "1":  # step 3, after the step-2 checkpoint
        raise RuntimeError("simulated failure")
    return forward(self, batch)

t.JointObjective.forward = dying_forward
sys.exit(t.record(t.main)())
"""


def test_a_dying_rank_fails_the_job_by_name_and_the_last_checkpoint_resumes(one_process, runs, tmp_path):
    script = tmp_path / "dying_rank.py"
    script.write_text(DYING_RANK)
    out = runs / "ddp-dies"
    proc = run(out, "--parallel", "ddp", "--set", "train.grad_accum=2", nproc=2, script=script)
    assert proc.returncode != 0
    log = proc.stdout + proc.stderr
    assert "rank 1 of 2 failed: RuntimeError: simulated failure" in log
    assert "rank      : 1" in log, log[-3000:]  # torchrun's summary names the root-cause rank
    assert latest_checkpoint(out).name == "step-000002"
    assert not (out / "checkpoints" / "step-000004").exists()
    # the checkpoint written by 2 processes resumes in 1 and ends where the uninterrupted run ends
    ok(run(out, "--set", "train.grad_accum=2", "--resume"))
    assert_same_run(out, one_process[2])


MISMATCHED_CONFIG = """
import os, sys
import jrm_engine.train as t

extra = ["--set", "loss.alpha=0.5"] if os.environ["RANK"] == "1" else []
sys.exit(t.main(sys.argv[1:] + extra))
"""


def test_a_rank_with_another_config_is_named(tmp_path):
    script = tmp_path / "mismatch.py"
    script.write_text(MISMATCHED_CONFIG)
    proc = run(tmp_path / "out", "--parallel", "ddp", nproc=2, script=script)
    assert proc.returncode != 0
    assert "the config differs between ranks (loss.alpha: rank 0 has 0.7, rank 1 has 0.5)" in proc.stderr


def test_parallel_none_under_torchrun_is_refused(tmp_path):
    proc = run(tmp_path / "out", "--parallel", "none", nproc=2)
    assert proc.returncode != 0
    assert "--parallel none trains in one process, but torchrun started WORLD_SIZE=2" in proc.stderr


def test_fsdp_without_a_launcher_says_how_to_launch(tmp_path, capsys):
    assert main(["--preset", "smoke", "--out", str(tmp_path), "--quiet", "--parallel", "fsdp"]) == 2
    assert "--parallel fsdp needs a distributed launch: torchrun --nproc-per-node N" in capsys.readouterr().err


def test_the_step_sampler_shards_each_micro_batch_into_whole_disjoint_pairs():
    one = StepSampler(40, batch=5, grad_accum=2, seed=3)
    ranks = [StepSampler(40, batch=5, grad_accum=2, seed=3, world_size=2, rank=r) for r in range(2)]
    seen = []
    for step in range(4):  # one epoch: 40 pairs / (5 * 2)
        for micro in range(2):
            shares = [s.indices(step, micro) for s in ranks]
            assert [len(x) for x in shares] == [2, 3]
            assert shares[0] + shares[1] == one.indices(step, micro)
            seen += shares[0] + shares[1]
    assert sorted(seen) == list(range(40))  # every pair once per epoch


def test_a_world_larger_than_the_pairs_of_a_micro_batch_is_refused():
    with pytest.raises(ValueError, match=r"world size 3 is larger than train.batch_pairs=2"):
        StepSampler(64, batch=2, grad_accum=1, seed=0, world_size=3, rank=0)


def test_fsdp_shards_every_decoder_layer_and_vision_block(tmp_path):
    model = tiny_reward_model(tmp_path)
    kinds = sorted({type(m).__name__ for m in block_modules(model)})
    assert kinds == ["Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock"]
    arch = model.config.model.tiny
    assert len(block_modules(model)) == arch.text_layers + arch.vision_layers
    assert choose_parallel("auto", Dist(), model, torch.device("cpu"))[0] == "none"
    assert choose_parallel("auto", Dist(rank=0, world_size=2, active=True), model, torch.device("cpu"))[0] == "ddp"
    assert choose_parallel("fsdp", Dist(rank=0, world_size=2, active=True), model, torch.device("cpu"))[0] == "fsdp"
