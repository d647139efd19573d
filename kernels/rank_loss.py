"""Ranking half: per-pair loss and its reward gradients in one pass, summed with fp32 atomics.

MODE 0 ("bt"):             -log sigmoid(d),                 d = mu_a - mu_b - margin
MODE 1 ("bt_uncertainty"): -log E[sigmoid(z)],             z ~ N(d, sigma_a^2 + sigma_b^2), Gauss-Hermite in log space:
                           log E = logsumexp_i(log w_i + log sigmoid(d + sqrt(2) s x_i)) - log(pi) / 2
MODE 2 (tie):              -(log sigmoid(d) + log sigmoid(-d)) / 2, d = mu_a - mu_b (no margin)

P is small (pairs per batch), so the gradient is formed in the forward, unscaled; the autograd backward multiplies
it by grad_output / (P + P_tie). Atomics are needed because a reward may appear in several pairs.
"""

import numpy as np
import torch
import triton
import triton.language as tl

from .tuning import INTERPRET

MODES = {"bt": 0, "bt_uncertainty": 1, "tie": 2}
NODES = 32  # Gauss-Hermite nodes; matches jrm_engine.losses (exact to ~1e-7 here)
_BLOCK_P = 16 if INTERPRET else 128


@triton.jit
def _log_sigmoid(x):
    # min(x, 0) - log1p(exp(-|x|)): no overflow for either sign
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _rank_loss_kernel(Rewards, IdxA, IdxB, GhX, GhLogW, LossSum, Grad, P, margin, stride_s,
                      MODE: tl.constexpr, NODES: tl.constexpr, BLOCK_P: tl.constexpr):
    offs = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask = offs < P
    a = tl.load(IdxA + offs, mask=mask, other=0).to(tl.int64)
    b = tl.load(IdxB + offs, mask=mask, other=0).to(tl.int64)
    mu_a = tl.load(Rewards + a * stride_s, mask=mask, other=0.0).to(tl.float32)
    mu_b = tl.load(Rewards + b * stride_s, mask=mask, other=0.0).to(tl.float32)
    if MODE == 2:
        d = mu_a - mu_b
        loss = -0.5 * (_log_sigmoid(d) + _log_sigmoid(-d))
        g_d = tl.sigmoid(d) - 0.5
    else:
        d = mu_a - mu_b - margin
        if MODE == 0:
            loss = -_log_sigmoid(d)
            g_d = -tl.sigmoid(-d)
        else:
            ls_a = tl.load(Rewards + a * stride_s + 1, mask=mask, other=0.0).to(tl.float32)
            ls_b = tl.load(Rewards + b * stride_s + 1, mask=mask, other=0.0).to(tl.float32)
            var_a = tl.exp(2.0 * ls_a)
            var_b = tl.exp(2.0 * ls_b)
            s = tl.sqrt(var_a + var_b)
            nodes = tl.arange(0, NODES)
            x = tl.load(GhX + nodes)
            log_w = tl.load(GhLogW + nodes)
            z = d[:, None] + 1.4142135623730951 * s[:, None] * x[None, :]  # [BLOCK_P, NODES]
            terms = log_w[None, :] + _log_sigmoid(z)
            t_max = tl.max(terms, 1)
            e = tl.exp(terms - t_max[:, None])
            e_sum = tl.sum(e, 1)
            loss = -(t_max + tl.log(e_sum) - 0.5723649429247001)  # 0.5 * log(pi)
            # d(-log E)/dz_i = -softmax_i(terms) * sigmoid(-z_i); z_i depends on d (1) and s (sqrt(2) x_i)
            dz = -(e / e_sum[:, None]) * tl.sigmoid(-z)
            g_d = tl.sum(dz, 1)
            g_s = tl.sum(dz * (1.4142135623730951 * x[None, :]), 1)
            # s = sqrt(exp(2 ls_a) + exp(2 ls_b)) => ds/dls_a = exp(2 ls_a) / s
            tl.atomic_add(Grad + a * 2 + 1, g_s * var_a / s, mask=mask)
            tl.atomic_add(Grad + b * 2 + 1, g_s * var_b / s, mask=mask)
    tl.atomic_add(Grad + a * 2, g_d, mask=mask)
    tl.atomic_add(Grad + b * 2, -g_d, mask=mask)
    tl.atomic_add(LossSum, tl.sum(tl.where(mask, loss, 0.0), 0))


_GH_CACHE: dict = {}


def _gauss_hermite(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    key = str(device)
    if key not in _GH_CACHE:
        x, w = np.polynomial.hermite.hermgauss(NODES)
        _GH_CACHE[key] = (torch.tensor(x, dtype=torch.float32, device=device),
                          torch.tensor(np.log(w), dtype=torch.float32, device=device))
    return _GH_CACHE[key]


def rank_loss_forward(rewards: torch.Tensor, idx_a: torch.Tensor, idx_b: torch.Tensor, mode: str, margin: float,
                      loss_sum: torch.Tensor, grad: torch.Tensor) -> None:
    """Add the summed loss of the pairs (idx_a beats idx_b, or ties for mode="tie") to `loss_sum` (fp32 [1]) and
    their unscaled reward gradients to `grad` (fp32 [S, 2]: d/dmu, d/dlog sigma).

    rewards [S] or [S, k] (column 0 = mu, column 1 = log sigma, used only by "bt_uncertainty"); any dtype.
    """
    P = idx_a.numel()
    if P == 0:
        return
    stride_s = rewards.stride(0)
    if rewards.dim() == 2 and rewards.stride(1) != 1:
        raise ValueError(f"rewards [S, k] must have unit column stride, got strides {rewards.stride()}")
    gh_x, gh_log_w = _gauss_hermite(rewards.device)
    _rank_loss_kernel[(triton.cdiv(P, _BLOCK_P),)](
        rewards, idx_a, idx_b, gh_x, gh_log_w, loss_sum, grad, P, float(margin), stride_s,
        MODE=MODES[mode], NODES=NODES, BLOCK_P=_BLOCK_P)
