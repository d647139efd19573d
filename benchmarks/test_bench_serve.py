"""The reward server (`jrm serve`, a subprocess on loopback) against the same engine's runtime in-process, for 1,
8 and 64 closed-loop clients, binary and base64-PNG JSON payloads; the server's own added p50 latency per request;
the base64-PNG decode cost per image.

CPU-sized: the tiny random Qwen2.5-VL reward model at 112 px (its real scoring graph, exported as `jrm-export
--aoti` does), requests of one candidate whose images are 448 px, as a sampler makes them: the binary body carries
them resized on the client (RewardClient does so), the JSON body as full-size PNG the server decodes and resizes.
The measurement code is benchmarks/gpu/serve.py (its module docstring says what each figure is); the device run
is `python benchmarks/gpu/serve.py --package OUT/scorer.pt2 --device cuda`. extra_info holds every figure.
    pytest benchmarks/test_bench_serve.py --benchmark-json=benchmarks/results/cpu-serve.json
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import fastapi
import httpx
import pytest
import torch
import uvicorn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
from helpers import WORDS, tiny_reward_model  # noqa: E402
from serve import measure_all  # noqa: E402  (benchmarks/gpu/serve.py)

from jrm_engine.export import ScoringGraph  # noqa: E402
from jrm_engine.export.aoti import compile_package  # noqa: E402
from jrm_engine.export.cli import save_tokenizer  # noqa: E402
from jrm_engine.export.settings import ExportSettings  # noqa: E402

IMAGE, SOURCE, REQUESTS = 112, 448, 64
SETTINGS = ExportSettings(buckets=(8, 16), max_batch=16, opt_batch=4)
# The same batching on both sides: the server's runtime and the in-process one.
BATCHING = {"max_batch": SETTINGS.max_batch, "max_delay_ms": 2.0, "max_queue": 4096}


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    torch.set_num_threads(2)
    folder = tmp_path_factory.mktemp("bench_serve")
    model = tiny_reward_model(folder, **{"model.image_size": IMAGE}).eval()
    path = folder / "engine" / "scorer.pt2"
    compile_package(ScoringGraph(model).eval(), SETTINGS, path)
    save_tokenizer(model.tokenizer, path)
    return path


def test_bench_serve(benchmark, package):
    instructions = [" ".join(WORDS[i:i + 4]) for i in range(0, 13, 2)]  # inside the 16-token bucket
    server_args = tuple(x for k, v in BATCHING.items() for x in (f"--{k.replace('_', '-')}", str(v)))
    benchmark.group = "serve"
    # One round: every figure is already a distribution over requests (p50/p99); more rounds would only multiply
    # CI time.
    results = benchmark.pedantic(measure_all, args=(package, SOURCE, instructions),
                                 kwargs={"scorer_options": BATCHING, "n_requests": REQUESTS,
                                         "server_args": server_args}, rounds=1, iterations=1)
    # Every request was answered with a 200 (HttpCaller raises on anything else) or the run failed.
    versions = {"torch": torch.__version__, "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__,
                "httpx": httpx.__version__, "cpus": os.cpu_count()}
    benchmark.extra_info.update(results=results, image_size=IMAGE, source_size=SOURCE, versions=versions,
                                requests=REQUESTS, **BATCHING)
