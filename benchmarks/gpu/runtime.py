"""Device benchmark of the C++ batching runtime against calling the compiled package directly.

    python benchmarks/gpu/runtime.py --manifest OUT/scorer.manifest.json [--package OUT/scorer.pt2] [--device cuda]

Needs the extension built on this machine against its torch (`pip install --no-build-isolation -e .`) and a
package compiled by that torch (`jrm-export ... --aoti`, which writes the manifest). Writes
`$OUT/<gpu>-runtime.json` (or `--out`) and prints a short table last. Measures, with random inputs at the engine's
image size and mixed text lengths:
  - direct: the package called from Python at batch 1 (latency) and at max_batch (the offline figure);
  - runtime: 1, 8 and 64 closed-loop client threads (each submits one request and waits for it);
  - runtime_full_batches: max_batch-sized bursts, so every batch is full (overhead vs direct at max_batch).
Inputs start on the host as uint8/int64 arrays in every case, so each figure includes the host-to-device copy.
Progress lines ("stage: ...") go to stderr as each step starts, and a crash prints every thread's Python stack
(faulthandler), so a run that dies says where.
"""
from __future__ import annotations

import argparse
import faulthandler
import json
import os
import platform
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch


def make_requests(n: int, image_size: int, buckets: list[int], vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max(buckets) + 1, n)
    return [(rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8),
             rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8),
             rng.integers(1, vocab, int(k), dtype=np.int64)) for k in lengths]


def batch_inputs(requests, buckets: list[int], device: str):
    """Contract tensors for a list of requests, padded to the bucket of the longest."""
    bucket = next(b for b in buckets if b >= max(len(r[2]) for r in requests))
    ids = np.zeros((len(requests), bucket), np.int64)
    for i, r in enumerate(requests):
        ids[i, : len(r[2])] = r[2]
    return (torch.from_numpy(np.stack([r[0] for r in requests])).to(device),
            torch.from_numpy(np.stack([r[1] for r in requests])).to(device),
            torch.from_numpy(ids).to(device),
            torch.tensor([len(r[2]) for r in requests]).to(device))


def summarize(latencies_s: list[float], wall_s: float, candidates: int) -> dict:
    lat = np.asarray(latencies_s) * 1e3
    return {"candidates": candidates, "wall_s": round(wall_s, 4), "candidates_per_s": round(candidates / wall_s, 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3)}


def measure_clients(call, requests, threads: int, per_thread: int) -> dict:
    """`threads` closed-loop clients, each timing `call(request)` for `per_thread` requests."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    start_line = threading.Barrier(threads + 1)

    def client(k: int) -> None:
        start_line.wait()
        for j in range(per_thread):
            t0 = time.perf_counter()
            call(requests[(k * per_thread + j) % len(requests)])
            latencies[k].append(time.perf_counter() - t0)

    workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    start_line.wait()
    t0 = time.perf_counter()
    for t in workers:
        t.join()
    wall = time.perf_counter() - t0
    return summarize([x for per in latencies for x in per], wall, threads * per_thread)


def stage(message: str) -> None:
    print(f"stage: {message}", file=sys.stderr, flush=True)


def gpu_slug(device: str) -> str:
    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu-{platform.machine()}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", required=True, help="runtime manifest written by jrm-export")
    p.add_argument("--package", help="engine file to use for every bucket instead of the manifest's")
    p.add_argument("--device", default=None, help="default: the manifest's device")
    p.add_argument("--requests", type=int, default=64, help="requests per client thread count (scaled down for 64)")
    p.add_argument("--max-delay-ms", type=float, default=2.0)
    p.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    args = p.parse_args(argv)
    faulthandler.enable()

    stage("importing jrm_engine.runtime (loads the C++ extension)")
    from jrm_engine.runtime import Manifest, RuntimeScorer

    manifest = Manifest.load(args.manifest)
    if args.package:
        package = Path(args.package).resolve()
        manifest = Manifest(**{**manifest.__dict__, "buckets": [
            type(b)(b.image_size, b.text_len, package, None) for b in manifest.buckets]})
    device = args.device or manifest.device
    buckets = sorted({b.text_len for b in manifest.buckets})
    max_batch = manifest.max_batch
    requests = make_requests(max(256, 4 * max_batch), manifest.image_size, buckets, manifest.vocab_size)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    results: dict = {}

    # Direct: the package from Python, one caller at a time (its runner is not meant for concurrent callers).
    stage(f"loading {manifest.buckets[0].package.name} with torch._inductor.aoti_load_package (torch only)")
    direct = torch._inductor.aoti_load_package(str(manifest.buckets[0].package))
    stage("direct calls (torch only)")
    lock = threading.Lock()

    def direct_call(batch):
        with lock:
            out = direct(*batch_inputs(batch, buckets, device))
            return out[0].cpu() if isinstance(out, (list, tuple)) else out.cpu()

    for _ in range(3):
        direct_call(requests[:1]), direct_call(requests[:max_batch])
    sync()
    results["direct_batch1"] = measure_clients(lambda r: direct_call([r]), requests, 1, args.requests)
    full = [requests[i:i + max_batch] for i in range(0, len(requests) - max_batch + 1, max_batch)]
    iters = max(4, args.requests // 8)
    t0 = time.perf_counter()
    for i in range(iters):
        direct_call(full[i % len(full)])
    results[f"direct_batch{max_batch}"] = summarize([(time.perf_counter() - t0) / iters], time.perf_counter() - t0,
                                                     iters * max_batch)

    # The export just wrote and hashed the package; re-hashing gigabytes here would only spend device time.
    stage(f"starting the C++ runtime on {device}")
    with RuntimeScorer(manifest, device=device, max_batch=max_batch, max_delay_ms=args.max_delay_ms,
                       max_queue=4096, verify_sha256=False) as rt:
        stage("runtime warm-up")
        rt.score(*zip(*requests[: 2 * max_batch]))  # warm up every worker
        for threads in (1, 8, 64):
            stage(f"runtime, {threads} clients")
            per_thread = max(2, args.requests * 8 // threads) if threads > 1 else args.requests
            results[f"runtime_{threads}_clients"] = measure_clients(lambda r: rt.submit(*r).result(), requests,
                                                                    threads, per_thread)
        t0 = time.perf_counter()
        bursts = []
        for i in range(iters):
            burst = full[i % len(full)]
            b0 = time.perf_counter()
            rt.score(*zip(*burst))
            bursts.append(time.perf_counter() - b0)
        results["runtime_full_batches"] = summarize(bursts, time.perf_counter() - t0, iters * max_batch)
        results["runtime_stats"] = rt.stats()

    direct_full = results[f"direct_batch{max_batch}"]["candidates_per_s"]
    summary = {
        "overhead_at_full_batch_pct": round(100 * (direct_full / results["runtime_full_batches"]["candidates_per_s"] - 1), 2),
        "single_request_p50_ms": results["runtime_1_clients"]["p50_ms"],
        "clients64_vs_offline_pct": round(100 * results["runtime_64_clients"]["candidates_per_s"] / direct_full, 1),
    }
    report = {
        "benchmark": "runtime", "device": device, "gpu": gpu_slug(device), "torch": torch.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(), "manifest": str(Path(args.manifest).resolve()),
        "image_size": manifest.image_size, "buckets": buckets, "max_batch": max_batch,
        "max_delay_ms": args.max_delay_ms, "dtype": manifest.fields.get("dtype"), "results": results,
        "summary": summary, "targets": {"overhead_at_full_batch_pct": "<= 5", "single_request_p50_ms": "<= 25",
                                        "clients64_vs_offline_pct": ">= 90"},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{report['gpu']}-runtime.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, path)

    print(f"\nruntime benchmark on {report['gpu']} ({device}), image {manifest.image_size}, max_batch {max_batch}, "
          f"wrote {path}")
    print(f"{'case':<26}{'cand/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, r in results.items():
        if name != "runtime_stats":
            print(f"{name:<26}{r['candidates_per_s']:>10.1f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}")
    for name, value in summary.items():
        print(f"{name:<34}{value:>10}   target {report['targets'][name]}")
    return report


if __name__ == "__main__":
    main()
