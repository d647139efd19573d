"""Training checkpoints: safetensors only, written atomically, resumable.

Layout of `OUT/checkpoints/step-000500/`: the RewardModel folder (backbone/, reward_head.safetensors, jrm.json)
plus optimizer.safetensors, rng.safetensors and trainer_state.json. A checkpoint is written under a temporary
name and renamed into place only when complete, then the symlink `OUT/checkpoints/latest` is replaced atomically: an
interrupted save never leaves a folder that `--resume` would pick up.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .model import RewardModel

LATEST = "latest"


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous() if torch.is_tensor(value) \
                else torch.tensor(value)
    return tensors, {"param_groups": sd["param_groups"]}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(out: str | Path, step: int, model: RewardModel, optimizer, scheduler,
                    extra: dict | None = None) -> Path:
    root = Path(out) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    save_file({"torch": torch.get_rng_state()}, tmp / "rng.safetensors")
    state = {"step": step, "optimizer": opt_meta, "scheduler": scheduler.state_dict(),
             "python_rng": _jsonable(random.getstate()), "numpy_rng": _jsonable(np.random.get_state()),
             **(extra or {})}
    (tmp / "trainer_state.json").write_text(json.dumps(state))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    # `latest` is a relative symlink, so every path-taking command (jrm-export, Scorer.load, evaluate) accepts
    # OUT/checkpoints/latest; replacing it by rename keeps the switch atomic.
    pointer = root / f".{LATEST}.tmp"
    pointer.unlink(missing_ok=True)
    pointer.symlink_to(final.name, target_is_directory=True)
    os.replace(pointer, root / LATEST)
    return final


def latest_checkpoint(out: str | Path) -> Path | None:
    root = Path(out) / "checkpoints"
    pointer = root / LATEST
    if not pointer.is_symlink():
        return None
    path = root / os.readlink(pointer)
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"{pointer} names {path}, which is missing or incomplete")
    return path


def restore_training_state(path: Path, optimizer, scheduler) -> dict:
    """Load optimizer, scheduler and RNG state saved by `save_checkpoint`; returns trainer_state.json."""
    state = json.loads((path / "trainer_state.json").read_text())
    _load_optimizer(optimizer, load_file(path / "optimizer.safetensors"), state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(load_file(path / "rng.safetensors")["torch"])
    random.setstate(_tuplify(state["python_rng"]))
    np.random.set_state(tuple(state["numpy_rng"]))
    return state


def _jsonable(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (tuple, list)):
        return [_jsonable(v) for v in x]
    return x


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x
