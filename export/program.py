"""torch.export of the scoring graph (dynamic batch and bucketed text length) and of the group graph (one source
and instruction, a dynamic number of candidates)."""
from __future__ import annotations

import torch
from torch.export import Dim

from .graph import ScoringGraph
from .group import GroupScorer
from .settings import ExportSettings


def example_inputs(graph: ScoringGraph, batch: int, text_len: int, device="cpu", seed: int = 0):
    """Random inputs in the contract's dtypes; lengths vary so that padding is exercised."""
    g = torch.Generator().manual_seed(seed)
    s = graph.spec.image_size
    pixels = lambda: torch.randint(0, 256, (batch, s, s, 3), dtype=torch.uint8, generator=g)
    lengths = torch.randint(1, text_len + 1, (batch,), generator=g)
    lengths[0] = text_len
    ids = torch.randint(1, graph.vocab_size, (batch, text_len), generator=g)
    ids = ids * (torch.arange(text_len)[None] < lengths[:, None])  # contract: padding is 0
    return tuple(t.to(device) for t in (pixels(), pixels(), ids, lengths))


def text_len_dim(settings: ExportSettings) -> dict:
    """{1: Dim} for text_ids when the buckets differ in length; one bucket: a static text length."""
    if len(settings.buckets) == 1:
        return {}
    return {1: Dim("text_len", min=settings.buckets[0], max=settings.buckets[-1])}


def dynamic_shapes(settings: ExportSettings) -> dict:
    batch = Dim("batch", min=1, max=settings.max_batch)
    return {"source_pixels": {0: batch}, "edited_pixels": {0: batch}, "text_ids": {0: batch, **text_len_dim(settings)},
            "text_lengths": {0: batch}}


def export_graph(graph: ScoringGraph, settings: ExportSettings, device="cpu") -> torch.export.ExportedProgram:
    # Example sizes must be >= 2, or torch.export specialises the dim to the example value.
    args = example_inputs(graph, 2, settings.buckets[0], device)
    with torch.no_grad():
        return torch.export.export(graph.eval(), args, dynamic_shapes=dynamic_shapes(settings))


def export_group_graph(graph: ScoringGraph, settings: ExportSettings, device="cpu") -> torch.export.ExportedProgram:
    """GroupScorer(source_pixels [1,S,S,3], text_ids [1,L], text_lengths [1], edited_pixels [G,S,S,3]) -> [G]."""
    source, edited, ids, lengths = example_inputs(graph, 2, settings.buckets[0], device)
    group = Dim("group", min=1, max=settings.max_group)
    shapes = {"source_pixels": None, "text_ids": text_len_dim(settings), "text_lengths": None,
              "edited_pixels": {0: group}}
    with torch.no_grad():
        return torch.export.export(GroupScorer(graph).eval(), (source[:1], ids[:1], lengths[:1], edited),
                                   dynamic_shapes=shapes)
