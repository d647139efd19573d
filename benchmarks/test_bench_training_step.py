"""One training step of the embedded default on the CPU, bf16 autocast against fp32: seconds per step.

    pytest benchmarks/test_bench_training_step.py --benchmark-json=benchmarks/results/cpu-2core-training-step.json

Shape: the tiny default (text 128 wide x 4 layers, vision 128 x 2 frozen, 84 px images), 32 pairs per step as in
`make train`, 24 steps, one process with 2 threads. The benchmark time is the whole command (start-up, model build,
a 32-pair evaluation); `extra_info` holds the steady-state seconds per step from the trainer's own clock (steps
4-24). bf16 is forced on where the CPU lacks native bf16 too, so the table shows what emulation would cost.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STEPS, WARM = 24, 4
SHAPE = ["--preset", "tiny", "--quiet", "--max-steps", str(STEPS), "--set", "train.eval_every=1000",
         "--set", "train.save_every=1000", "--set", "data.n_train=1024", "--set", "data.n_heldout=32",
         "--set", "train.num_threads=2"]
# `jrm_engine.train` decides bf16 by the CPU's flags; this runs the trainer with that decision forced either way.
FORCED = ("import sys, jrm_engine.train as t; t.computes_bf16_natively = lambda device: {native}; "
          "sys.exit(t.main(sys.argv[1:]))")


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_training_step_seconds(benchmark, tmp_path, bf16):
    out = tmp_path / ("bf16" if bf16 else "fp32")
    command = [sys.executable, "-c", FORCED.format(native=bf16), *SHAPE, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}

    def run():
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert ("bf16 autocast" in proc.stdout) == bf16, proc.stdout[-2000:]

    benchmark.pedantic(run, rounds=1, iterations=1)
    elapsed = {r["step"]: r["elapsed_s"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
               if r["kind"] == "train"}
    per_step = (elapsed[STEPS] - elapsed[WARM]) / (STEPS - WARM)
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    benchmark.extra_info.update(precision="bf16" if bf16 else "fp32", pairs_per_step=32, steps=STEPS,
                                steady_s_per_step=round(per_step, 4), cpu_native_bf16=native,
                                cpu_capability=torch.backends.cpu.get_cpu_capability())
    print(f"\n{'bf16' if bf16 else 'fp32'}: {per_step:.3f} s a step (CPU native bf16: {native})")
