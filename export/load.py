"""A trained checkpoint folder -> the scoring graph, in the dtype and on the device an export asks for."""
from __future__ import annotations

from pathlib import Path

import torch

from jrm_engine.model import JRM_FILE, RewardModel

from .graph import ScoringGraph, check_supported
from .settings import DTYPES


def load_reward_model(checkpoint: str | Path) -> RewardModel:
    folder = Path(checkpoint)
    if not (folder / JRM_FILE).is_file():
        raise ValueError(f"{folder}: not a jrm_engine checkpoint (no {JRM_FILE}); pass the folder that "
                         f"`python -m jrm_engine.train` saved")
    return RewardModel.from_pretrained(folder).eval()


def graph_from_model(model: RewardModel, *, positions: str, dtype: str = "float32",
                     device: str | torch.device = "cpu") -> ScoringGraph:
    check_supported(model.backbone)
    # Only the backbone changes dtype: the reward head stays fp32 (RewardHead casts its input), and the
    # graph's rotary tables stay fp32 for parity.
    model.backbone.to(device=device, dtype=DTYPES[dtype])
    model.head.to(device=device)
    return ScoringGraph(model, positions=positions).to(device).eval()
