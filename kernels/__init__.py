"""Triton kernels for the JRM joint loss (installed as `jrm_engine.kernels`; imports nothing else from the package).

- `row_select`: labelled rows first, with a device-side count (no host synchronisation).
- `lm_lse_forward`: per-row log-sum-exp and target logit of `hidden @ W.T`, tile by tile over V (logits never stored).
- `lm_backward`: dX and dW of the token-mean CE, through a bounded slab of bf16/fp32 logit gradients per vocab chunk.
- `lm_cublas`: the same forward and gradients with cuBLAS GEMMs and fused Triton elementwise passes, for a
  host-known labelled-row count (the fast path; the two above serve calls without that count).
- `rank_loss`: plain / uncertainty-aware Bradley-Terry and the tie term, loss and reward gradients for P pairs.
"""
from .lm_backward import lm_backward
from .lm_cublas import gather_labelled, lm_grad_cublas, lm_lse_cublas
from .lm_lse_forward import lm_lse_forward
from .rank_loss import rank_loss_forward
from .row_select import select_labelled_rows

__all__ = ["gather_labelled", "lm_backward", "lm_grad_cublas", "lm_lse_cublas", "lm_lse_forward", "rank_loss_forward", "select_labelled_rows"]
