"""Device benchmark of the C++ batching runtime against calling the compiled package directly.

    python benchmarks/gpu/runtime.py --manifest OUT/scorer.manifest.json [--package OUT/scorer.pt2] [--device cuda]

Needs the extension built on this machine against its torch (`pip install --no-build-isolation .`) and a
package compiled by that torch (`jrm-export ... --aoti`, which writes the manifest). Writes
`$OUT/<gpu>-runtime.json` (or `--out`) and prints a short table last. Measures, with random inputs at the engine's
image size and mixed text lengths:
  - direct: the package called from Python at batch 1 (latency) and at max_batch (the offline figure);
  - runtime: 1, 8 and 64 closed-loop client threads (each submits one request and waits for it);
  - runtime_full_batches: max_batch-sized bursts through `score` (one batch each, padded to the longest request,
    as the direct call pads it), the overhead against direct at max_batch;
  - where the manifest names a group package: groups of max_group candidates, direct and through `score_group`.
Inputs start on the host as uint8/int64 arrays in every case, so each figure includes the host-to-device copy.

The two parts run in separate processes: a crash in one (the report records its exit status and last stage)
leaves the other's figures, and neither inherits the other's threads. On a small CPU that matters: an OpenMP
team left by the direct calls in the main thread slowed the runtime's worker thread by a third on 2 cores.
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
import signal
import subprocess
import sys
import tempfile
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
    """`threads` closed-loop clients, each timing `call(request)` for `per_thread` requests.

    One client runs on the calling thread: a fresh thread would start a second OpenMP team beside the one the
    warm-up left on this thread, and on a small CPU the two teams slow each other (a third, on 2 cores)."""
    if threads == 1:
        latencies = []
        t0 = time.perf_counter()
        for j in range(per_thread):
            c0 = time.perf_counter()
            call(requests[j % len(requests)])
            latencies.append(time.perf_counter() - c0)
        return summarize(latencies, time.perf_counter() - t0, per_thread)
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


class Setup:
    """What both parts share: the manifest (optionally redirected to one package), device and the requests."""

    def __init__(self, args):
        from jrm_engine.runtime_manifest import Manifest

        manifest = Manifest.load(args.manifest)
        if args.package:
            package = Path(args.package).resolve()
            manifest = Manifest(**{**manifest.__dict__, "buckets": [
                type(b)(b.image_size, b.text_len, package, None) for b in manifest.buckets]})
        self.manifest = manifest
        self.device = args.device or manifest.device
        self.buckets = sorted({b.text_len for b in manifest.buckets})
        self.max_batch = manifest.max_batch
        self.requests = make_requests(max(256, 4 * self.max_batch), manifest.image_size, self.buckets,
                                      manifest.vocab_size)
        self.full = [self.requests[i:i + self.max_batch]
                     for i in range(0, len(self.requests) - self.max_batch + 1, self.max_batch)]
        self.iters = max(4, args.requests // 8)


def measure_direct(setup: Setup, args) -> dict:
    """The package from Python, one caller at a time (its runner is not meant for concurrent callers)."""
    package = setup.manifest.buckets[0].package
    stage(f"loading {package.name} with torch._inductor.aoti_load_package (torch only)")
    direct = torch._inductor.aoti_load_package(str(package))
    stage("direct calls (torch only)")
    lock = threading.Lock()

    def direct_call(batch):
        with lock:
            out = direct(*batch_inputs(batch, setup.buckets, setup.device))
            return out[0].cpu() if isinstance(out, (list, tuple)) else out.cpu()

    for _ in range(3):
        direct_call(setup.requests[:1]), direct_call(setup.full[0])
    results = {"direct_batch1": measure_clients(lambda r: direct_call([r]), setup.requests, 1, args.requests)}
    t0 = time.perf_counter()
    for i in range(setup.iters):
        direct_call(setup.full[i % len(setup.full)])
    wall = time.perf_counter() - t0
    results[f"direct_batch{setup.max_batch}"] = summarize([wall / setup.iters], wall, setup.iters * setup.max_batch)
    if setup.manifest.group is not None:
        stage("direct group calls (torch only)")
        group = torch._inductor.aoti_load_package(str(setup.manifest.group.package))
        g = setup.manifest.max_group

        def group_call(request):
            source, _, ids = request
            inputs = batch_inputs([request], setup.buckets, setup.device)
            edited = torch.from_numpy(np.stack([r[1] for r in setup.requests[:g]])).to(setup.device)
            out = group(inputs[0], inputs[2], inputs[3], edited)
            return out[0].cpu() if isinstance(out, (list, tuple)) else out.cpu()

        group_call(setup.requests[0])
        results[f"direct_group{g}"] = measure_clients(group_call, setup.requests, 1, setup.iters)
        results[f"direct_group{g}"].update(candidates=setup.iters * g, candidates_per_s=round(
            setup.iters * g / results[f"direct_group{g}"]["wall_s"], 2))
    return results


def measure_runtime(setup: Setup, args) -> dict:
    stage("importing jrm_engine.runtime (loads the C++ extension)")
    from jrm_engine.runtime import RuntimeScorer

    # The export just wrote and hashed the package; re-hashing gigabytes here would only spend device time.
    stage(f"starting the C++ runtime on {setup.device}")
    results = {}
    with RuntimeScorer(setup.manifest, device=setup.device, max_batch=setup.max_batch,
                       max_delay_ms=args.max_delay_ms, max_queue=4096, inflight=args.inflight,
                       verify_sha256=False) as rt:
        stage("runtime warm-up")
        rt.score(*zip(*setup.requests[: 2 * setup.max_batch]))  # warm up every worker
        for threads in (1, 8, 64):
            stage(f"runtime, {threads} clients")
            per_thread = max(2, args.requests * 8 // threads) if threads > 1 else args.requests
            results[f"runtime_{threads}_clients"] = measure_clients(lambda r: rt.submit(*r).result(),
                                                                    setup.requests, threads, per_thread)
        stage("runtime, full batches")
        t0 = time.perf_counter()
        bursts = []
        for i in range(setup.iters):
            b0 = time.perf_counter()
            rt.score(*zip(*setup.full[i % len(setup.full)]))
            bursts.append(time.perf_counter() - b0)
        results["runtime_full_batches"] = summarize(bursts, time.perf_counter() - t0, setup.iters * setup.max_batch)
        if setup.manifest.group is not None:
            stage("runtime, groups")
            g = setup.manifest.max_group
            edited = [r[1] for r in setup.requests[:g]]
            rt.score_group(setup.requests[0][0], edited, setup.requests[0][2])
            group = measure_clients(lambda r: rt.score_group(r[0], edited, r[2]), setup.requests, 1, setup.iters)
            results[f"runtime_group{g}"] = {**group, "candidates": setup.iters * g,
                                            "candidates_per_s": round(setup.iters * g / group["wall_s"], 2)}
        results["runtime_stats"] = rt.stats()
    return results


PARTS = {"direct": measure_direct, "runtime": measure_runtime}


def run_part_in_subprocess(part: str, argv: list[str], folder: Path) -> dict:
    """One part in a fresh interpreter; its figures, or how it died."""
    out = folder / f"{part}.json"
    stage(f"part '{part}' in a subprocess")
    command = [sys.executable, "-X", "faulthandler", __file__, *argv, "--part", part, "--part-out", str(out)]
    if os.environ.get("JRM_PART_GDB") == "1":
        # A rerun after a crash (run_all.sh): gdb stops at the fatal signal and prints every thread's native
        # stack, which faulthandler's Python-only stacks cannot show. The part then counts as failed.
        command = ["gdb", "-q", "-batch", "-ex", "handle SIGPIPE nostop noprint pass", "-ex", "run",
                   "-ex", "thread apply all bt 40", "-return-child-result", "--args", *command]
    proc = subprocess.run(command)
    if proc.returncode == 0 and out.is_file():
        return json.loads(out.read_text())
    died = (f"signal {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
            else f"exit status {proc.returncode}")
    print(f"part '{part}' failed: {died} (its last 'stage:' line above says where)", file=sys.stderr, flush=True)
    return {f"{part}_failed": died}


def build_report(setup: Setup, args, results: dict) -> dict:
    report = {
        "benchmark": "runtime", "device": setup.device, "gpu": gpu_slug(setup.device), "torch": torch.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(),
        "manifest": str(Path(args.manifest).resolve()), "image_size": setup.manifest.image_size,
        "buckets": setup.buckets, "max_batch": setup.max_batch, "max_delay_ms": args.max_delay_ms,
        "inflight": args.inflight or "runtime default: 2 on CUDA, 1 on CPU",
        "dtype": setup.manifest.fields.get("dtype"), "results": results,
        "targets": {"overhead_at_full_batch_pct": "<= 5", "single_request_p50_ms": "<= 25",
                    "clients64_vs_offline_pct": ">= 90"},
    }
    direct_full = results.get(f"direct_batch{setup.max_batch}", {}).get("candidates_per_s")
    if direct_full and "runtime_full_batches" in results:
        report["summary"] = {
            "overhead_at_full_batch_pct": round(
                100 * (direct_full / results["runtime_full_batches"]["candidates_per_s"] - 1), 2),
            "single_request_p50_ms": results["runtime_1_clients"]["p50_ms"],
            "clients64_vs_offline_pct": round(100 * results["runtime_64_clients"]["candidates_per_s"] / direct_full, 1),
        }
    return report


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def print_table(report: dict, path: Path) -> None:
    print(f"\nruntime benchmark on {report['gpu']} ({report['device']}), image {report['image_size']}, "
          f"max_batch {report['max_batch']}, wrote {path}")
    print(f"{'case':<26}{'cand/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, r in report["results"].items():
        if isinstance(r, dict) and "candidates_per_s" in r:
            print(f"{name:<26}{r['candidates_per_s']:>10.1f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}")
        elif isinstance(r, str):
            print(f"{name:<26}{r}")
    for name, value in report.get("summary", {}).items():
        print(f"{name:<34}{value:>10}   target {report['targets'][name]}")


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", required=True, help="runtime manifest written by jrm-export")
    p.add_argument("--package", help="engine file to use for every bucket instead of the manifest's")
    p.add_argument("--device", default=None, help="default: the manifest's device")
    p.add_argument("--requests", type=int, default=64, help="requests per client thread count (scaled down for 64)")
    p.add_argument("--max-delay-ms", type=float, default=2.0)
    p.add_argument("--inflight", type=int, default=None,
                   help="batches in flight = runners per package (default: the runtime's, 2 on CUDA, 1 on CPU); "
                        "2 on a CPU reproduces the GPU run's loader configuration")
    p.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    p.add_argument("--part", choices=("all", *PARTS), default="all",
                   help="all (default): each part in its own process, then the report")
    p.add_argument("--part-out", help=argparse.SUPPRESS)  # where a subprocess part writes its figures
    args = p.parse_args(argv)
    faulthandler.enable()
    stage(f"part {args.part}: setup")
    setup = Setup(args)

    if args.part != "all":
        results = PARTS[args.part](setup, args)
        if args.part_out:
            write_json(Path(args.part_out), results)
            return results
    else:
        with tempfile.TemporaryDirectory() as folder:
            results = {}
            for part in PARTS:
                results.update(run_part_in_subprocess(part, argv, Path(folder)))
    report = build_report(setup, args, results)
    path = Path(args.out) / f"{report['gpu']}-runtime.json"
    write_json(path, report)
    print_table(report, path)
    return report


if __name__ == "__main__":
    main()
