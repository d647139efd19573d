"""The runtime's crash conditions in a few candidates: load a manifest's packages the way the GPU benchmark does
(two runners per package, the group package too), run every bucket, two batches at once and a group, and check
each result against the package called directly on that request alone.

    python benchmarks/gpu/runtime_smoke.py --manifest DIR/scorer.manifest.json [--device cpu] [--inflight 2]

Minutes at the 3B width on a CPU (where runtime.py's timed runs would take an hour); seconds on a GPU. Prints a
"stage:" line before each step, so a crash says where; exit status 1 if a result differs.
"""
from __future__ import annotations

import argparse
import faulthandler
import sys

import numpy as np
import torch

from runtime import batch_inputs, make_requests, stage


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", required=True)
    p.add_argument("--device", default=None, help="default: the manifest's device")
    p.add_argument("--inflight", type=int, default=2, help="batches in flight = runners per package")
    p.add_argument("--group", type=int, default=2, help="candidates in the group request")
    p.add_argument("--tolerance", type=float, default=1e-4, help="relative to the largest |reward|")
    args = p.parse_args(argv)
    faulthandler.enable()

    from jrm_engine.runtime import RuntimeScorer
    from jrm_engine.runtime_manifest import Manifest

    manifest = Manifest.load(args.manifest)
    device = args.device or manifest.device
    buckets = sorted({b.text_len for b in manifest.buckets})
    rng = np.random.default_rng(0)
    # One request per bucket (the longest length each holds), then two more to keep both workers busy.
    requests = make_requests(2, manifest.image_size, buckets, manifest.vocab_size)
    requests = [(s, e, rng.integers(1, manifest.vocab_size, n, dtype=np.int64)) for (s, e, _), n in
                zip(requests * len(buckets), buckets)] + requests
    stage("direct package on each request alone (torch only)")
    direct = torch._inductor.aoti_load_package(str(manifest.buckets[0].package))
    with torch.no_grad():
        want = [direct(*batch_inputs([r], buckets, device))[0].float().cpu().item() for r in requests]
    del direct

    stage(f"loading the runtime on {device}, inflight {args.inflight}, group package: {manifest.group is not None}")
    with RuntimeScorer(manifest, device=device, inflight=args.inflight, verify_sha256=False) as rt:
        stage("one request per bucket")
        got = [rt.score([r[0]], [r[1]], [r[2]])[0] for r in requests[: len(buckets)]]
        stage("every request at once (a batch per bucket, both workers)")
        futures = [rt.submit(*r) for r in requests]
        got_all = [f.result(timeout=3600) for f in futures]
        group = None
        if manifest.group is not None:
            stage(f"a group of {args.group} candidates")
            g = min(args.group, manifest.max_group)
            edited = [requests[i % len(requests)][1] for i in range(g)]
            group = rt.score_group(requests[0][0], edited, requests[0][2])
            stage("the group's candidates one by one (direct)")
            direct = torch._inductor.aoti_load_package(str(manifest.buckets[0].package))
            with torch.no_grad():
                group_want = [direct(*batch_inputs([(requests[0][0], e, requests[0][2])], buckets, device))[0]
                              .float().cpu().item() for e in edited]
        stats = rt.stats()
    scale = max(max(abs(w) for w in want), 1e-6)
    errors = [abs(a - b) / scale for a, b in zip(got + got_all, want[: len(buckets)] + want)]
    if group is not None:
        errors += [abs(a - b) / scale for a, b in zip(group, group_want)]
    worst = max(errors)
    print(f"runtime vs direct: worst |diff| {worst:.3g} of the reward scale {scale:.3g} over {len(errors)} results; "
          f"batches {stats['batches']}, failed {stats['failed']}")
    return 0 if worst <= args.tolerance and stats["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
