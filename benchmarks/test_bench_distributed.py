"""Training throughput of 1 process vs 2 torchrun processes on the CPU (gloo): preference pairs per second.

    pytest benchmarks/test_bench_distributed.py --benchmark-json=benchmarks/results/cpu-2core-distributed.json

Shape: the tiny default model (text 128 wide x 4 layers, vision 128 x 2, 84 px images), 16 pairs per optimizer
step, 8 steps. One process uses 2 threads; each of 2 processes uses 1, so both use the 2 cores. The benchmark
time is the whole command (start-up, model build, final evaluation); `extra_info` holds the steady-state rate,
measured from the trainer's own per-step clock from step 3 on, and the parameter + AdamW bytes rank 0 holds.
The GPU version is benchmarks/gpu/distributed.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAIRS, STEPS = 16, 8
SHAPE = ["--preset", "tiny", "--quiet", "--max-steps", str(STEPS), "--set", f"train.batch_pairs={PAIRS}",
         "--set", "train.eval_every=1000", "--set", "data.n_train=512", "--set", "data.n_heldout=32"]


def train_command(out: Path, parallel: str, nproc: int) -> list[str]:
    launcher = [sys.executable] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return [*launcher, "-m", "jrm_engine.train", *SHAPE, "--out", str(out), "--parallel", parallel,
            "--set", f"train.num_threads={2 // nproc}"]


@pytest.mark.parametrize("parallel,nproc", [("none", 1), ("ddp", 2), ("fsdp", 2)])
def test_training_pairs_per_second(benchmark, tmp_path, parallel, nproc):
    out = tmp_path / parallel
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(2 // nproc)}

    def run():
        proc = subprocess.run(train_command(out, parallel, nproc), cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]

    benchmark.pedantic(run, rounds=1, iterations=1)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    elapsed = {r["step"]: r["elapsed_s"] for r in rows if r["kind"] == "train"}
    final = json.loads((out / "final_metrics.json").read_text())
    steady = (STEPS - 2) * PAIRS / (elapsed[STEPS] - elapsed[2])
    benchmark.extra_info.update(
        processes=nproc, parallel=final["parallel"], pairs_per_step=PAIRS, steps=STEPS,
        steady_pairs_per_s=round(steady, 2), param_bytes_rank0=final["param_bytes_per_rank"],
        optimizer_bytes_rank0=final["optimizer_bytes_per_rank"])
    print(f"\n{parallel} x{nproc}: {steady:.1f} pairs/s steady state, rank 0 holds "
          f"{final['param_bytes_per_rank'] / 2**20:.2f} MiB parameters + "
          f"{final['optimizer_bytes_per_rank'] / 2**20:.2f} MiB AdamW state")
