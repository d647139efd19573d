"""The batched vision attention computes what Hugging Face's per-window loop computes, forward and backward."""
import pytest
import torch

from jrm_engine.vision import VisionSpec, pixels_to_patches
from jrm_engine.vision_attention import batch_vision_attention
from helpers import tiny_reward_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_reward_model(tmp_path_factory.mktemp("vision-attention"))


def attention_modules(model):
    return [m for m in model.backbone.modules() if hasattr(m, "_jrm_reference_forward")]


def vision_run(model, sizes, reference: bool):
    """Features and the patch-embedding gradient of the vision tower on images of `sizes` (one call)."""
    torch.manual_seed(0)
    patches, grids = [], []
    for size in sizes:
        spec = VisionSpec(image_size=size)
        pixels = torch.randint(0, 256, (1, size, size, 3), dtype=torch.uint8)
        patches.append(pixels_to_patches(pixels, spec).reshape(-1, spec.patch_dim))
        grids.append([1, spec.grid, spec.grid])
    modules = attention_modules(model)
    batched = [m.forward for m in modules]
    if reference:
        for m in modules:
            m.forward = m._jrm_reference_forward
    try:
        visual = model.backbone.model.visual
        visual.zero_grad(set_to_none=True)
        out = visual(torch.cat(patches), grid_thw=torch.tensor(grids))
        features = out.pooler_output if hasattr(out, "pooler_output") else out
        (features.square().sum()).backward()
        grad = visual.patch_embed.proj.weight.grad.clone()
    finally:
        for m, f in zip(modules, batched):
            m.forward = f
    return features.detach(), grad


def test_every_vision_attention_module_is_batched(model):
    assert len(attention_modules(model)) == model.backbone.config.vision_config.depth
    assert batch_vision_attention(model.backbone) == len(attention_modules(model))  # idempotent


@pytest.mark.parametrize("sizes", [[56] * 6, [224, 224], [56, 112, 224]],
                         ids=["equal images", "several equal windows per image", "unequal windows (fallback)"])
def test_batched_matches_the_per_window_reference(model, sizes):
    features, grad = vision_run(model, sizes, reference=False)
    ref_features, ref_grad = vision_run(model, sizes, reference=True)
    torch.testing.assert_close(features, ref_features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5)


def test_batched_path_makes_one_attention_call_per_layer(model, monkeypatch):
    import jrm_engine.vision_attention as vision_attention

    calls = []
    # On the CPU the batched path calls short_attention, elsewhere SDPA: count both.
    for owner, name in ((vision_attention, "short_attention"), (torch.nn.functional, "scaled_dot_product_attention")):
        original = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, _f=original, **k: calls.append(a[0].shape) or _f(*a, **k))
    vision_run(model, [56] * 6, reference=False)
    assert len(calls) == model.backbone.config.vision_config.depth and all(s[0] == 6 for s in calls)
