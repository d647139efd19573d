"""ONNX through the dynamo exporter, checked on onnxruntime against PyTorch before it is called done."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .graph import INPUT_NAMES, ScoringGraph
from .manifest import output_names
from .program import dynamic_shapes, example_inputs
from .settings import ExportSettings

FP32_TOLERANCE = 1e-4
TWO_GB = 2 * 1024**3


class ParityError(RuntimeError):
    """onnxruntime disagrees with PyTorch beyond the tolerance."""


def export_onnx(graph: ScoringGraph, settings: ExportSettings, path: str | Path, *, opset: int = 18,
                external_data: bool | None = None) -> Path:
    """Write `path`, plus `path.data` when the weights exceed 2 GB (protobuf cannot hold them inline) or when
    `external_data` is True. The graph must be on the CPU in the settings' dtype."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = example_inputs(graph, 2, settings.buckets[0])  # sizes >= 2, or the exporter specialises them
    big = external_data if external_data is not None else (
        sum(p.numel() * p.element_size() for p in graph.parameters()) >= TWO_GB)
    with torch.no_grad():
        program = torch.onnx.export(graph.eval(), args, dynamo=True, opset_version=opset,
                                    input_names=list(INPUT_NAMES), output_names=output_names(graph),
                                    dynamic_shapes=dynamic_shapes(settings), external_data=big, optimize=True)
    # Saved under its final name in a scratch folder, then moved: the external data file's name is recorded
    # inside the model (TensorRT's parser reads it from there), so the pair must keep the names they were saved as.
    scratch = path.parent / f".{path.name}.partial"
    scratch.mkdir(exist_ok=True)
    program.save(str(scratch / path.name), external_data=big)
    for item in scratch.iterdir():
        os.replace(item, path.parent / item.name)
    scratch.rmdir()
    return path


def onnx_session(path: str | Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, min(4, os.cpu_count() or 1))
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, inputs) -> list[np.ndarray]:
    feed = {name: t.cpu().numpy() for name, t in zip(INPUT_NAMES, inputs)}
    return session.run(None, feed)


def check_parity(graph: ScoringGraph, settings: ExportSettings, path: str | Path,
                 tolerance: float = FP32_TOLERANCE) -> float:
    """Score random inputs at several batch sizes and buckets on onnxruntime and PyTorch; raise ParityError
    when they differ by more than `tolerance`. Returns the largest absolute difference."""
    session = onnx_session(path)
    worst = 0.0
    cases = [(1, settings.buckets[0]), (3, settings.buckets[-1]), (min(5, settings.max_batch), settings.buckets[0])]
    for seed, (batch, text_len) in enumerate(cases):
        inputs = example_inputs(graph, batch, text_len, seed=seed + 1)
        with torch.no_grad():
            expected = graph(*inputs)
        expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
        got = run_onnx(session, inputs)
        for name, e, g in zip(output_names(graph), expected, got):
            diff = float(np.max(np.abs(e.float().cpu().numpy() - g.astype(np.float32))))
            worst = max(worst, diff)
            if not diff <= tolerance:  # also catches NaN
                raise ParityError(f"onnxruntime {name} differs from PyTorch by {diff:.3g} > {tolerance:g} at batch "
                                  f"{batch}, text length {text_len}: {path} is not a faithful export")
    return worst
