"""Group scoring: G candidate edits of one source image and instruction, the shared prefix computed once.

The layout puts `[vs][source][ve] instruction` first, so under causal attention that prefix's keys and values do
not depend on the candidate. The prefix pass encodes the source image once and returns the per-layer KV cache;
the candidate pass runs `[vs][edited][ve][<reward>]` for G candidates against it. The result equals scoring each
candidate on its own with `ScoringGraph` (same positions, same masks).
"""
from __future__ import annotations

import torch
from torch import nn

from .graph import ScoringGraph


class PrefixGraph(nn.Module):
    """source_pixels [1, S, S, 3], text_ids [1, L], text_lengths [1] -> kv [layers, 2, 1, kv_heads, N+2+L, d]."""

    def __init__(self, graph: ScoringGraph):
        super().__init__()
        self.graph = graph

    def forward(self, source_pixels: torch.Tensor, text_ids: torch.Tensor, text_lengths: torch.Tensor):
        g = self.graph
        b, text_len = text_ids.shape
        h = g.prefix_embeddings(g.vision(source_pixels), text_ids)
        idx = torch.arange(h.shape[1], device=h.device)
        valid = g.prefix_key_valid(text_lengths, text_len)
        mask = (idx[:, None] >= idx[None, :])[None, None] & valid[:, None, None, :]
        _, kv = g.decoder(h, g.prefix_position_ids(b, text_len), mask)
        return kv


class CandidateGraph(nn.Module):
    """edited_pixels [G, S, S, 3], the prefix kv, text_lengths [1] -> rewards [G] (and log_sigma [G])."""

    def __init__(self, graph: ScoringGraph):
        super().__init__()
        self.graph = graph

    def forward(self, edited_pixels: torch.Tensor, prefix_kv: torch.Tensor, text_lengths: torch.Tensor):
        g = self.graph
        n = edited_pixels.shape[0]
        h = g.candidate_embeddings(g.vision(edited_pixels))  # [G, N + 3, H]
        m, p = h.shape[1], prefix_kv.shape[4]
        # Prefix keys: the source block and the real instruction tokens; candidate keys: causal.
        prefix_valid = torch.arange(p, device=h.device) < (g.image_tokens + 2 + text_lengths[:1])
        idx = torch.arange(m, device=h.device)
        mask = torch.cat([prefix_valid[None, :].expand(m, p), idx[:, None] >= idx[None, :]], dim=1)
        positions = g.candidate_position_ids(text_lengths[:1]).expand(3, n, m)
        hidden, _ = g.decoder(h, positions, mask[None, None], past=prefix_kv)
        return g.read_head(hidden)


class GroupScorer(nn.Module):
    """Both passes over one ScoringGraph's weights; `forward` scores one group."""

    def __init__(self, graph: ScoringGraph):
        super().__init__()
        self.prefix = PrefixGraph(graph)
        self.candidates = CandidateGraph(graph)

    def forward(self, source_pixels: torch.Tensor, text_ids: torch.Tensor, text_lengths: torch.Tensor,
                edited_pixels: torch.Tensor):
        return self.candidates(edited_pixels, self.prefix(source_pixels, text_ids, text_lengths), text_lengths)
