"""TensorRT engines from the exported ONNX (TensorRT 10.x / 11.x Python API), and a guarded loader.

Untested on our machines (TensorRT cannot be installed here); written against the documented API and NVIDIA's
samples. The network is strongly typed (TensorRT 11 removed the FP16/BF16 builder flags: precision comes from the
ONNX dtypes, so export the graph in the dtype you want). A plan runs only on the TensorRT version and GPU that
built it and is executable content, so every plan gets a sidecar (its runtime manifest) with the plan's SHA-256,
TensorRT version, GPU compute capability and input shapes; `load_engine` checks it before deserialising.
"""
from __future__ import annotations

import os
from pathlib import Path

from .graph import INPUT_NAMES, ScoringGraph
from .manifest import build_manifest, file_sha256, manifest_path, write_json_atomic
from .settings import ExportSettings

DEFAULT_WORKSPACE = 8 * 1024**3


class TensorRTUnavailable(RuntimeError):
    """The tensorrt Python package (or a CUDA GPU) is missing."""


class PlanMismatch(ValueError):
    """The plan's sidecar does not match this file, TensorRT version or GPU."""


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailable(
            "TensorRT is not installed: `pip install tensorrt` (10.x or 11.x) on a machine with an NVIDIA GPU, "
            "or use --onnx / --aoti instead") from e
    return trt


def gpu_compute_capability() -> str:
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("TensorRT needs a CUDA GPU and none is visible to torch")
    return "{}.{}".format(*torch.cuda.get_device_capability())


def profile_shapes(image_size: int, settings: ExportSettings) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shape per input: batch 1..max_batch, text length min bucket..max bucket."""
    s, lo, hi = image_size, settings.buckets[0], settings.buckets[-1]
    mid = settings.buckets[len(settings.buckets) // 2]
    b_min, b_opt, b_max = 1, settings.opt_batch, settings.max_batch
    image = lambda b: (b, s, s, 3)
    return {
        "source_pixels": (image(b_min), image(b_opt), image(b_max)),
        "edited_pixels": (image(b_min), image(b_opt), image(b_max)),
        "text_ids": ((b_min, lo), (b_opt, mid), (b_max, hi)),
        "text_lengths": ((b_min,), (b_opt,), (b_max,)),
    }


def build_engine(onnx_path: str | Path, plan_path: str | Path, graph: ScoringGraph, settings: ExportSettings, *,
                 workspace_bytes: int = DEFAULT_WORKSPACE, timing_cache: str | Path | None = None,
                 checkpoint_hash: str | None = None, **manifest_extra) -> Path:
    """Build `plan_path` from `onnx_path`; write its sidecar manifest; returns the manifest path."""
    trt = import_tensorrt()
    capability = gpu_compute_capability()
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    timing_cache = Path(timing_cache) if timing_cache else plan_path.with_suffix(".timing.cache")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    # From a file path, so the parser finds the external weights file beside the model.
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    profile = builder.create_optimization_profile()
    shapes = profile_shapes(graph.spec.image_size, settings)
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = plan_path.with_name(plan_path.name + ".tmp")
    tmp.write_bytes(bytes(plan))
    os.replace(tmp, plan_path)
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))  # reused by the next build

    manifest = build_manifest(
        graph, settings, backend="tensorrt", device="cuda", package=plan_path, checkpoint_hash=checkpoint_hash,
        tensorrt_version=trt.__version__, compute_capability=capability, plan_sha256=file_sha256(plan_path),
        input_shapes={name: {"min": lo, "opt": opt, "max": hi} for name, (lo, opt, hi) in shapes.items()},
        onnx=onnx_path.name, **manifest_extra)
    return write_json_atomic(manifest_path(plan_path), manifest)


def check_plan(plan_path: str | Path) -> dict:
    """Refuse a plan whose sidecar does not match the file, the installed TensorRT or this GPU. Returns the sidecar."""
    import json

    trt = import_tensorrt()
    plan_path = Path(plan_path)
    sidecar = manifest_path(plan_path)
    if not sidecar.is_file():
        raise PlanMismatch(f"{plan_path}: no sidecar {sidecar.name}; refusing to deserialise an unverified plan")
    meta = json.loads(sidecar.read_text())
    if meta.get("plan_sha256") != file_sha256(plan_path):
        raise PlanMismatch(f"{plan_path}: SHA-256 differs from its sidecar (file changed or replaced)")
    if meta.get("tensorrt_version") != trt.__version__:
        raise PlanMismatch(f"{plan_path}: built with TensorRT {meta.get('tensorrt_version')}, this is "
                           f"{trt.__version__}; rebuild it with `jrm-export --trt`")
    here = gpu_compute_capability()
    if meta.get("compute_capability") != here:
        raise PlanMismatch(f"{plan_path}: built for compute capability {meta.get('compute_capability')}, "
                           f"this GPU is {here}; rebuild it on this GPU")
    return meta


class TensorRTEngine:
    """Runs a checked plan with torch CUDA tensors: the scoring graph's signature, on the current stream."""

    def __init__(self, plan_path: str | Path):
        import torch

        trt = import_tensorrt()
        self.meta = check_plan(plan_path)  # before any byte of the plan reaches the deserialiser
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialise {plan_path}")
        self.context = self.engine.create_execution_context()  # one context per stream
        self.outputs = list(self.meta["outputs"])
        self.settings = ExportSettings.from_dict(self.meta["settings"])
        self.torch = torch

    def __call__(self, *inputs):
        torch = self.torch
        batch, text_len = inputs[2].shape
        if not 1 <= batch <= self.settings.max_batch:
            raise ValueError(f"batch {batch} outside the engine's profile [1, {self.settings.max_batch}]")
        if not self.settings.buckets[0] <= text_len <= self.settings.buckets[-1]:
            raise ValueError(f"text length {text_len} outside the engine's profile "
                             f"[{self.settings.buckets[0]}, {self.settings.buckets[-1]}]")
        keep = []
        for name, t in zip(INPUT_NAMES, inputs):
            t = t.to("cuda").contiguous()
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        results = []
        for name in self.outputs:
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(name, out.data_ptr())
            results.append(out)
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        stream.synchronize()
        return results[0] if len(results) == 1 else tuple(results)


def load_engine(plan_path: str | Path) -> TensorRTEngine:
    return TensorRTEngine(plan_path)
