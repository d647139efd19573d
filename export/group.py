"""Group scoring: G candidate edits of one source image and instruction, the shared prefix computed once.

The layout puts `[vs][source][ve]` first, so under causal attention that prefix's keys and values do not depend on
the candidate. The prefix pass encodes the source image once and returns the per-layer KV cache; the candidate
pass runs `[vs][edited][ve] instruction <reward>` for G candidates against it. The result equals scoring each
candidate on its own with `ScoringGraph` (same positions, same masks).
"""
from __future__ import annotations

import torch
from torch import nn

from .graph import ScoringGraph


class PrefixGraph(nn.Module):
    """source_pixels [1, S, S, 3] -> kv [layers, 2, 1, kv_heads, N + 2, d]."""

    def __init__(self, graph: ScoringGraph):
        super().__init__()
        self.graph = graph

    def forward(self, source_pixels: torch.Tensor):
        g = self.graph
        h = g.prefix_embeddings(g.vision(source_pixels))
        idx = torch.arange(h.shape[1], device=h.device)
        mask = idx[:, None] >= idx[None, :]
        _, kv = g.decoder(h, g.prefix_position_ids(h.shape[0]), mask[None, None])
        return kv


class CandidateGraph(nn.Module):
    """edited_pixels [G, S, S, 3], the prefix kv, text_ids [1, L], text_lengths [1] -> rewards [G] (and log_sigma
    [G])."""

    def __init__(self, graph: ScoringGraph):
        super().__init__()
        self.graph = graph

    def forward(self, edited_pixels: torch.Tensor, prefix_kv: torch.Tensor, text_ids: torch.Tensor,
                text_lengths: torch.Tensor):
        g = self.graph
        n, text_len = edited_pixels.shape[0], text_ids.shape[1]
        h = g.candidate_embeddings(g.vision(edited_pixels), text_ids.expand(n, -1))  # [G, N + 3 + L, H]
        m, p = h.shape[1], prefix_kv.shape[4]
        # Prefix keys: all valid; candidate keys: causal, minus the padded instruction slots.
        idx = torch.arange(m, device=h.device)
        own = (idx[:, None] >= idx[None, :]) & g.candidate_key_valid(text_lengths[:1], text_len)
        mask = torch.cat([torch.ones(m, p, dtype=torch.bool, device=h.device), own], dim=1)
        positions = g.candidate_position_ids(text_lengths[:1], text_len).expand(3, n, m)
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
        return self.candidates(edited_pixels, self.prefix(source_pixels), text_ids, text_lengths)
