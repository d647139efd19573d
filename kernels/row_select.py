"""Labelled rows first, without asking the host how many there are.

A stable sort of the ignore mask puts the labelled rows first in their original order; the number of labelled rows
stays on the device (`count`, int32 [1]). Kernels are launched for all T rows and their programs exit at once past
`count`, so ignored rows never touch the LM head and nothing waits for a `.item()` or `nonzero`. The cost is a sort
of T bytes and empty programs, both negligible next to one [rows, V] GEMM tile.
"""
import torch

IGNORE_INDEX = -100


def select_labelled_rows(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows [T] int64: labelled row indices first, count [1] int32, labels_sel [T] int64 = labels[rows])."""
    ignored = labels == IGNORE_INDEX
    rows = torch.argsort(ignored.to(torch.int8), stable=True)
    count = (~ignored).sum(dtype=torch.int32).reshape(1)
    return rows, count, labels[rows].long()
