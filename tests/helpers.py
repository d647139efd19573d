"""Builders shared by tests: a tiny random-init backbone folder and random preference pairs."""
from __future__ import annotations

import numpy as np

from jrm_engine.backbone import build_tiny_backbone
from jrm_engine.config import load_config
from jrm_engine.data import Candidate, PreferencePair
from jrm_engine.model import RewardModel
from jrm_engine.vision import VisionSpec

WORDS = "make the red blue green circle square bigger remove add correct wrong no change . , object".split()


def tiny_reward_model(tmp_path, **overrides) -> RewardModel:
    cfg = load_config("smoke", overrides=overrides)
    spec = VisionSpec(image_size=cfg.model.image_size)
    folder = build_tiny_backbone(tmp_path / "backbone", WORDS, cfg.model.tiny, spec, cfg.model.reward_token)
    return RewardModel.from_backbone(folder, cfg)


def random_pairs(n: int, size: int, seed: int = 0, explanations: bool = True) -> list[PreferencePair]:
    rng = np.random.default_rng(seed)
    img = lambda: rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    words = WORDS[:-4]
    text = lambda k: " ".join(rng.choice(words, k))
    pairs = []
    for i in range(n):
        expl = (lambda: text(int(rng.integers(2, 8)))) if explanations else (lambda: None)
        pairs.append(PreferencePair(f"pair-{i}", img(), text(int(rng.integers(1, 6))), Candidate(img(), expl()),
                                    Candidate(img(), expl()), ["a", "b"][i % 2]))
    return pairs
