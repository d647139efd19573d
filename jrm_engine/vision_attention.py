"""One batched attention call for the Qwen2.5-VL vision tower when all its attention windows have the same length.

Hugging Face's SDPA path for the vision tower splits the packed patch sequence at `cu_seqlens` and calls attention
once per window. Every image here has the same size, so the windows all have the same length, and the per-window
loop is only overhead: with 128 images a step it was 256 tiny attention calls per step, forward and backward, and
about a quarter of a CPU training step (benchmarks/NOTES-cpu-training.md). Equal windows reshape to a batch
`[windows, heads, length, head_dim]` and go through one attention call (`short_attention` on the CPU, else
`scaled_dot_product_attention`), which computes the same block-diagonal attention. Unequal windows (images of mixed
sizes) fall back to Hugging Face's own forward, which stays the reference (tests/test_vision_attention.py checks
outputs and gradients against it).
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

from .short_attention import IMPLEMENTATION, is_short, short_attention


def _batched_forward(self, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor,
                     position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                     max_seqlen: int | None = None, **kwargs) -> torch.Tensor:
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()  # HF's loop reads them on the host too
    if len(set(lengths)) != 1:
        return self._jrm_reference_forward(hidden_states, cu_seqlens, position_embeddings, max_seqlen, **kwargs)
    n, size = hidden_states.shape[0], lengths[0]
    q, k, v = self.qkv(hidden_states).reshape(n, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    # [n, heads, d] -> [windows, heads, size, d]: the packed order is window-major, so a reshape splits it.
    q, k, v = (t.reshape(n // size, size, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
    out = short_attention(q, k, v, scale=self.scaling) if is_short(q, k) else \
        F.scaled_dot_product_attention(q, k, v, scale=self.scaling)
    return self.proj(out.transpose(1, 2).reshape(n, -1))


def batch_vision_attention(model: nn.Module) -> int:
    """Give every Qwen2.5-VL vision attention module of `model` the batched forward; returns how many.

    Only for SDPA and its short-sequence CPU variant (flash attention already runs variable-length windows in one call, and eager
    is kept as Hugging Face wrote it).
    """
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLVisionAttention

    patched = 0
    for module in model.modules():
        if isinstance(module, Qwen2_5_VLVisionAttention) and \
                module.config._attn_implementation in ("sdpa", IMPLEMENTATION):
            if not hasattr(module, "_jrm_reference_forward"):
                module._jrm_reference_forward = types.MethodType(type(module).forward, module)
                module.forward = types.MethodType(_batched_forward, module)
            patched += 1
    return patched
