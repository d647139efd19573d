"""The JRM joint loss: `L = (1 - alpha) * L_rank + alpha * L_LM` (docs/jrm-method.md, "Loss").

- `L_LM`: token-mean cross-entropy of the LM head over the rows that carry a label (`lm_labels != -100`).
- `L_rank`: Bradley-Terry over (chosen, rejected) pairs, plain (`"bt"`, optional margin) or uncertainty-aware
  (`"bt_uncertainty"`: `-log E[sigmoid(z)]`, `z ~ N(mu_c - mu_r - margin, sigma_c^2 + sigma_r^2)`, by a quadrature
  chosen by sigma, see `log_expected_sigmoid`), plus an optional tie term `-0.5 (log sigmoid(d) + log sigmoid(-d))`, `d = mu_a - mu_b`, averaged
  together with the pairs.

Two implementations share one signature: `impl="torch"` (the plain reference and CPU path, also the test oracle)
and `impl="triton"` (fused kernels from `jrm_engine.kernels`: the `[rows, V]` logits are never materialised; with
`num_labelled` known on the host, the GEMMs run on cuBLAS in vocab chunks).
"""
from __future__ import annotations

import math
import os
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100
RANK_LOSSES = ("bt", "bt_uncertainty")
IMPLS = ("auto", "torch", "triton")
# E[sigmoid(z)], z ~ N(m, s^2), two quadratures chosen by s (float64 study: both within 2e-10 relative of a brute-force
# integral, loss and gradients, for s in [0.01, 1000], |m| <= 60, and at any m for s <= 7; see tests/test_losses.py):
# - s <= NARROW_SIGMA_MAX: Gauss-Hermite in z. sigmoid's poles at +-i*pi lie pi / (sqrt(2) s) from the real axis in
#   the Hermite variable, so 32 nodes converge for narrow Gaussians (and fail for wide ones: 12% gradient error at s=5).
# - wider: E[sigmoid(z)] = E_{l ~ Logistic}[Phi((m + l) / s)] by the trapezoid rule in l. Phi is entire and smooth on
#   the scale s >= 1, and the logistic density decays like e^-|l| with poles at +-i*pi, so a step of 0.5 converges
#   like exp(-2 pi^2 / 0.5) ~ 1e-17 and 128 nodes (|l| <= 31.75) cover the mass.
GAUSS_HERMITE_NODES = 32
NARROW_SIGMA_MAX = 1.0
LOGISTIC_NODES = 128
LOGISTIC_STEP = 0.5


class JointLossOutput(NamedTuple):
    loss: torch.Tensor  # (1 - alpha) * rank_loss + alpha * lm_loss
    rank_loss: torch.Tensor
    lm_loss: torch.Tensor


def gauss_hermite(n: int = GAUSS_HERMITE_NODES, *, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes x_i and log-weights log w_i of the physicists' Gauss-Hermite rule (weight exp(-x^2))."""
    x, w = np.polynomial.hermite.hermgauss(n)
    return (torch.as_tensor(x, device=device, dtype=dtype), torch.as_tensor(np.log(w), device=device, dtype=dtype))


def _check_index(name: str, idx: torch.Tensor) -> None:
    if idx.dim() != 1 or idx.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be a 1-D int32/int64 index tensor into rewards, got {tuple(idx.shape)} {idx.dtype}")


def _validate(hidden, lm_weight, lm_labels, rewards, chosen, rejected, rank_loss, tie_a, tie_b, alpha):
    """Shape/dtype checks that need no host synchronisation (values are not inspected here)."""
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be [T, H], got {tuple(hidden.shape)}")
    if lm_weight.dim() != 2 or lm_weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"lm_weight must be [V, H={hidden.shape[1]}], got {tuple(lm_weight.shape)}")
    if lm_labels.shape != hidden.shape[:1] or lm_labels.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"lm_labels must be int [T={hidden.shape[0]}], got {tuple(lm_labels.shape)} {lm_labels.dtype}")
    if rank_loss not in RANK_LOSSES:
        raise ValueError(f"rank_loss must be one of {RANK_LOSSES}, got {rank_loss!r}")
    if rewards.dim() == 2 and rewards.shape[1] not in (1, 2) or rewards.dim() not in (1, 2):
        raise ValueError(f"rewards must be [S], [S, 1] or [S, 2] (mu, log sigma), got {tuple(rewards.shape)}")
    if rank_loss == "bt_uncertainty" and not (rewards.dim() == 2 and rewards.shape[1] == 2):
        raise ValueError(f"rank_loss='bt_uncertainty' needs rewards [S, 2] (mu, log sigma), got {tuple(rewards.shape)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    _check_index("chosen", chosen)
    _check_index("rejected", rejected)
    if chosen.shape != rejected.shape:
        raise ValueError(f"chosen and rejected must have the same shape, got {tuple(chosen.shape)} and {tuple(rejected.shape)}")
    if (tie_a is None) != (tie_b is None):
        raise ValueError("tie_a and tie_b must be given together")
    if tie_a is not None:
        _check_index("tie_a", tie_a)
        _check_index("tie_b", tie_b)
        if tie_a.shape != tie_b.shape:
            raise ValueError(f"tie_a and tie_b must have the same shape, got {tuple(tie_a.shape)} and {tuple(tie_b.shape)}")


def split_rewards(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mu [S], log_sigma [S] or None) from rewards [S], [S, 1] or [S, 2]."""
    if rewards.dim() == 1:
        return rewards, None
    if rewards.shape[1] == 1:
        return rewards[:, 0], None
    return rewards[:, 0], rewards[:, 1]


def _log_p_hermite(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """log E[sigmoid(z)] = log(pi^-1/2 sum_i w_i sigmoid(m + sqrt(2) s x_i)), summed in log space so that a confidently
    wrong pair (E ~ 1e-30) keeps its relative accuracy."""
    x, log_w = gauss_hermite(device=m.device, dtype=m.dtype)
    z = m[:, None] + math.sqrt(2.0) * s[:, None] * x[None, :]  # [P, nodes]
    return torch.logsumexp(log_w[None, :] + F.logsigmoid(z), dim=1) - 0.5 * math.log(math.pi)


def _log_p_logistic(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """log E[sigmoid(z)] = log E_l[Phi((m + l) / s)], l ~ Logistic, by the trapezoid rule in l (m <= 0).

    For m < -s^2/2 the mass of the l-integrand moves out to l ~ -m - s^2, past the nodes; exponential tilting gives
    the exact reflection E[sigmoid(z)](m) = e^(m + s^2/2) * E[sigmoid(z)](-m - s^2), whose argument lies above -s^2/2
    where the nodes hold the mass (one reflection suffices).
    """
    reflect = m < -0.5 * s * s
    a = torch.where(reflect, -m - s * s, m)
    l = (torch.arange(LOGISTIC_NODES, device=m.device, dtype=m.dtype) - (LOGISTIC_NODES - 1) / 2) * LOGISTIC_STEP
    density = torch.sigmoid(l) * torch.sigmoid(-l)  # [nodes] logistic density
    p = (torch.special.ndtr((a[:, None] + l[None, :]) / s[:, None]) * density).sum(1) * LOGISTIC_STEP
    return torch.where(reflect, m + 0.5 * s * s, 0.0) + torch.log(p)


def log_expected_sigmoid(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """log E[sigmoid(z)], z ~ N(m, s^2), for m <= 0 (the small side, where the log keeps relative accuracy) and s > 0.

    The branch not taken gets harmless inputs: torch.where masks its gradient by multiplication, so an inf there
    (the logistic rule at s = 0.01) would still turn the taken gradient into NaN.
    """
    narrow = s <= NARROW_SIGMA_MAX
    return torch.where(narrow, _log_p_hermite(m, torch.where(narrow, s, 1.0)),
                       _log_p_logistic(m, torch.where(narrow, 2.0, s)))


def pair_nll_torch(mu_c, mu_r, log_sigma_c, log_sigma_r, *, rank_loss: str, margin: float) -> torch.Tensor:
    """Per-pair `-log P(c > r)` [P] for the chosen rank loss."""
    diff = mu_c - mu_r - margin
    if rank_loss == "bt":
        return -F.logsigmoid(diff)
    # float64 whatever the reward dtype: the loss of a pair at |m| = 50 is 1e-22 or 50, and fp32 rounding of
    # m + sqrt(2) s x alone would cost 1e-6 of it. P is small, so this is cheap.
    d = diff.double()
    s = torch.sqrt(torch.exp(2 * log_sigma_c.double()) + torch.exp(2 * log_sigma_r.double()))  # [P]
    # P(c > r) = E(d) for d <= 0 and 1 - E(-d) for d > 0, E(m) = E[sigmoid(z)]: integrating the small side keeps
    # -log P relative-exact at both ends (a loss of 1e-22 is not rounded to 0). -d, not -|d|: abs has no gradient at 0.
    log_small = log_expected_sigmoid(torch.where(d > 0, -d, d), s)
    nll = torch.where(d > 0, -torch.log1p(-torch.exp(log_small)), -log_small)
    return nll.to(diff.dtype)


def tie_nll_torch(mu_a: torch.Tensor, mu_b: torch.Tensor) -> torch.Tensor:
    """Per-tie `-0.5 (log sigmoid(d) + log sigmoid(-d))` [P_tie]: minimal at d = 0, pulls tied rewards together."""
    d = mu_a - mu_b
    return -0.5 * (F.logsigmoid(d) + F.logsigmoid(-d))


def rank_loss_torch(rewards, chosen, rejected, *, rank_loss: str = "bt", margin: float = 0.0, tie_a=None, tie_b=None):
    """L_rank: the mean over pairs and tie pairs (sum / (P + P_tie)); 0 (with zero gradient) when there are none."""
    mu, log_sigma = split_rewards(rewards)
    lsc = log_sigma[chosen] if log_sigma is not None else None
    lsr = log_sigma[rejected] if log_sigma is not None else None
    total = pair_nll_torch(mu[chosen], mu[rejected], lsc, lsr, rank_loss=rank_loss, margin=margin).sum()
    count = chosen.numel()
    if tie_a is not None and tie_a.numel() > 0:
        total = total + tie_nll_torch(mu[tie_a], mu[tie_b]).sum()
        count += tie_a.numel()
    # The empty sum above is still connected to `rewards`, so backward works (with zero gradient) when count == 0.
    return total / max(count, 1)


def lm_loss_torch(hidden: torch.Tensor, lm_weight: torch.Tensor, lm_labels: torch.Tensor) -> torch.Tensor:
    """Token-mean CE over labelled rows, the way a Hugging Face model computes it: logits for every row, then CE.

    The logits are computed in the input dtype and upcast to fp32 (at least) for the softmax, like `(h @ W.T).float()`.
    """
    logits = hidden @ lm_weight.t()  # [T, V]
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    total = F.cross_entropy(logits, lm_labels.long(), ignore_index=IGNORE_INDEX, reduction="sum")
    n_labelled = (lm_labels != IGNORE_INDEX).sum().clamp(min=1)  # a device tensor: no host synchronisation
    return total / n_labelled


def first_token_loss(features: torch.Tensor, lm_weight: torch.Tensor, first_labels: torch.Tensor) -> torch.Tensor:
    """Mean CE of the first explanation token, predicted from the `<reward>` state (features [S, H]); 0 with zero
    gradient when no sequence has an explanation. Only S rows of logits: plain torch on every device."""
    logits = features @ lm_weight.t()  # [S, V]
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    total = F.cross_entropy(logits, first_labels.long(), ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (first_labels != IGNORE_INDEX).sum().clamp(min=1)


def _resolve_impl(impl: str, hidden: torch.Tensor) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    if not hidden.is_cuda:
        return "torch"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "torch"
    return "triton"


def joint_loss(hidden, lm_weight, lm_labels, rewards, chosen, rejected, *, alpha: float = 0.7, rank_loss: str = "bt",
               margin: float = 0.0, impl: str = "torch", tie_a=None, tie_b=None,
               num_labelled: int | None = None) -> JointLossOutput:
    """The JRM joint loss.

    hidden [T, H] (all tokens of the batch, flattened), lm_weight [V, H] (may be the tied embedding matrix),
    lm_labels [T] aligned with hidden (row t predicts lm_labels[t]; -100 = no LM loss), rewards [S] or [S, 2]
    ([:, 0] = mu, [:, 1] = log sigma; "bt" uses mu), chosen / rejected [P] and tie_a / tie_b [P_tie] (optional)
    index rewards. Returns scalars (loss, rank_loss, lm_loss). `lm_loss` is 0 with zero gradient when no row is
    labelled; `rank_loss` is 0 when P + P_tie == 0. Label values are not range-checked (that would synchronise).
    `num_labelled` (optional, impl="triton"): the number of labels != -100 when the caller knows it on the host
    (e.g. counted while collating on the CPU); it enables the cuBLAS path and is checked on the device (a wrong
    value raises, asynchronously on CUDA). impl="torch" does not need it.
    """
    _validate(hidden, lm_weight, lm_labels, rewards, chosen, rejected, rank_loss, tie_a, tie_b, alpha)
    if tie_a is not None and tie_a.numel() == 0:
        tie_a = tie_b = None
    impl = _resolve_impl(impl, hidden)
    if impl == "torch":
        l_rank = rank_loss_torch(rewards, chosen, rejected, rank_loss=rank_loss, margin=margin, tie_a=tie_a, tie_b=tie_b)
        l_lm = lm_loss_torch(hidden, lm_weight, lm_labels)
    else:
        l_rank, l_lm = _joint_loss_triton(hidden, lm_weight, lm_labels, rewards, chosen, rejected,
                                          rank_loss=rank_loss, margin=margin, tie_a=tie_a, tie_b=tie_b,
                                          num_labelled=num_labelled)
    l_rank = l_rank.float() if l_rank.dtype in (torch.float16, torch.bfloat16) else l_rank
    l_lm = l_lm.to(l_rank.dtype)
    return JointLossOutput((1.0 - alpha) * l_rank + alpha * l_lm, l_rank, l_lm)


class JointLossFunction(torch.autograd.Function):
    """Fused (rank_loss, lm_loss) on the Triton kernels; gradients for hidden, lm_weight and rewards.

    LM half, two paths, both exact (fp32 logits, softmax, LSE; dW rounded once) and free of host synchronisation:
    - `num_labelled` given (the fast path, `kernels/lm_cublas.py`): the labelled rows are gathered into a contiguous
      [R, H] block and the GEMMs run on cuBLAS in vocab chunks, with one fused Triton pass per chunk; the hint is
      asserted equal to the device count asynchronously.
    - `num_labelled=None`: labelled rows are sorted first on the device and Triton GEMM kernels launched for all T
      rows exit past the device count (`lm_lse_forward` / `lm_backward`).
    Either way the forward keeps only per-row LSE (fp32) and the backward recomputes the logits chunk by chunk, with
    grad_output / n_labelled folded into the logit gradient. Rank half: one small kernel computes the pair losses
    and their (unscaled) reward gradients in the forward.
    """

    @staticmethod
    def forward(ctx, hidden, lm_weight, lm_labels, rewards, chosen, rejected, tie_a, tie_b, rank_loss, margin,
                num_labelled):
        from jrm_engine.kernels import (gather_labelled, lm_lse_cublas, lm_lse_forward, rank_loss_forward,
                                        select_labelled_rows)

        if num_labelled is None:
            T = hidden.shape[0]
            rows, count, labels_sel = select_labelled_rows(lm_labels)
            lse, target_logit = lm_lse_forward(hidden, lm_weight, rows, count, labels_sel)
            valid = torch.arange(T, device=hidden.device) < count
            n_labelled = count.clamp(min=1).float()
            lm = torch.where(valid, lse - target_logit, 0.0).sum() / n_labelled.squeeze(0)
        else:
            rows, x_sel, labels_sel = gather_labelled(hidden, lm_labels, num_labelled)
            lse, target_logit = lm_lse_cublas(x_sel, lm_weight, labels_sel)
            count = torch.full((1,), num_labelled, device=hidden.device, dtype=torch.int32)
            lm = (lse - target_logit).sum() / max(num_labelled, 1)

        loss_sum = torch.zeros(1, device=rewards.device, dtype=torch.float32)
        rank_grad = torch.zeros((rewards.shape[0], 2), device=rewards.device, dtype=torch.float32)
        rank_loss_forward(rewards, chosen, rejected, rank_loss, margin, loss_sum, rank_grad)
        n_pairs = chosen.numel()
        if tie_a is not None:
            rank_loss_forward(rewards, tie_a, tie_b, "tie", 0.0, loss_sum, rank_grad)
            n_pairs += tie_a.numel()
        n_pairs = max(n_pairs, 1)
        rank = loss_sum.squeeze(0) / n_pairs

        ctx.save_for_backward(hidden, lm_weight, rows, count, labels_sel, lse, rank_grad)
        ctx.n_pairs, ctx.num_labelled, ctx.rewards_shape, ctx.rewards_dtype = (n_pairs, num_labelled, rewards.shape,
                                                                              rewards.dtype)
        return rank, lm

    @staticmethod
    def backward(ctx, g_rank, g_lm):
        from jrm_engine.kernels import lm_backward, lm_grad_cublas
        from jrm_engine.kernels.lm_backward import SLAB_BYTES  # read per call: tests and benchmarks change it

        hidden, lm_weight, rows, count, labels_sel, lse, rank_grad = ctx.saved_tensors
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        d_hidden = d_weight = d_rewards = None
        if need_dx or need_dw:
            scale = (g_lm.float() / count.clamp(min=1).float()).reshape(1)  # device tensor: no host sync
            if ctx.num_labelled is None:
                d_hidden, d_weight = lm_backward(hidden, lm_weight, rows, count, labels_sel, lse, scale,
                                                 need_dx=need_dx, need_dw=need_dw, slab_bytes=SLAB_BYTES)
            else:
                x_sel = hidden.index_select(0, rows)  # gathered again rather than kept alive since the forward
                dx_sel, d_weight = lm_grad_cublas(x_sel, lm_weight, labels_sel, lse, scale, need_dx=need_dx,
                                                  need_dw=need_dw)
                if need_dx:
                    d_hidden = torch.zeros_like(hidden).index_copy_(0, rows, dx_sel)
        if ctx.needs_input_grad[3]:
            grad = rank_grad * (g_rank.float() / ctx.n_pairs)
            grad = grad[:, 0] if len(ctx.rewards_shape) == 1 else grad[:, : ctx.rewards_shape[1]]
            d_rewards = grad.to(ctx.rewards_dtype)
        return d_hidden, d_weight, None, d_rewards, None, None, None, None, None, None, None


def _joint_loss_triton(hidden, lm_weight, lm_labels, rewards, chosen, rejected, *, rank_loss, margin, tie_a, tie_b,
                       num_labelled):
    if not hidden.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tests); use impl='torch'")
    if hidden.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"impl='triton' supports fp32/bf16/fp16 hidden, got {hidden.dtype}; use impl='torch'")
    if hidden.dtype != lm_weight.dtype:
        raise ValueError(f"impl='triton' needs hidden and lm_weight in one dtype, got {hidden.dtype} and {lm_weight.dtype}")
    if num_labelled is not None and not 0 <= num_labelled <= hidden.shape[0]:
        raise ValueError(f"num_labelled must be in [0, T={hidden.shape[0]}], got {num_labelled}")
    if rewards.dim() == 2 and rewards.stride(1) != 1:
        rewards = rewards.contiguous()
    return JointLossFunction.apply(hidden, lm_weight, lm_labels, rewards, chosen, rejected, tie_a, tie_b, rank_loss,
                                   margin, num_labelled)


class JointLoss(nn.Module):
    """Module form of `joint_loss` holding (alpha, rank_loss, margin, impl)."""

    def __init__(self, alpha: float = 0.7, rank_loss: str = "bt", margin: float = 0.0, impl: str = "auto"):
        super().__init__()
        self.alpha, self.rank_loss, self.margin, self.impl = alpha, rank_loss, margin, impl

    def forward(self, hidden, lm_weight, lm_labels, rewards, chosen, rejected, tie_a=None, tie_b=None,
                num_labelled=None) -> JointLossOutput:
        return joint_loss(hidden, lm_weight, lm_labels, rewards, chosen, rejected, alpha=self.alpha,
                          rank_loss=self.rank_loss, margin=self.margin, impl=self.impl, tie_a=tie_a, tie_b=tie_b,
                          num_labelled=num_labelled)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, rank_loss={self.rank_loss!r}, margin={self.margin}, impl={self.impl!r}"
