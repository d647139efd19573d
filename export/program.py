"""torch.export of the scoring graph with a dynamic batch and a dynamic (bucketed) text length."""
from __future__ import annotations

import torch
from torch.export import Dim

from .graph import ScoringGraph
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


def dynamic_shapes(settings: ExportSettings) -> dict:
    batch = Dim("batch", min=1, max=settings.max_batch)
    text_ids = {0: batch}
    if len(settings.buckets) > 1:  # one bucket: a static text length
        text_ids[1] = Dim("text_len", min=settings.buckets[0], max=settings.buckets[-1])
    return {"source_pixels": {0: batch}, "edited_pixels": {0: batch}, "text_ids": text_ids, "text_lengths": {0: batch}}


def export_graph(graph: ScoringGraph, settings: ExportSettings, device="cpu") -> torch.export.ExportedProgram:
    # Example sizes must be >= 2, or torch.export specialises the dim to the example value.
    args = example_inputs(graph, 2, settings.buckets[0], device)
    with torch.no_grad():
        return torch.export.export(graph.eval(), args, dynamic_shapes=dynamic_shapes(settings))
