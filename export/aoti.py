"""AOTInductor packages of the scoring graph (CPU or CUDA), loadable from Python and from the C++ runtime."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .graph import ScoringGraph
from .manifest import build_manifest, manifest_path, write_json_atomic
from .program import export_graph
from .settings import ExportSettings


def compile_package(graph: ScoringGraph, settings: ExportSettings, path: str | Path, *, device: str = "cpu",
                    checkpoint_hash: str | None = None, **manifest_extra) -> Path:
    """Export (dynamic batch and text length), compile, and write `path` plus its runtime manifest beside it.

    Returns the manifest path. The graph must already be on `device` in the settings' dtype.
    """
    path = Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"--aoti {path}: the package name must end in .pt2")
    path.parent.mkdir(parents=True, exist_ok=True)
    program = export_graph(graph, settings, device)
    tmp = path.with_name(path.stem + ".tmp.pt2")
    with torch.no_grad():
        torch._inductor.aoti_compile_and_package(program, package_path=str(tmp))
    os.replace(tmp, path)
    manifest = build_manifest(graph, settings, backend="aoti", device=device.split(":")[0], package=path,
                              checkpoint_hash=checkpoint_hash, **manifest_extra)
    return write_json_atomic(manifest_path(path), manifest)


def load_package(path: str | Path, device: str | None = None):
    """A callable with the scoring graph's signature. `device` selects the device index for CUDA packages."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"AOTInductor package {path}: no such file")
    if device and device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        return torch._inductor.aoti_load_package(str(path), device_index=index)
    return torch._inductor.aoti_load_package(str(path))
