"""The Qwen-VL patch embedding as the matrix product it is, instead of a Conv3d.

Every Qwen-VL vision tower (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) embeds patches with a Conv3d whose stride equals its
kernel, applied to inputs that are exactly one kernel each: one linear map per patch. On the CPU, oneDNN's
Conv3d backward for that shape cost 9% of a training step of the embedded default, and the linear map runs the
same arithmetic as one GEMM (benchmarks/NOTES-cpu-training.md). The weight stays the Conv3d's parameter, so
checkpoints, optimizers and the export graph (which reads the same weight as a matrix) are untouched; the
Conv3d forward stays the reference (tests/test_vision_patch_embed.py).
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn


def _linear_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    weight = self.proj.weight  # [embed, C, T, P, P]
    flat = weight.view(weight.shape[0], -1)
    return F.linear(hidden_states.reshape(-1, flat.shape[1]).to(weight.dtype), flat, self.proj.bias)


def _is_patch_conv(module: nn.Module) -> bool:
    conv = getattr(module, "proj", None)
    return (type(module).__name__.endswith("PatchEmbed") and isinstance(conv, nn.Conv3d)
            and conv.kernel_size == conv.stride and conv.padding == (0, 0, 0) and conv.groups == 1)


def linear_patch_embed(model: nn.Module) -> int:
    """Give every Qwen-VL patch embedding of `model` the linear forward; returns how many (idempotent)."""
    patched = 0
    for module in model.modules():
        if _is_patch_conv(module):
            if not hasattr(module, "_jrm_conv_forward"):
                module._jrm_conv_forward = types.MethodType(type(module).forward, module)
                module.forward = types.MethodType(_linear_forward, module)
            patched += 1
    return patched
