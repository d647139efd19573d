"""The runtime manifest every compiled engine is written with (format: jrm_engine/runtime_manifest.py, docs/CONTRIBUTING.md)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .graph import INPUT_NAMES, ScoringGraph
from .settings import ExportSettings

MANIFEST_FORMAT = "jrm-runtime-manifest"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_sha256(folder: str | Path) -> str:
    """One hash over every file of a checkpoint folder (relative names and contents), order-independent."""
    folder = Path(folder)
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + file_sha256(path).encode())
    return h.hexdigest()


def output_names(graph: ScoringGraph) -> list[str]:
    return ["rewards"] if graph.head_outputs == 1 else ["rewards", "log_sigma"]


def build_manifest(graph: ScoringGraph, settings: ExportSettings, *, backend: str, device: str, package: Path,
                   checkpoint_hash: str | None, **extra) -> dict:
    """One engine file with a dynamic text length serves every bucket."""
    sha = file_sha256(package)
    manifest = {
        "format": MANIFEST_FORMAT, "version": 1, "backend": backend, "device": device,
        "image_size": graph.spec.image_size, "max_batch": settings.max_batch, "vocab_size": graph.vocab_size,
        "pad_id": graph.pad_id, "inputs": list(INPUT_NAMES), "outputs": output_names(graph),
        "head_outputs": graph.head_outputs, "positions": graph.positions_mode, "dtype": settings.dtype,
        "image_tokens": graph.image_tokens, "settings": settings.to_dict(),
        "buckets": [{"text_len": n, "package": package.name, "sha256": sha} for n in settings.buckets],
        "torch_version": torch.__version__, "checkpoint_sha256": checkpoint_hash,
    }
    if device == "cuda":
        manifest["compute_capability"] = "{}.{}".format(*torch.cuda.get_device_capability())
    manifest.update(extra)
    return manifest


def write_json_atomic(path: str | Path, data: dict) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
    return path


def manifest_path(engine: str | Path) -> Path:
    """`scorer.pt2` -> `scorer.manifest.json`, beside the engine."""
    engine = Path(engine)
    return engine.with_name(engine.stem + ".manifest.json")
