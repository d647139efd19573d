"""shared_layout_position_ids equals Hugging Face's per-row get_rope_index on JRM batches of every backbone family,
and gives up (None, so HF computes them) on batches whose rows do not share a layout."""
import pytest
import torch

from helpers import family_reward_model, qwen2_vl, qwen3_vl, random_pairs, tiny_reward_model
from jrm_engine.data.collate import PairCollator
from jrm_engine.position_ids import shared_layout_position_ids


def hf_inputs(model, batch):
    grids = batch.image_grid_thw if batch.image_index is None else batch.image_grid_thw[batch.image_index]
    return model.backbone.model, batch.input_ids, model.token_types(batch.input_ids), batch.attention_mask, grids


@pytest.fixture(params=["qwen2_5_vl", "qwen2_vl", "qwen3_vl"])
def model(request, tmp_path):
    build = {"qwen2_vl": qwen2_vl, "qwen3_vl": qwen3_vl}.get(request.param)
    return tiny_reward_model(tmp_path) if build is None else family_reward_model(tmp_path, build)


def test_equal_to_hugging_face_per_row_positions(model):
    batch = PairCollator(model.layout, model.spec)(random_pairs(6, model.spec.image_size))
    inner, ids, types, mask, grids = hf_inputs(model, batch)
    assert len(set(mask.sum(1).tolist())) > 1  # rows of several lengths, so padding is covered
    expected, _ = inner.get_rope_index(ids, mm_token_type_ids=types, image_grid_thw=grids, attention_mask=mask)
    got = shared_layout_position_ids(inner, ids, types, mask, grids)
    assert got.shape == expected.shape
    assert torch.equal(got, expected)


def test_rows_that_do_not_share_a_layout_are_left_to_hugging_face(tmp_path):
    model = tiny_reward_model(tmp_path)
    batch = PairCollator(model.layout, model.spec)(random_pairs(2, model.spec.image_size))
    inner, ids, types, mask, grids = hf_inputs(model, batch)
    assert shared_layout_position_ids(inner, ids, types, mask, grids) is not None
    left_padded = mask.flip(1)
    assert shared_layout_position_ids(inner, ids, types, left_padded, grids) is None
    moved = types.clone()
    moved[0] = torch.roll(moved[0], 1)  # row 0's image tokens one place later than the others'
    assert shared_layout_position_ids(inner, ids, moved, mask, grids) is None
    other_size = grids.clone()
    other_size[1, 1:] *= 2
    assert shared_layout_position_ids(inner, ids, types, mask, other_size) is None
