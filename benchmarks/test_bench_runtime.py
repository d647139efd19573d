"""Runtime vs direct compiled call vs plain PyTorch loop, for 1, 8 and 64 client threads (CPU-sized).

Engine: the contract-shaped stand-in of tests/runtime_toy_graph.py (the real graph's figures come from
benchmarks/gpu/runtime.py on a GPU). Every provider serves closed-loop clients that each submit one request and
wait for it; extra_info holds candidates/s and p50/p99 latency.
    pytest benchmarks/test_bench_runtime.py --benchmark-json=benchmarks/results/cpu-runtime.json
"""
from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from runtime_toy_graph import build_toy_package  # noqa: E402

_spec = importlib.util.spec_from_file_location("gpu_runtime_bench", ROOT / "benchmarks" / "gpu" / "runtime.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

from jrm_engine.runtime import RuntimeScorer  # noqa: E402

IMAGE, VOCAB, BUCKETS, MAX_BATCH, REQUESTS = 56, 1024, [16, 32, 64], 16, 128


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    manifest, module = build_toy_package(tmp_path_factory.mktemp("bench_engine"), IMAGE, VOCAB, BUCKETS, MAX_BATCH)
    requests = bench.make_requests(REQUESTS, IMAGE, BUCKETS, VOCAB)
    return manifest, module, requests


@pytest.fixture(scope="module")
def scorer(engine):
    # One OpenMP thread per worker and two workers: see RuntimeScorer(intra_op_threads=...) for why on a small CPU.
    with RuntimeScorer.load(engine[0], max_batch=MAX_BATCH, max_delay_ms=1, inflight=2, intra_op_threads=1) as rt:
        yield rt


@pytest.mark.parametrize("threads", [1, 8, 64])
@pytest.mark.parametrize("provider", ["runtime", "direct", "eager"])
def test_bench_runtime(benchmark, engine, scorer, provider, threads):
    manifest, module, requests = engine
    if provider == "runtime":
        call = lambda r: scorer.submit(*r).result()  # noqa: E731
    else:
        # Without the runtime each client calls the engine on its own request, one call at a time.
        engine_fn = torch._inductor.aoti_load_package(str(manifest.parent / "toy.pt2")) if provider == "direct" else module
        lock = threading.Lock()

        def call(r):
            with lock, torch.no_grad():
                return engine_fn(*bench.batch_inputs([r], BUCKETS, "cpu"))

    benchmark.group = f"runtime-{threads}-clients"
    result = benchmark.pedantic(bench.measure_clients, args=(call, requests, threads, max(1, REQUESTS // threads)),
                                rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(result, provider=provider, threads=threads, image_size=IMAGE, max_batch=MAX_BATCH)
