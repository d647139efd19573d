"""Builders shared by tests: tiny random-init backbone folders (Qwen2.5-VL, Qwen2-VL, Qwen3-VL) and random
preference pairs."""
from __future__ import annotations

import json

import numpy as np
import torch
from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen3VLConfig,
                          Qwen3VLForConditionalGeneration)

from jrm_engine.backbone import SPECIAL_TOKENS, build_tiny_backbone, build_word_tokenizer
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


TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def qwen2_vl(ids, vocab):
    rope = {"rope_type": "default", "rope_theta": 10.0, "mrope_section": [2, 3, 3]}
    return Qwen2VLForConditionalGeneration(Qwen2VLConfig(
        text_config=dict(**TEXT, vocab_size=vocab, rope_parameters=rope),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2), **ids))


def qwen3_vl(ids, vocab):
    rope = {"rope_type": "default", "rope_theta": 10.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True}
    return Qwen3VLForConditionalGeneration(Qwen3VLConfig(
        text_config=dict(**TEXT, head_dim=16, vocab_size=vocab, rope_parameters=rope),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=14, deepstack_visual_indexes=[0], num_position_embeddings=64), **ids))


def family_reward_model(tmp_path, build) -> RewardModel:
    """A RewardModel on a `build` (qwen2_vl or qwen3_vl) backbone, saved to and loaded from a folder."""
    cfg = load_config("smoke")
    tokenizer = build_word_tokenizer(WORDS, (cfg.model.reward_token,))
    tok = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    ids = dict(image_token_id=tok["<|image_pad|>"], vision_start_token_id=tok["<|vision_start|>"],
               vision_end_token_id=tok["<|vision_end|>"])
    torch.manual_seed(0)
    build(ids, len(tokenizer)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(VisionSpec(cfg.model.image_size).to_preprocessor_config()))
    return RewardModel.from_backbone(tmp_path, cfg)


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
