"""AOTInductor packages of the scoring graph (CPU or CUDA), loadable from Python and from the C++ runtime."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .graph import ScoringGraph
from .manifest import build_manifest, file_sha256, manifest_path, write_json_atomic
from .program import export_graph, export_group_graph
from .settings import ExportSettings


def compile_package(graph: ScoringGraph, settings: ExportSettings, path: str | Path, *, device: str = "cpu",
                    group: bool = False, checkpoint_hash: str | None = None, **manifest_extra) -> Path:
    """Export (dynamic batch and text length), compile, and write `path` plus its runtime manifest beside it.

    With `group`, also `<stem>.group.pt2`: one source and instruction encoded once, up to `settings.max_group`
    candidates against them (the manifest's "group" field names it). Returns the manifest path. The graph must
    already be on `device` in the settings' dtype.
    """
    path = Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"--aoti {path}: the package name must end in .pt2")
    path.parent.mkdir(parents=True, exist_ok=True)
    _compile(export_graph(graph, settings, device), path)
    if group:
        group_path = group_package_path(path)
        _compile(export_group_graph(graph, settings, device), group_path)
        manifest_extra["group"] = {"package": group_path.name, "sha256": file_sha256(group_path),
                                   "max_group": settings.max_group}
    manifest = build_manifest(graph, settings, backend="aoti", device=device.split(":")[0], package=path,
                              checkpoint_hash=checkpoint_hash, **manifest_extra)
    return write_json_atomic(manifest_path(path), manifest)


def group_package_path(path: str | Path) -> Path:
    """`scorer.pt2` -> `scorer.group.pt2`, beside it."""
    path = Path(path)
    return path.with_name(path.stem + ".group.pt2")


def _compile(program: torch.export.ExportedProgram, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp.pt2")  # a half-written package never carries the final name
    with torch.no_grad():
        torch._inductor.aoti_compile_and_package(program, package_path=str(tmp))
    os.replace(tmp, path)


def load_package(path: str | Path, device: str | None = None):
    """A callable with the scoring graph's signature. `device` selects the device index for CUDA packages."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"AOTInductor package {path}: no such file")
    if device and device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        return torch._inductor.aoti_load_package(str(path), device_index=index)
    return torch._inductor.aoti_load_package(str(path))
