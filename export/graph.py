"""The scoring graph: a Qwen2.5-VL reward model re-expressed without data-dependent ops, for export.

It reads a `RewardModel`'s own weights (no copies) and computes the same reward. At a fixed image size every
quantity Hugging Face derives from `image_grid_thw` at run time is a constant computed here once, on the host:
the vision window permutation, window boundaries and rotary tables. The language-model positions depend only on
the instruction length, so the graph computes them arithmetically from `text_lengths`.

Static layout (T = 2N + 5 + L tokens, N image tokens per image, L the text bucket):

    [vs][source N][ve][vs][edited N][ve][instruction, right-padded to L][<reward>]

Padded instruction slots are removed from attention with a key-padding mask and `<reward>`'s position is the
instruction's length past the text start, so every real token sees exactly what it sees in the unpadded sequence;
both images and `<reward>` sit at fixed indices whatever the instruction length.

Inputs (the contract in docs/CONTRIBUTING.md): source_pixels, edited_pixels uint8 [B, S, S, 3]; text_ids int64 [B, L]
right-padded with 0; text_lengths int64 [B] (>= 1). Output: rewards float32 [B], plus log_sigma float32 [B] when
the reward head has two outputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

from jrm_engine.vision import VisionSpec, pixels_to_patches

SUPPORTED_MODEL_TYPES = ("qwen2_5_vl",)
# "mrope": Qwen's 3-D image positions (get_rope_index), what RewardModel trains with; "sequential": 1-D positions
# on all three M-RoPE axes, what Hugging Face computes when no mm_token_type_ids are given.
POSITION_MODES = ("sequential", "mrope")
DEFAULT_POSITIONS = "mrope"
INPUT_NAMES = ("source_pixels", "edited_pixels", "text_ids", "text_lengths")


def check_supported(backbone: nn.Module) -> None:
    model_type = backbone.config.model_type
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"the scoring graph does not support backbone model_type {model_type!r}; "
                         f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")


def rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Hugging Face's Qwen2RMSNorm, statistics in fp32 whatever the activation dtype."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotation in fp32 (cos/sin are fp32), result back in x's dtype."""
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)


def gated_mlp(mlp: nn.Module, act, x: torch.Tensor) -> torch.Tensor:
    return mlp.down_proj(act(mlp.gate_proj(x)) * mlp.up_proj(x))


# ---- vision ---------------------------------------------------------------------------------------------------
class VisionEncoder(nn.Module):
    """uint8 images [B, S, S, 3] -> merged image tokens [B, N, text_hidden], at one fixed image size."""

    def __init__(self, visual: nn.Module, spec: VisionSpec):
        super().__init__()
        cfg = visual.config
        if (cfg.patch_size, cfg.spatial_merge_size, cfg.temporal_patch_size) != (
                spec.patch_size, spec.merge_size, spec.temporal_patch_size):
            raise ValueError(f"vision config (patch {cfg.patch_size}, merge {cfg.spatial_merge_size}, temporal "
                             f"{cfg.temporal_patch_size}) disagrees with the preprocessing spec {spec}")
        self.spec = spec
        self.visual = visual
        self.heads = cfg.num_heads
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.act = ACT2FN[cfg.hidden_act]
        self.full_blocks = frozenset(cfg.fullatt_block_indexes)

        g, unit = spec.grid, spec.merge_size**2
        grid_thw = torch.tensor([[1, g, g]])
        window_index, cu_windows = get_vision_window_index(grid_thw, spec.merge_size, cfg.window_size,
                                                           spec.patch_size)
        # Hugging Face permutes 2x2 merge blocks into window order; as a patch permutation it is one gather.
        patch_order = (window_index[:, None] * unit + torch.arange(unit)).reshape(-1)
        self.register_buffer("patch_order", patch_order, persistent=False)
        self.register_buffer("token_order", torch.argsort(window_index), persistent=False)

        inv_freq = visual.rotary_pos_emb.inv_freq.detach().float().cpu()
        pos = get_vision_position_ids(grid_thw, spec.merge_size)[patch_order].float()  # [P, 2] (h, w)
        freqs = torch.cat([pos[:, 0:1] * inv_freq, pos[:, 1:2] * inv_freq], dim=-1)
        freqs = torch.cat([freqs, freqs], dim=-1)[:, None, :]  # [P, 1, head_dim]: broadcasts over heads
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)

        sizes = (cu_windows[1:] - cu_windows[:-1]).tolist()
        # Uniform windows (the grid is a multiple of the window) run as plain batched attention; otherwise one
        # constant block-diagonal mask does the same job without loops.
        self.window_len = sizes[0] if len(set(sizes)) == 1 else 0
        if not self.window_len:
            owner = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
            self.register_buffer("window_mask", owner[:, None] == owner[None, :], persistent=False)
        else:
            self.window_mask = None

    def _attention(self, block: nn.Module, x: torch.Tensor, full: bool) -> torch.Tensor:
        b, p, c = x.shape
        q, k, v = block.attn.qkv(x).view(b, p, 3, self.heads, self.head_dim).unbind(2)  # each [B, P, h, d]
        q, k = apply_rotary(q, self.cos, self.sin), apply_rotary(k, self.cos, self.sin)
        if full or self.window_len == p:
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            out = out.transpose(1, 2)
        elif self.window_len:
            w = self.window_len
            as_windows = lambda t: t.reshape(b * (p // w), w, self.heads, self.head_dim).transpose(1, 2)
            out = F.scaled_dot_product_attention(as_windows(q), as_windows(k), as_windows(v))  # [B*nw, h, w, d]
            out = out.transpose(1, 2)
        else:
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 attn_mask=self.window_mask)
            out = out.transpose(1, 2)
        return block.attn.proj(out.reshape(b, p, c))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        visual = self.visual
        weight = visual.patch_embed.proj.weight  # Conv3d with stride == kernel: a linear map per patch
        x = pixels_to_patches(pixels, self.spec)[:, self.patch_order].to(weight.dtype)  # [B, P, patch_dim]
        x = F.linear(x, weight.reshape(weight.shape[0], -1))  # [B, P, C]
        for i, block in enumerate(visual.blocks):
            x = x + self._attention(block, rms_norm(block.norm1, x), i in self.full_blocks)
            x = x + gated_mlp(block.mlp, self.act, rms_norm(block.norm2, x))
        merger = visual.merger
        b, p, c = x.shape
        x = merger.mlp(rms_norm(merger.ln_q, x).reshape(b, p // self.spec.merge_size**2, -1))  # [B, N, out]
        return x[:, self.token_order]


# ---- positions ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayoutPositions:
    """Host-side position tables for the static layout."""

    images: torch.Tensor  # [3, 2N + 4]: [vs][source][ve][vs][edited][ve]
    text_start: int  # the instruction's j-th token has position text_start + j on all three axes; <reward>'s is
    # text_start + the instruction's length

    @classmethod
    def build(cls, spec: VisionSpec, mode: str) -> "LayoutPositions":
        if mode not in POSITION_MODES:
            raise ValueError(f"positions must be one of {POSITION_MODES}, got {mode!r}")
        n_img = spec.num_tokens
        if mode == "sequential":
            return cls(torch.arange(2 * n_img + 4).expand(3, -1).clone(), 2 * n_img + 4)
        gm = spec.grid // spec.merge_size  # merged tokens per side

        def image_block(start: int) -> torch.Tensor:  # Qwen get_rope_index for one image starting at `start`
            rows, cols = torch.meshgrid(torch.arange(gm), torch.arange(gm), indexing="ij")
            t = torch.full((gm * gm,), start)
            return torch.stack([t, start + rows.reshape(-1), start + cols.reshape(-1)])

        col = lambda v: torch.full((3, 1), v)
        # An image block advances the next position by gm (its largest row / column offset + 1), not by N.
        edited = 2 + gm
        images = torch.cat([col(0), image_block(1), col(1 + gm), col(edited), image_block(edited + 1),
                            col(edited + 1 + gm)], dim=1)
        return cls(images, edited + 2 + gm)


class TextRotary(nn.Module):
    """M-RoPE cos/sin from position ids [3, B, T], in fp32, as Qwen2_5_VLRotaryEmbedding computes them."""

    def __init__(self, rotary: nn.Module):
        super().__init__()
        section = rotary.mrope_section
        self.register_buffer("inv_freq", rotary.inv_freq.detach().float().clone(), persistent=False)
        # Frequency d rotates by the position on axis (section index of d) % 3: one constant gather.
        axis = torch.repeat_interleave(torch.arange(len(section)) % 3, torch.tensor(section))
        self.register_buffer("axis", axis, persistent=False)
        self.scaling = float(rotary.attention_scaling)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos = positions.float()[self.axis]  # [D/2, B, T]
        freqs = pos.permute(1, 2, 0) * self.inv_freq  # [B, T, D/2]
        freqs = torch.cat([freqs, freqs], dim=-1)[:, None]  # [B, 1, T, D]
        return freqs.cos() * self.scaling, freqs.sin() * self.scaling


# ---- decoder --------------------------------------------------------------------------------------------------
class Decoder(nn.Module):
    """The language model's layers over given embeddings, with optional cached prefix keys/values."""

    def __init__(self, language_model: nn.Module):
        super().__init__()
        cfg = language_model.config
        self.lm = language_model
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.act = ACT2FN[cfg.hidden_act]
        self.rotary = TextRotary(language_model.rotary_emb)
        rep = self.heads // self.kv_heads
        self.register_buffer("kv_for_head", torch.arange(self.heads) // rep, persistent=False)

    def _repeat_kv(self, t: torch.Tensor) -> torch.Tensor:
        # A constant gather rather than expand+reshape: the reshape's contiguity check trips torch.export's
        # symbolic solver on a dynamic sequence length.
        return t.index_select(1, self.kv_for_head)

    def forward(self, h: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                past: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """h [B, T, H]; positions [3, B, T]; mask bool [B, 1, T, past + T]; past [layers, 2, 1|B, kvh, P, d].

        Returns the final-normed hidden states and this pass's keys/values [layers, 2, B, kvh, T, d].
        """
        b, t, _ = h.shape
        cos, sin = self.rotary(positions)
        cache = []
        for i, layer in enumerate(self.lm.layers):
            attn = layer.self_attn
            x = rms_norm(layer.input_layernorm, h)
            q = attn.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            cache.append(torch.stack([k, v]))
            if past is not None:
                pk, pv = past[i, 0].expand(b, -1, -1, -1), past[i, 1].expand(b, -1, -1, -1)
                k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
            out = F.scaled_dot_product_attention(q, self._repeat_kv(k), self._repeat_kv(v), attn_mask=mask)
            h = h + attn.o_proj(out.transpose(1, 2).reshape(b, t, -1))
            h = h + gated_mlp(layer.mlp, self.act, rms_norm(layer.post_attention_layernorm, h))
        return rms_norm(self.lm.norm, h), torch.stack(cache)


# ---- the full graph -------------------------------------------------------------------------------------------
class ScoringGraph(nn.Module):
    """source/edited pixels + padded instruction ids -> reward (and log sigma), one forward pass, no LM head."""

    def __init__(self, model, positions: str = DEFAULT_POSITIONS):
        super().__init__()
        check_supported(model.backbone)
        inner = model.backbone.model
        self.spec: VisionSpec = model.spec
        self.vision = VisionEncoder(inner.visual, model.spec)
        self.decoder = Decoder(inner.language_model)
        self.head = model.head
        self.positions_mode = positions
        self.layout = LayoutPositions.build(model.spec, positions)
        ids = model.token_ids
        self.register_buffer("special_ids", torch.tensor([ids.vision_start, ids.vision_end, ids.reward]),
                             persistent=False)
        self.register_buffer("image_positions", self.layout.images.clone(), persistent=False)
        self.image_tokens = model.spec.num_tokens
        self.head_outputs = model.head.outputs
        self.vocab_size = inner.language_model.embed_tokens.num_embeddings
        self.pad_id = 0  # the contract pads text_ids with 0; padded slots are masked, so any id would do
        # The host-computed tables above are built on the CPU; keep them beside the checkpoint's weights.
        self.to(inner.language_model.embed_tokens.weight.device)

    # -- pieces shared with group scoring: the prefix [vs][source][ve], the candidate [vs][edited][ve] text <reward> --
    def special_embeddings(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        e = self.decoder.lm.embed_tokens(self.special_ids)  # [3, H]
        return e[0:1], e[1:2], e[2:3]

    def prefix_embeddings(self, source_tokens: torch.Tensor) -> torch.Tensor:
        vs, ve, _ = self.special_embeddings()
        expand = lambda e: e[None].expand(source_tokens.shape[0], -1, -1)
        return torch.cat([expand(vs), source_tokens.to(vs.dtype), expand(ve)], dim=1)

    def candidate_embeddings(self, edited_tokens: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        vs, ve, reward = self.special_embeddings()
        text = self.decoder.lm.embed_tokens(text_ids)
        expand = lambda e: e[None].expand(text.shape[0], -1, -1)
        return torch.cat([expand(vs), edited_tokens.to(text.dtype), expand(ve), text, expand(reward)], dim=1)

    def prefix_position_ids(self, batch: int) -> torch.Tensor:
        return self.image_positions[:, None, : self.image_tokens + 2].expand(3, batch, -1)  # [3, B, N + 2]

    def candidate_position_ids(self, text_lengths: torch.Tensor, text_len: int) -> torch.Tensor:
        """[3, B, N + 3 + L]; padded slots get positions too, but no token attends to them."""
        b, start = text_lengths.shape[0], self.layout.text_start
        edited = self.image_positions[:, None, self.image_tokens + 2:].expand(3, b, -1)
        text = start + torch.arange(text_len, device=text_lengths.device)
        reward = start + text_lengths
        return torch.cat([edited, text.expand(3, b, -1), reward[None, :, None].expand(3, b, 1)], dim=2)

    def candidate_key_valid(self, text_lengths: torch.Tensor, text_len: int) -> torch.Tensor:
        """bool [B, N + 3 + L]: False on padded instruction slots."""
        b, device = text_lengths.shape[0], text_lengths.device
        ones = lambda n: torch.ones(b, n, dtype=torch.bool, device=device)
        slots = torch.arange(text_len, device=device)
        return torch.cat([ones(self.image_tokens + 2), slots[None, :] < text_lengths[:, None], ones(1)], dim=1)

    def read_head(self, hidden: torch.Tensor):
        out = self.head(hidden[:, -1])  # <reward> is always the last token
        if self.head_outputs == 1:
            return out
        return out[:, 0].contiguous(), out[:, 1].contiguous()

    def forward(self, source_pixels: torch.Tensor, edited_pixels: torch.Tensor, text_ids: torch.Tensor,
                text_lengths: torch.Tensor):
        b, text_len = text_ids.shape
        # Both images in one vision pass; stack/unbind (not cat/slice) keeps the batch one symbol for export.
        pixels = torch.stack([source_pixels, edited_pixels]).flatten(0, 1)
        source_tokens, edited_tokens = self.vision(pixels).unflatten(0, (2, b)).unbind(0)
        h = torch.cat([self.prefix_embeddings(source_tokens), self.candidate_embeddings(edited_tokens, text_ids)], 1)
        positions = torch.cat([self.prefix_position_ids(b), self.candidate_position_ids(text_lengths, text_len)], 2)
        t = h.shape[1]
        valid = torch.cat([torch.ones(b, self.image_tokens + 2, dtype=torch.bool, device=h.device),
                           self.candidate_key_valid(text_lengths, text_len)], dim=1)
        idx = torch.arange(t, device=h.device)
        mask = (idx[:, None] >= idx[None, :])[None, None] & valid[:, None, None, :]  # [B, 1, T, T]
        hidden, _ = self.decoder(h, positions, mask)
        return self.read_head(hidden)


def pad_text(ids: list[list[int]], text_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Instruction token ids -> (text_ids [B, text_len] right-padded with 0, text_lengths [B])."""
    out = torch.zeros(len(ids), text_len, dtype=torch.long)
    for i, row in enumerate(ids):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out, torch.tensor([len(r) for r in ids], dtype=torch.long)
