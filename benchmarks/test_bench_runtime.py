"""The C++ runtime vs calling the compiled package directly vs the plain PyTorch Scorer, for 1, 8 and 64 clients.

CPU-sized: the tiny random Qwen2.5-VL reward model at 112 px, its real scoring graph exported by the same code as
`jrm-export --aoti`. Every provider is a `Scorer` fed the same user-level requests (uint8 images and an instruction
string); each closed-loop client scores one request and waits for it. Without the runtime a client calls its
engine on its own request, one call at a time. extra_info holds candidates/s and p50/p99 latency. The 3B GPU
version is benchmarks/gpu/runtime.py.
    pytest benchmarks/test_bench_runtime.py --benchmark-json=benchmarks/results/cpu-runtime.json
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
from helpers import WORDS, tiny_reward_model  # noqa: E402
from runtime import measure_clients  # noqa: E402  (benchmarks/gpu/runtime.py)

from jrm_engine.export import ScoringGraph  # noqa: E402
from jrm_engine.export.aoti import compile_package  # noqa: E402
from jrm_engine.export.cli import save_tokenizer  # noqa: E402
from jrm_engine.export.settings import ExportSettings  # noqa: E402
from jrm_engine.scoring import Scorer  # noqa: E402

IMAGE, REQUESTS = 112, 128
SETTINGS = ExportSettings(buckets=(8, 16), max_batch=16, opt_batch=4)


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    torch.set_num_threads(2)
    folder = tmp_path_factory.mktemp("bench_runtime")
    model = tiny_reward_model(folder, **{"model.image_size": IMAGE}).eval()
    checkpoint = folder / "checkpoint"
    model.save_pretrained(checkpoint)
    package = folder / "engine" / "scorer.pt2"
    compile_package(ScoringGraph(model).eval(), SETTINGS, package)
    save_tokenizer(model.tokenizer, package)
    rng = np.random.default_rng(0)
    words = WORDS[:-4]
    requests = [(rng.integers(0, 256, (IMAGE, IMAGE, 3), dtype=np.uint8),
                 " ".join(rng.choice(words, int(rng.integers(1, 12)))),
                 rng.integers(0, 256, (IMAGE, IMAGE, 3), dtype=np.uint8)) for _ in range(REQUESTS)]
    return checkpoint, package, requests


@pytest.fixture(scope="module")
def runtime_scorer(engines):
    with Scorer.load(engines[1], backend="runtime", max_batch=SETTINGS.max_batch, max_delay_ms=1) as scorer:
        yield scorer


@pytest.mark.parametrize("threads", [1, 8, 64])
@pytest.mark.parametrize("provider", ["runtime", "compiled", "torch"])
def test_bench_runtime(benchmark, engines, runtime_scorer, provider, threads):
    checkpoint, package, requests = engines
    if provider == "runtime":
        call = lambda r: runtime_scorer.submit(*r).result()  # noqa: E731
    else:
        scorer = Scorer.load(package, backend="compiled") if provider == "compiled" else Scorer.load(checkpoint)
        lock = threading.Lock()

        def call(r):
            with lock:
                return scorer.score([r[0]], [r[1]], [r[2]])

    benchmark.group = f"runtime-{threads}-clients"
    result = benchmark.pedantic(measure_clients, args=(call, requests, threads, max(1, REQUESTS // threads)),
                                rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(result, provider=provider, threads=threads, image_size=IMAGE,
                                max_batch=SETTINGS.max_batch)
