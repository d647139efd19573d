"""The runtime manifest: which engine files serve which shape buckets, and what they were built for.

Reading it needs no compiled code, so a parent process (a benchmark, a deployment check) can inspect an engine
without loading the C++ runtime.

Runtime manifest (JSON, written by `jrm-export` next to the engine files; relative paths are relative to it):

    {
      "format": "jrm-runtime-manifest", "version": 1,
      "backend": "aoti",                 # "aoti" (.pt2 from aoti_compile_and_package) | "tensorrt" (.plan)
      "device": "cpu",                   # device type the engines were compiled for: "cpu" | "cuda"
      "image_size": 448,                 # S of source_pixels / edited_pixels (S, S, 3) uint8
      "max_batch": 32,                   # largest batch every engine accepts (its batch Dim max)
      "vocab_size": 151936,              # text_ids must lie in [0, vocab_size)
      "inputs": ["source_pixels", "edited_pixels", "text_ids", "text_lengths"],   # the contract, this order
      "outputs": ["rewards"],            # or ["rewards", "log_sigma"]; float32 [B] each
      "buckets": [                       # text-length buckets, each with the engine that runs it
        {"text_len": 64,  "package": "score.pt2", "sha256": "..."},              # sha256 optional, checked
        {"text_len": 128, "package": "score.pt2"}                                 # buckets may share a file
      ],
      "torch_version": "2.11.0",         # aoti: torch that compiled the package (major.minor must match)
      "tensorrt_version": "10.9.0",      # tensorrt: TensorRT that built the plans (must match exactly)
      "compute_capability": "9.0",       # tensorrt, and aoti on cuda: GPU the engines were built for
      "checkpoint_sha256": "...",        # optional provenance; compared when load(expect=...) names it
      "group": {"package": "score.group.pt2", "sha256": "...", "max_group": 16}   # optional group engine
    }

The group engine (aoti only) takes (source [1,S,S,3], text_ids [1,L], text_lengths [1], edited [G,S,S,3]) and
returns rewards [G] (and log_sigma [G]): one source and instruction encoded once for up to max_group candidates.

Other fields (jrm-export adds pad_id, settings, dtype, ...) are kept in `Manifest.fields` and otherwise ignored,
except pad_id, which must be 0: the runtime right-pads text_ids with 0 as the contract says.

A bucket may also carry its own "image_size" (default: the top-level one): requests are bucketed by image size
and text length. One package per bucket (static text length) or one package with a dynamic text length shared
by all buckets are both fine; each distinct file is loaded once.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST_FORMAT = "jrm-runtime-manifest"
CONTRACT_INPUTS = ["source_pixels", "edited_pixels", "text_ids", "text_lengths"]


@dataclass(frozen=True)
class Bucket:
    image_size: int
    text_len: int
    package: Path
    sha256: str | None


@dataclass(frozen=True)
class Manifest:
    path: Path
    backend: str
    device: str
    image_size: int
    max_batch: int
    vocab_size: int
    outputs: list[str]
    buckets: list[Bucket]
    fields: dict[str, Any]  # the whole JSON, for provenance checks
    group: Bucket | None = None  # the group engine: text_len unused (0), image_size the top-level one
    max_group: int = 0

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"runtime manifest {path}: no such file")
        d = json.loads(path.read_text())

        def field(name: str, kind: type) -> Any:
            if name not in d:
                raise ValueError(f"runtime manifest {path}: missing field {name!r}")
            if not isinstance(d[name], kind):
                raise ValueError(f"runtime manifest {path}: field {name!r} must be {kind.__name__}, got {d[name]!r}")
            return d[name]

        if d.get("format") != MANIFEST_FORMAT or d.get("version") != 1:
            raise ValueError(f"runtime manifest {path}: format/version must be {MANIFEST_FORMAT!r}/1, "
                             f"got {d.get('format')!r}/{d.get('version')!r}")
        if field("inputs", list) != CONTRACT_INPUTS:
            raise ValueError(f"runtime manifest {path}: field 'inputs' must be {CONTRACT_INPUTS}, got {d['inputs']}")
        if field("outputs", list) not in (["rewards"], ["rewards", "log_sigma"]):
            raise ValueError(f"runtime manifest {path}: field 'outputs' must be [rewards] or [rewards, log_sigma]")
        if d.get("pad_id", 0) != 0:
            raise ValueError(f"runtime manifest {path}: field 'pad_id' is {d['pad_id']}, the runtime pads with 0")
        image_size = field("image_size", int)
        buckets = []
        for i, b in enumerate(field("buckets", list)):
            if not isinstance(b, dict) or not isinstance(b.get("text_len"), int) or not b.get("package"):
                raise ValueError(f"runtime manifest {path}: buckets[{i}] needs an int 'text_len' and a 'package'")
            package = (path.parent / b["package"]).resolve()
            if not package.is_file():
                raise FileNotFoundError(f"runtime manifest {path}: buckets[{i}] package {package}: no such file")
            buckets.append(Bucket(int(b.get("image_size", image_size)), b["text_len"], package, b.get("sha256")))
        if not buckets:
            raise ValueError(f"runtime manifest {path}: field 'buckets' is empty")
        group, max_group = None, 0
        if d.get("group"):
            g = d["group"]
            if not isinstance(g, dict) or not g.get("package") or not isinstance(g.get("max_group"), int):
                raise ValueError(f"runtime manifest {path}: field 'group' needs a 'package' and an int 'max_group'")
            package = (path.parent / g["package"]).resolve()
            if not package.is_file():
                raise FileNotFoundError(f"runtime manifest {path}: group package {package}: no such file")
            group, max_group = Bucket(image_size, 0, package, g.get("sha256")), g["max_group"]
        return cls(path=path, backend=field("backend", str), device=field("device", str), image_size=image_size,
                   max_batch=field("max_batch", int), vocab_size=field("vocab_size", int), outputs=d["outputs"],
                   buckets=buckets, fields=d, group=group, max_group=max_group)
