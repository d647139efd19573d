"""The same RewardModel code path carries Qwen2-VL and Qwen3-VL folders (tiny random-init models saved here)."""
import json

import pytest
import torch
from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen3VLConfig,
                          Qwen3VLForConditionalGeneration)

from helpers import WORDS, random_pairs
from jrm_engine.backbone import SPECIAL_TOKENS, build_word_tokenizer
from jrm_engine.config import load_config
from jrm_engine.data.collate import PairCollator
from jrm_engine.model import RewardModel
from jrm_engine.vision import VisionSpec

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


@pytest.mark.parametrize("build", [qwen2_vl, qwen3_vl], ids=["qwen2_vl", "qwen3_vl"])
def test_backbone_family_scores_and_ignores_padding(tmp_path, build):
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
    model = RewardModel.from_backbone(tmp_path, cfg).eval()
    pairs = random_pairs(2, model.spec.image_size)
    collate = PairCollator(model.layout, model.spec)
    with torch.no_grad():
        batched = model(**collate(pairs).model_inputs()).rewards
        alone = torch.cat([model(**collate([p]).model_inputs()).rewards for p in pairs])
    assert torch.isfinite(batched).all() and batched.std() > 0
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
