"""Attention over short sequences on the CPU as two batched GEMMs and a softmax.

PyTorch's CPU flash-attention kernel (what `scaled_dot_product_attention` picks on the CPU) works one (batch, head,
query block) at a time. At the tiny default's shapes (head_dim 32; 36-patch vision windows, <= 70 text tokens) that
runs at a quarter of the GEMM rate or less: forward + backward per layer took 12.3 ms for the text (64 x 4 x 65 x 32)
and 9.6 ms for the vision tower (96 x 4 x 36 x 32), against 8.8 and 3.8 ms as `bmm -> softmax -> bmm`
(benchmarks/NOTES-cpu-training.md). The score matrix is materialised, [B * H, L, S] floats, so this path is taken
only on the CPU and up to `SHORT_MAX` keys; everything else goes to SDPA, which stays the reference
(tests/test_short_attention.py).

`IMPLEMENTATION` is registered with Hugging Face's attention and mask interfaces, so a backbone loaded with
attn_implementation="sdpa" switches to it with `use_short_attention` and builds SDPA's masks.
"""
from __future__ import annotations

import torch
from torch import nn

IMPLEMENTATION = "jrm_short_sdpa"
SHORT_MAX = 256  # keys; at 256 the scores of a 64 x 4-head batch are 64 MiB


def is_short(query: torch.Tensor, key: torch.Tensor) -> bool:
    return query.device.type == "cpu" and key.shape[-2] <= SHORT_MAX


def short_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None = None,
                    scale: float | None = None, causal: bool = False) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v. query [B, H, L, D]; key, value [B, Hkv, S, D] with H a multiple of Hkv
    (grouped-query attention: the H / Hkv query heads of a KV head are one taller GEMM, K and V are not repeated);
    mask broadcastable to [B, H, L, S], bool (True = attend) or additive float; causal (mask None): query i sees
    keys up to i + S - L, as with a KV cache. Returns [B, H, L, D]."""
    b, h, length, d = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    groups = h // kv_heads
    scores = torch.bmm(query.reshape(b * kv_heads, groups * length, d),
                       key.reshape(b * kv_heads, keys, d).transpose(1, 2))
    # In place: bmm's backward needs its inputs, not its output, and so do the scale and the mask.
    scores = scores.view(b, kv_heads, groups, length, keys).mul_(d ** -0.5 if scale is None else scale)
    if mask is None and causal and length > 1:
        rows = torch.arange(length, device=query.device)[:, None] + (keys - length)
        mask = rows >= torch.arange(keys, device=query.device)  # [L, S] broadcasts as it is
    elif mask is not None:
        mask = mask[:, :, None] if mask.shape[1] == 1 else \
            mask.expand(-1, h, -1, -1).reshape(mask.shape[0], kv_heads, groups, *mask.shape[2:])
    if mask is not None and mask.dtype == torch.bool:
        # The dtype's lowest value rather than -inf: a row with every key masked gets a uniform softmax, not NaN.
        scores.masked_fill_(~mask, torch.finfo(scores.dtype).min)
    elif mask is not None:
        scores.add_(mask.to(scores.dtype))
    probs = scores.softmax(-1).view(b * kv_heads, groups * length, keys)
    return torch.bmm(probs, value.reshape(b * kv_heads, keys, d)).view(b, h, length, d)


def hf_attention_forward(module: nn.Module, query, key, value, attention_mask, dropout: float = 0.0,
                         scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """Hugging Face's attention-function signature: `short_attention` where it applies, else HF's own SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if dropout or kwargs.get("position_bias") is not None or kwargs.get("output_attentions") \
            or not is_short(query, key):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    out = short_attention(query, key, value, attention_mask, scaling, causal=causal)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, hf_attention_forward)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


def use_short_attention(model: nn.Module) -> bool:
    """Switch a backbone loaded with SDPA to `IMPLEMENTATION` (text and vision); True when it did."""
    if model.config._attn_implementation != "sdpa":
        return False
    register()
    model.set_attn_implementation(IMPLEMENTATION)
    return model.config._attn_implementation == IMPLEMENTATION
