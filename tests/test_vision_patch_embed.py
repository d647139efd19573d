"""The linear patch embedding computes what the Qwen-VL Conv3d computes, forward and backward, for every family:
against a float64 Conv3d, its error is no worse than the float32 Conv3d's (they sum in different orders)."""
import copy

import pytest
import torch

from helpers import tiny_reward_model
from jrm_engine.backbone import SPECIAL_TOKENS
from jrm_engine.vision_patch_embed import linear_patch_embed
from test_backbones import qwen2_vl, qwen3_vl


def qwen2_5_vl(tmp_path):
    return tiny_reward_model(tmp_path).backbone  # loaded through load_backbone: already patched


def other_family(build):
    def make(tmp_path):
        ids = dict(image_token_id=1, vision_start_token_id=2, vision_end_token_id=3)
        torch.manual_seed(0)
        model = build(ids, len(SPECIAL_TOKENS) + 8)
        assert linear_patch_embed(model) == 1
        return model
    return make


def embed_run(embed, patches, forward):
    embed.zero_grad(set_to_none=True)
    out = forward(patches)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in embed.proj.parameters()]
    return out.detach(), grads


@pytest.mark.parametrize("build", [qwen2_5_vl, other_family(qwen2_vl), other_family(qwen3_vl)],
                         ids=["qwen2_5_vl", "qwen2_vl", "qwen3_vl"])
def test_linear_patch_embed_matches_the_conv3d(tmp_path, build):
    model = build(tmp_path)
    embed = model.model.visual.patch_embed
    assert linear_patch_embed(model) == 1  # idempotent: patched once, counted again
    conv = embed.proj
    torch.manual_seed(1)
    patches = torch.randn(37, conv.in_channels * conv.weight[0, 0].numel())
    out, grads = embed_run(embed, patches, embed.forward)
    ref_out, ref_grads = embed_run(embed, patches, embed._jrm_conv_forward)
    embed64 = copy.deepcopy(embed).double()
    true_out, true_grads = embed_run(embed64, patches.double(), embed64._jrm_conv_forward)
    assert out.shape == (37, conv.out_channels)
    for fast, ref, truth in zip([out, *grads], [ref_out, *ref_grads], [true_out, *true_grads], strict=True):
        fast_error = (fast.double() - truth).abs().max()
        ref_error = (ref.double() - truth).abs().max()
        assert fast_error <= 2 * ref_error + 1e-6 * truth.abs().max(), (fast_error, ref_error)
