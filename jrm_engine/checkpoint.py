"""Training checkpoints: safetensors only, written atomically, resumable.

Layout of `OUT/checkpoints/step-000500/`: the RewardModel folder (backbone/, reward_head.safetensors, jrm.json)
plus optimizer.safetensors, rng.safetensors and trainer_state.json. A checkpoint is written under a temporary
name and renamed into place only when complete, then the symlink `OUT/checkpoints/latest` is replaced atomically: an
interrupted save never leaves a folder that `--resume` would pick up.

The same folder comes from any world size: every rank joins the gathering of the full (unsharded) model and
optimizer state with `torch.distributed.checkpoint.state_dict`, and rank 0 alone writes it. Optimizer state is
stored per parameter in the order of the optimizer's parameter groups, so `--resume` can reshard it onto another
world size or wrapper (DDP, FSDP2 or none).
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
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_optimizer_state_dict)

from .model import RewardModel

LATEST = "latest"


def _param_names(root: nn.Module) -> dict[nn.Parameter, list[str]]:
    """Every name of every parameter (a tied embedding / LM head weight has two)."""
    names: dict[nn.Parameter, list[str]] = {}
    for name, p in root.named_parameters(remove_duplicate=False):
        names.setdefault(p, []).append(name)
    return names


def _optimizer_tensors(root: nn.Module, optimizer: torch.optim.Optimizer,
                       full: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """The gathered optimizer state (keyed by parameter name) as `{index}.{state}` tensors, the index counting the
    optimizer's parameters group by group: the layout `optimizer.state_dict()` has in one process."""
    names = _param_names(root)
    tensors, groups, idx = {}, [], 0
    for group, full_group in zip(optimizer.param_groups, full["param_groups"]):
        ids = []
        for p in group["params"]:
            state = next((full["state"][n] for n in names[p] if n in full["state"]), {})
            for name, value in state.items():
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous() if torch.is_tensor(value) \
                    else torch.tensor(value)
            ids.append(idx)
            idx += 1
        groups.append({**{k: v for k, v in full_group.items() if k != "params"}, "params": ids})
    return tensors, {"param_groups": groups}


def _load_optimizer(root: nn.Module, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                    meta: dict, path: Path) -> None:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    names = _param_names(root)
    fqn = [names[p][0] for p in params]
    state: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        if not 0 <= int(idx) < len(params):
            raise ValueError(f"{path / 'optimizer.safetensors'}: state for parameter {idx}, but this model's "
                             f"optimizer has {len(params)} parameters")
        state.setdefault(fqn[int(idx)], {})[name] = value
    groups = [{**g, "params": [fqn[i] for i in g["params"]]} for g in meta["param_groups"]]
    # full_state_dict: each rank keeps its own shard of every full tensor (FSDP2) or the whole of it (DDP, none).
    set_optimizer_state_dict(root, optimizer, {"state": state, "param_groups": groups},
                             options=StateDictOptions(full_state_dict=True))


def _submodule_state(full: dict[str, torch.Tensor], root: nn.Module, model: nn.Module) -> dict[str, torch.Tensor]:
    """The entries of root's state dict that belong to `model`, keyed relative to `model`.

    Gathered from FSDP2 shards, the names of a tied parameter (embedding and LM head) come back as separate
    copies; made one tensor again, as in a live state dict, so save_pretrained writes the tied weight once."""
    for names in _param_names(root).values():
        for name in names[1:]:
            if names[0] in full and name in full:
                full[name] = full[names[0]]
    prefix = next(name for name, m in root.named_modules() if m is model)
    prefix = f"{prefix}." if prefix else ""
    return {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}


def save_checkpoint(out: str | Path, step: int, model: RewardModel, optimizer, scheduler,
                    extra: dict | None = None, *, module: nn.Module | None = None, is_main: bool = True) -> Path:
    """`module`: the module the optimizer trains (the RewardModel or a module holding it, FSDP2-sharded or the one
    inside DDP); default `model`. Every rank must call this (the gathering is a collective); only `is_main`
    writes."""
    module = model if module is None else module
    root = Path(out) / "checkpoints"
    final = root / f"step-{step:06d}"
    # cpu_offload with full_state_dict: rank 0 receives the whole state in host memory, the others nothing.
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(module, options=options)
    optim_state = get_optimizer_state_dict(module, optimizer, options=options)
    if not is_main:
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=_submodule_state(model_state, module, model))
    opt_tensors, opt_meta = _optimizer_tensors(module, optimizer, optim_state)
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
    verify_safetensors(path)
    return path


def verify_safetensors(folder: str | Path) -> None:
    """Open the header of every .safetensors file under `folder`; a truncated or corrupted one is a ValueError
    naming it, before any loading starts (safetensors' own error names no file and is no ValueError)."""
    from safetensors import SafetensorError, safe_open

    for path in sorted(Path(folder).rglob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except SafetensorError as e:
            raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


def restore_training_state(path: Path, optimizer, scheduler, module: nn.Module) -> dict:
    """Load optimizer, scheduler and RNG state saved by `save_checkpoint` (from any world size) into `optimizer`,
    which trains `module` (wrapped or not, as for `save_checkpoint`); returns trainer_state.json."""
    state = json.loads((path / "trainer_state.json").read_text())
    _load_optimizer(module, optimizer, load_file(path / "optimizer.safetensors"), state["optimizer"], path)
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
