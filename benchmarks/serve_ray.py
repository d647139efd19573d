"""1 vs 2 Ray Serve replicas of the reward server, against the engine's runtime in-process, in one run.

    python benchmarks/serve_ray.py [--package OUT/scorer.pt2 --device cuda] [--out FILE]

Without --package it builds the CPU-sized engine of benchmarks/test_bench_serve.py (the tiny random reward model at
112 px). A local Ray; for each replica count, `jrm_engine.serve.ray_serve.deployment` behind Serve's proxy on
loopback, closed-loop clients sending the binary body of benchmarks/gpu/serve.py (single candidates from 448 px
images, resized on the client). Not in CI: starting Ray and two deployments costs about a minute on 2 cores, and
on 2 cores two replicas share the same cores, so the figure there is Serve's overhead, not scaling (on N GPUs each
replica owns one). Writes JSON (`--out`, default `$OUT/<device>-serve-ray.json`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
from serve import HttpCaller, encode_bodies, free_port, make_requests  # noqa: E402  (benchmarks/gpu/serve.py)
from runtime import gpu_slug, measure_clients  # noqa: E402


def tiny_package(folder: Path) -> Path:
    import torch
    from helpers import tiny_reward_model

    from jrm_engine.export import ScoringGraph
    from jrm_engine.export.aoti import compile_package
    from jrm_engine.export.cli import save_tokenizer
    from jrm_engine.export.settings import ExportSettings
    torch.set_num_threads(2)
    model = tiny_reward_model(folder, **{"model.image_size": 112}).eval()
    path = folder / "engine" / "scorer.pt2"
    compile_package(ScoringGraph(model).eval(), ExportSettings(buckets=(8, 16), max_batch=16, opt_batch=4), path)
    save_tokenizer(model.tokenizer, path)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--package", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--requests", type=int, default=256, help="per measurement, spread over the clients")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    import ray
    import torch
    from helpers import WORDS
    from ray import serve

    from jrm_engine.scoring import Scorer
    from jrm_engine.serve.ray_serve import deployment
    batching = {"max_batch": args.max_batch, "max_delay_ms": 2.0, "max_queue": 4096}
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(args.package) if args.package else tiny_package(Path(tmp))
        device = {"device": args.device} if args.device != "cpu" else {}
        instructions = [" ".join(WORDS[i:i + 4]) for i in range(0, 13, 2)]
        per_client = max(1, args.requests // args.clients)
        results = {}
        with Scorer.load(package, backend="runtime", **batching, **device) as scorer:
            bodies = encode_bodies(make_requests(64, 448, instructions), int(scorer.image_size))
            call = lambda a: scorer.submit(*a).result()  # noqa: E731
            work = [b["arrays"] for b in bodies]
            measure_clients(call, work, args.clients, per_client)
            results["inprocess"] = measure_clients(call, work, args.clients, per_client)
        port = free_port()
        # Replicas are worker processes started by this Ray: they import jrm_engine from the same checkout.
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        ray.init(include_dashboard=False, log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            for n in args.replicas:
                gpus = args.device.startswith("cuda")
                serve.run(deployment(str(package), "runtime", scorer_options={**batching, **device}, replicas=n,
                                     cpus_per_replica=0.5 if not gpus else 1.0), name="jrm", route_prefix="/")
                http = HttpCaller(f"http://127.0.0.1:{port}", "binary", connections=args.clients)
                try:
                    work = [b["binary"] for b in bodies]
                    measure_clients(http, work, args.clients, per_client)  # warm-up: connections, every replica
                    row = measure_clients(http, work, args.clients, per_client)
                finally:
                    http.close()
                row["throughput_vs_inprocess"] = round(row["candidates_per_s"] / results["inprocess"]
                                                       ["candidates_per_s"], 3)
                results[f"ray_{n}_replicas"] = row
                serve.delete("jrm")
        finally:
            serve.shutdown()
            ray.shutdown()
    report = {"benchmark": "serve-ray", "device": args.device, "gpu": gpu_slug(args.device),
              "torch": torch.__version__, "ray": ray.__version__, "python": platform.python_version(),
              "machine": platform.machine(), "cpus": os.cpu_count(), "clients": args.clients, "source_size": 448,
              "package": str(args.package or "tiny 112 px (built)"), **batching, "results": results}
    out = Path(args.out or Path(os.environ.get("OUT", ".")) / f"{gpu_slug(args.device)}-serve-ray.json")
    tmp_out = out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(report, indent=2) + "\n")
    tmp_out.replace(out)
    for name, row in results.items():
        print(name, json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
