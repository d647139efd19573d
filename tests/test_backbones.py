"""The same RewardModel code path carries Qwen2-VL and Qwen3-VL folders (tiny random-init models saved here)."""
import pytest
import torch

from helpers import family_reward_model, qwen2_vl, qwen3_vl, random_pairs
from jrm_engine.data.collate import PairCollator


@pytest.mark.parametrize("build", [qwen2_vl, qwen3_vl], ids=["qwen2_vl", "qwen3_vl"])
def test_backbone_family_scores_and_ignores_padding(tmp_path, build):
    model = family_reward_model(tmp_path, build).eval()
    pairs = random_pairs(2, model.spec.image_size)
    collate = PairCollator(model.layout, model.spec)
    with torch.no_grad():
        batched = model(**collate(pairs).model_inputs()).rewards
        alone = torch.cat([model(**collate([p]).model_inputs()).rewards for p in pairs])
    assert torch.isfinite(batched).all() and batched.std() > 0
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
