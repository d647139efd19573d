"""The C++ runtime on a real exported scoring graph (tiny random Qwen2.5-VL reward model, AOTInductor, CPU).

Slow: it compiles the real graph (about a minute on 2 CPU cores). The fast runtime tests use a stand-in engine.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from test_export import SETTINGS, build_model

from jrm_engine.export import ScoringGraph
from jrm_engine.runtime import RuntimeScorer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from jrm_engine.export.aoti import compile_package

    graph = ScoringGraph(build_model(tmp_path_factory.mktemp("rt_small") / "backbone")).eval()
    manifest = compile_package(graph, SETTINGS, tmp_path_factory.mktemp("rt_aoti") / "scorer.pt2")
    return manifest, graph


def test_runtime_on_the_exported_graph_equals_each_request_alone(exported):
    manifest, graph = exported
    rng = np.random.default_rng(0)
    s, buckets = graph.spec.image_size, SETTINGS.buckets
    requests = [(rng.integers(0, 256, (s, s, 3), dtype=np.uint8), rng.integers(0, 256, (s, s, 3), dtype=np.uint8),
                 rng.integers(5, graph.vocab_size, int(n), dtype=np.int64))
                for n in rng.integers(1, max(buckets) + 1, 24)]
    with RuntimeScorer.load(manifest, max_batch=SETTINGS.max_batch, max_delay_ms=5, inflight=2) as rt:
        got = rt.score(*zip(*requests))
        stats = rt.stats()
    want = []
    for source, edited, ids in requests:
        bucket = next(b for b in buckets if b >= len(ids))
        padded = torch.zeros(1, bucket, dtype=torch.long)
        padded[0, : len(ids)] = torch.from_numpy(ids)
        with torch.no_grad():
            want.append(graph(torch.from_numpy(source)[None], torch.from_numpy(edited)[None], padded,
                              torch.tensor([len(ids)])).item())
    err = np.abs(got.astype(np.float64) - np.asarray(want))
    assert err.max() <= 1e-5, f"max error {err.max():.2e} at request {err.argmax()}"
    assert stats["mean_batch_size"] > 1
