"""Scoring throughput on the CPU (tiny model, CI-sized): candidates/s and latency by batch size.

    pytest benchmarks/test_bench_scoring.py --benchmark-json=benchmarks/results/cpu-scoring.json

Paths: Hugging Face eager (RewardModel), scoring graph eager, torch.compile of the graph, the AOTInductor package,
ONNX Runtime; independent batches and one group of G = 12 (the eager group graph and the AOTInductor group
package reuse the prefix; the other engines score the group as a batch with the source repeated). The GPU version
is benchmarks/gpu/scoring.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import tiny_reward_model  # noqa: E402

from jrm_engine.export import GroupScorer, ScoringGraph  # noqa: E402
from jrm_engine.export.program import example_inputs  # noqa: E402
from jrm_engine.export.settings import ExportSettings  # noqa: E402
from jrm_engine.vision import pixels_to_patches  # noqa: E402

BATCHES = [1, 4, 16]
GROUP = 12
TEXT_LEN = 16
SETTINGS = ExportSettings(buckets=(TEXT_LEN,), max_batch=16, opt_batch=4)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(2)
    model = tiny_reward_model(tmp_path_factory.mktemp("bench")).eval()
    graph = ScoringGraph(model).eval()
    return model, graph, tmp_path_factory.mktemp("engines")


def hf_eager(model):
    """RewardModel.forward on the same inputs (the layout with its own HF preprocessing)."""
    spec = model.spec

    def run(source, edited, text_ids, lengths):
        b = text_ids.shape[0]
        seq = torch.tensor([model.layout.prompt_ids(row) for row in text_ids.clamp(min=5).tolist()])
        patches = pixels_to_patches(torch.stack([source, edited], 1).flatten(0, 1), spec).reshape(-1, spec.patch_dim)
        grid = torch.tensor([[1, spec.grid, spec.grid]] * (2 * b))
        return model(seq, torch.ones_like(seq), patches, grid, torch.full((b,), seq.shape[1] - 1)).rewards
    return run


@pytest.fixture(scope="module")
def engines(setup):
    """name -> callable with the graph's signature; compiled ones built once per module."""
    model, graph, folder = setup
    out = {"hf_eager": hf_eager(model), "graph_eager": graph, "graph_compile": torch.compile(graph)}
    from jrm_engine.export.aoti import compile_package, group_package_path, load_package

    compile_package(graph, SETTINGS, folder / "scorer.pt2", group=True)
    out["aoti"] = load_package(folder / "scorer.pt2")
    out["aoti_group"] = load_package(group_package_path(folder / "scorer.pt2"))
    try:
        from jrm_engine.export.onnx_export import export_onnx, onnx_session, run_onnx

        session = onnx_session(export_onnx(graph, SETTINGS, folder / "scorer.onnx"))
        out["onnxruntime"] = lambda *inputs: run_onnx(session, inputs)[0]
    except ImportError:
        pass
    return out


def _report(benchmark, candidates: int) -> None:
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(candidates=candidates, candidates_per_s=candidates / median,
                                latency_ms=median * 1e3)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("path", ["hf_eager", "graph_eager", "graph_compile", "aoti", "onnxruntime"])
def test_independent(benchmark, setup, engines, path, batch):
    if path not in engines:
        pytest.skip(f"{path} unavailable (onnxruntime not installed)")
    _, graph, _ = setup
    inputs = example_inputs(graph, batch, TEXT_LEN, seed=batch)
    benchmark.group = f"independent batch {batch}"
    with torch.no_grad():
        benchmark.pedantic(engines[path], args=inputs, rounds=5, warmup_rounds=2)
    _report(benchmark, batch)


@pytest.mark.parametrize("path", ["hf_eager", "graph_eager", "graph_group", "aoti", "aoti_group", "onnxruntime"])
def test_group(benchmark, setup, engines, path):
    _, graph, _ = setup
    source, edited, text_ids, lengths = example_inputs(graph, GROUP, TEXT_LEN, seed=7)
    benchmark.group = f"group of {GROUP}"
    if path in ("graph_group", "aoti_group"):  # prefix (the source) once, then G candidates against it
        fn = GroupScorer(graph) if path == "graph_group" else engines[path]
        args = (source[:1], text_ids[:1], lengths[:1], edited)
    else:
        if path not in engines:
            pytest.skip(f"{path} unavailable (onnxruntime not installed)")
        fn = engines[path]
        args = (source[:1].expand(GROUP, -1, -1, -1).contiguous(), edited, text_ids[:1].expand(GROUP, -1).contiguous(),
                lengths[:1].expand(GROUP).contiguous())
    with torch.no_grad():
        benchmark.pedantic(fn, args=args, rounds=5, warmup_rounds=2)
    _report(benchmark, GROUP)
