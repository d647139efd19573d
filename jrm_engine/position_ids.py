"""M-RoPE position ids of a batch whose rows share one layout, from a single row.

Hugging Face's `get_rope_index` walks every row in Python (a host sync and a `groupby` per row): about 5% of a
CPU training step of the tiny default, and a sync per row on a GPU. A JRM batch is right-padded and every row has
the same token-type pattern (images at the same places, all of one size) up to its own length, so every row's
position ids are the longest row's, cut to its length.
"""
from __future__ import annotations

import torch


def shared_layout_position_ids(backbone_model, input_ids: torch.Tensor, mm_token_type_ids: torch.Tensor,
                               attention_mask: torch.Tensor | None,
                               image_grid_thw: torch.Tensor | None) -> torch.Tensor | None:
    """[3, B, L] position ids equal to `backbone_model.get_rope_index` of the whole batch (padding at 0, as there),
    or None when the rows do not share a layout: no mask or images, left padding, different token-type
    patterns, or images of different sizes. Then the caller leaves the positions to Hugging Face."""
    if attention_mask is None or image_grid_thw is None or len(image_grid_thw) == 0:
        return None
    mask = attention_mask.bool()
    lengths = mask.sum(1)
    steps = torch.arange(mask.shape[1], device=mask.device)
    longest = int(lengths.argmax())
    pattern = mm_token_type_ids[longest]
    right_padded = torch.equal(mask, steps[None] < lengths[:, None])
    if not right_padded or bool(((mm_token_type_ids != pattern) & mask).any()) \
            or not bool((image_grid_thw == image_grid_thw[0]).all()):
        return None
    is_image = pattern == 1
    images = int((is_image & ~torch.cat([is_image.new_zeros(1), is_image[:-1]])).sum())  # image runs in the row
    positions, _ = backbone_model.get_rope_index(
        input_ids[longest:longest + 1], mm_token_type_ids=mm_token_type_ids[longest:longest + 1],
        image_grid_thw=image_grid_thw[:images], attention_mask=attention_mask[longest:longest + 1])
    return positions.expand(-1, mask.shape[0], -1) * mask  # padding at 0, as get_rope_index leaves it
