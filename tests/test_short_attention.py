"""The short-sequence CPU attention computes SDPA's attention: masks, causality, grouped KV heads, gradients."""
import pytest
import torch
import torch.nn.functional as F

from jrm_engine.short_attention import IMPLEMENTATION, SHORT_MAX, hf_attention_forward, is_short, short_attention
from helpers import tiny_reward_model


def sdpa(q, k, v, mask=None, causal=False):
    """The reference: PyTorch's SDPA with K and V repeated per query head."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    if causal and mask is None:  # SDPA's is_causal is top-left aligned; a KV cache needs the bottom-right one
        length, keys = q.shape[2], k.shape[2]
        mask = torch.arange(length)[:, None] + (keys - length) >= torch.arange(keys)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def inputs(b, h, kv_heads, length, keys, d=16, seed=0):
    """float64 q [B, H, L, D], k and v [B, Hkv, S, D]."""
    g = torch.Generator().manual_seed(seed)
    make = lambda heads, n: torch.randn(b, heads, n, d, generator=g, dtype=torch.float64)
    return make(h, length), make(kv_heads, keys), make(kv_heads, keys)


def padding_mask(b, length, lengths):
    """HF's SDPA mask for right-padded rows: causal, and no key past a row's length. [B, 1, L, L] bool."""
    steps = torch.arange(length)
    return ((steps[:, None] >= steps) & (steps < torch.tensor(lengths)[:, None, None]))[:, None]


def errors(case):
    """Max |short - truth| and |sdpa - truth| in float32 (truth: SDPA in float64) of the output and the input
    gradients, and one float32 ulp at each truth's largest value."""
    q, k, v = case["inputs"]
    kwargs = {key: case.get(key) for key in ("mask", "causal")}
    out = {}
    for name, fn in (("short", short_attention), ("sdpa", sdpa)):
        leaves = [t.float().requires_grad_() for t in (q, k, v)]  # float32 copies
        mask = kwargs["mask"]
        result = fn(*leaves, mask=mask.float() if mask is not None and mask.is_floating_point() else mask,
                    causal=kwargs["causal"] or False)
        weight = torch.linspace(-1, 1, result.numel()).view_as(result)
        (result * weight).sum().backward()
        out[name] = (result.double(), [t.grad.double() for t in leaves])
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    truth = sdpa(*leaves, **kwargs)
    (truth * torch.linspace(-1, 1, truth.numel(), dtype=torch.float64).view_as(truth)).sum().backward()
    diff = lambda a, b: (a - b).abs().max().item()
    truths = [truth.detach()] + [t.grad for t in leaves]
    out = {name: [diff(res, truth.detach())] + [diff(g, t.grad) for g, t in zip(grads, leaves)]
           for name, (res, grads) in out.items()}
    out["ulp"] = [torch.finfo(torch.float32).eps * t.abs().max().item() for t in truths]
    return out


CASES = {
    "self-attention, no mask": dict(inputs=inputs(3, 4, 4, 36, 36)),
    "causal, grouped KV heads": dict(inputs=inputs(2, 4, 2, 20, 20), causal=True),
    "causal with a KV cache (3 new queries, 11 keys)": dict(inputs=inputs(2, 4, 2, 3, 11), causal=True),
    "right padding mask, grouped KV heads": dict(inputs=inputs(3, 6, 2, 17, 17), mask=padding_mask(3, 17, [17, 9, 4])),
    "additive float mask per head": dict(inputs=inputs(2, 4, 2, 9, 9),
                                         mask=torch.randn(2, 4, 9, 9, generator=torch.Generator().manual_seed(1))),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_short_attention_is_as_accurate_as_sdpa_forward_and_backward(case):
    err = errors(case)
    for ours, theirs, ulp, what in zip(err["short"], err["sdpa"], err["ulp"], ("output", "dq", "dk", "dv")):
        # As accurate as SDPA in float32, up to a few rounding steps (the sums run in another order).
        assert ours <= theirs + 8 * ulp, f"{what}: short attention error {ours:.3g} against SDPA's {theirs:.3g}"


def test_a_row_with_every_key_masked_stays_finite():
    q, k, v = inputs(1, 2, 2, 4, 4)
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 2] = False
    out = short_attention(q, k, v, mask=mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, :, 2], v[0].mean(1))  # uniform over the keys
    rows = [0, 1, 3]
    torch.testing.assert_close(out[:, :, rows], sdpa(q, k, v, mask=mask)[:, :, rows])


def test_long_or_accelerator_sequences_go_to_sdpa():
    q = torch.zeros(1, 1, 2, 8)
    assert is_short(q, torch.zeros(1, 1, SHORT_MAX, 8)) and not is_short(q, torch.zeros(1, 1, SHORT_MAX + 1, 8))
    assert not is_short(q.to("meta"), torch.zeros(1, 1, 4, 8, device="meta"))


def test_hugging_face_signature_matches_its_sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups = True, 2
    q, k, v = inputs(3, 4, 2, 12, 12)
    for mask in (None, padding_mask(3, 12, [12, 7, 2])):
        ours, _ = hf_attention_forward(module, q, k, v, mask, scaling=0.3)
        ref, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.3)
        rows = ref.new_ones(ref.shape[:2], dtype=torch.bool) if mask is None else mask[:, 0].diagonal(0, 1, 2)
        torch.testing.assert_close(ours[rows], ref[rows], rtol=1e-5, atol=1e-6)


def test_a_loaded_backbone_uses_it_for_text_and_vision(tmp_path):
    model = tiny_reward_model(tmp_path)
    configs = (model.backbone.config, model.backbone.config.text_config, model.backbone.config.vision_config)
    assert all(c._attn_implementation == IMPLEMENTATION for c in configs)
