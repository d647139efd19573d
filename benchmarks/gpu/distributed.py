"""Distributed training on every GPU of one machine: pairs/s and peak memory per GPU for DDP and FSDP2.

    python benchmarks/gpu/distributed.py                       # 3B shape, all visible GPUs, ddp then fsdp
    python benchmarks/gpu/distributed.py --text-layers 4 --vision-depth 4 --steps 4   # a quick check
    python benchmarks/gpu/distributed.py --device cpu --nproc 2 --tiny                # rehearsal on the CPU

Each mode is one `torchrun --standalone --nproc-per-node N -m jrm_engine.train` run of the qwen2.5-vl preset
(448 px, bf16 autocast, gradient checkpointing, bt_uncertainty) on a random-init backbone of the Qwen2.5-VL-3B
block shape, built by the trainer's tiny-backbone path. Its vocabulary is the synthetic set's words, not
Qwen's 151,936 tokens: the tied embedding / LM head has ~0.31 B fewer parameters than the real 3B (add
0.31 B x 16 bytes / N under FSDP, x 16 bytes under DDP, to compare with a real checkpoint).

Per mode: steady pairs/s (the trainer's per-step clock from step 3 on), rank 0's peak CUDA memory, and its
parameter + AdamW bytes between steps. Writes `$OUT/<gpu>-distributed.json`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
SHAPE_3B = {"text_hidden": 2048, "text_layers": 36, "text_heads": 16, "text_kv_heads": 2,
            "text_intermediate": 11008, "vision_hidden": 1280, "vision_layers": 32, "vision_heads": 16,
            "vision_intermediate": 3420, "rope_theta": 1e6, "mrope_section": "[16,24,24]"}


def gpu_slug(device: str) -> str:
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu-{platform.machine()}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def command(args, mode: str, out: Path) -> list[str]:
    sets = {"train.batch_pairs": args.nproc * args.pairs_per_gpu, "train.grad_accum": 1,
            "train.eval_every": 10_000, "train.save_every": 10_000, "data.n_train": 4096, "data.n_heldout": 8}
    if args.tiny:
        sets.update({"model.image_size": 56, "model.max_length": 256})
    else:
        shape = dict(SHAPE_3B, text_layers=args.text_layers, vision_layers=args.vision_depth)
        sets.update({f"model.tiny.{k}": v for k, v in shape.items()})
    flags = [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
            "-m", "jrm_engine.train", "--preset", "smoke" if args.tiny else "qwen2.5-vl", "--quiet",
            "--device", args.device, "--parallel", mode, "--max-steps", str(args.steps), "--out", str(out), *flags]


def measure(args, mode: str, work: Path) -> dict:
    out = work / mode
    t0 = time.perf_counter()
    proc = subprocess.run(command(args, mode, out), cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=args.timeout_s)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"mode": mode, "error": (proc.stdout + proc.stderr)[-3000:], "wall_s": round(wall, 1)}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    elapsed = {r["step"]: r["elapsed_s"] for r in rows if r["kind"] == "train"}
    final = json.loads((out / "final_metrics.json").read_text())
    pairs = args.nproc * args.pairs_per_gpu
    first = min(2, args.steps - 1)
    return {"mode": mode, "processes": args.nproc, "pairs_per_step": pairs,
            "steady_pairs_per_s": round((args.steps - first) * pairs / (elapsed[args.steps] - elapsed[first]), 3),
            "peak_memory_gib_rank0": round(final.get("peak_memory_bytes", 0) / 2**30, 2),
            "param_gib_rank0": round(final["param_bytes_per_rank"] / 2**30, 3),
            "optimizer_gib_rank0": round(final["optimizer_bytes_per_rank"] / 2**30, 3),
            "loss_last": [r["loss"] for r in rows if r["kind"] == "train"][-1], "wall_s": round(wall, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--nproc", type=int, default=max(1, torch.cuda.device_count()))
    p.add_argument("--modes", default="ddp,fsdp")
    p.add_argument("--text-layers", type=int, default=SHAPE_3B["text_layers"])
    p.add_argument("--vision-depth", type=int, default=SHAPE_3B["vision_layers"])
    p.add_argument("--pairs-per-gpu", type=int, default=1)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--tiny", action="store_true", help="the smoke model (logic check, CPU is fine)")
    p.add_argument("--timeout-s", type=float, default=500)
    p.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "benchmarks" / "results")))
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error("--steps must be at least 2 (the first step is warm-up)")

    work = Path(os.environ.get("TMPDIR", "/tmp")) / "jrm-distributed-bench"
    results = []
    for mode in args.modes.split(","):
        row = measure(args, mode, work)
        print(json.dumps(row), flush=True)
        results.append(row)
    report = {"device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor(),
              "torch": torch.__version__, "nproc": args.nproc, "tiny": args.tiny,
              "shape": None if args.tiny else dict(SHAPE_3B, text_layers=args.text_layers,
                                                   vision_layers=args.vision_depth),
              "results": results}
    path = Path(args.out) / f"{gpu_slug(args.device)}-distributed.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, path)
    print(f"wrote {path}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
