"""Ranking half: per-pair loss and its reward gradients in one pass, summed with fp32 atomics.

MODE 0 ("bt"):             -log sigmoid(d),                 d = mu_a - mu_b - margin
MODE 1 ("bt_uncertainty"): -log E[sigmoid(z)],             z ~ N(d, s^2), s^2 = sigma_a^2 + sigma_b^2
MODE 2 (tie):              -(log sigmoid(d) + log sigmoid(-d)) / 2, d = mu_a - mu_b (no margin)

MODE 1 follows `jrm_engine.losses.log_expected_sigmoid` (the reasons and the accuracy study are there), in float64:
the small side E(m), m = -|d|, is integrated (P = E(d) for d <= 0, 1 - E(-d) for d > 0), by 32-node Gauss-Hermite in
log space for s <= 1 and by the 128-node trapezoid rule in the logistic variable for wider Gaussians, reflected once
by exponential tilting when m < -s^2/2. Each rule also yields d log E / dm and d log E / ds, so the gradient is
analytic. Both rules are evaluated and one is selected per pair: ~160 nodes per pair, for the few pairs of a batch.

P is small (pairs per batch), so the gradient is formed in the forward, unscaled; the autograd backward multiplies
it by grad_output / (P + P_tie). Atomics are needed because a reward may appear in several pairs.
"""

import numpy as np
import torch
import triton
import triton.language as tl

from .tuning import INTERPRET

MODES = {"bt": 0, "bt_uncertainty": 1, "tie": 2}
# The quadratures of jrm_engine.losses (its GAUSS_HERMITE_NODES, NARROW_SIGMA_MAX, LOGISTIC_NODES, LOGISTIC_STEP).
GH_NODES = 32
NARROW_SIGMA_MAX = 1.0
LOGISTIC_NODES = 128
LOGISTIC_STEP = 0.5
_BLOCK_P = 16 if INTERPRET else 128
# MODE 1 holds [BLOCK_P, 128] float64 tiles: 32 pairs per program keep them in registers.
_BLOCK_P_UNCERTAIN = 16 if INTERPRET else 32


@triton.jit
def _log_sigmoid(x):
    # min(x, 0) - log1p(exp(-|x|)): no overflow for either sign
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _log1p(x):
    # No library log1p here: Goldberg's form is exact up to the rounding of u = 1 + x (x = -E with E as small as 1e-22).
    u = 1.0 + x
    return tl.where(u == 1.0, x, tl.log(u) * (x / (u - 1.0)))


@triton.jit
def _log_e_hermite(m, s, GhX, GhLogW, GH_NODES: tl.constexpr):
    """(log E, d log E/dm, d log E/ds) [BLOCK_P] by Gauss-Hermite: E = pi^-1/2 sum_i w_i sigmoid(m + sqrt(2) s x_i)."""
    nodes = tl.arange(0, GH_NODES)
    x = tl.load(GhX + nodes)
    log_w = tl.load(GhLogW + nodes)
    z = m[:, None] + 1.4142135623730951 * s[:, None] * x[None, :]  # [BLOCK_P, GH_NODES]
    terms = log_w[None, :] + _log_sigmoid(z)
    t_max = tl.max(terms, 1)
    e = tl.exp(terms - t_max[:, None])
    e_sum = tl.sum(e, 1)
    log_e = t_max + tl.log(e_sum) - 0.5723649429247001  # 0.5 * log(pi)
    # d log E / dz_i = softmax_i(terms) * sigmoid(-z_i); z_i depends on m (1) and s (sqrt(2) x_i)
    dz = (e / e_sum[:, None]) / (1.0 + tl.exp(z))
    return log_e, tl.sum(dz, 1), tl.sum(dz * (1.4142135623730951 * x[None, :]), 1)


@triton.jit
def _log_e_logistic(m, s, LgL, LgW, LG_NODES: tl.constexpr):
    """(log E, d log E/dm, d log E/ds) [BLOCK_P] by E = sum_k w_k Phi((a + l_k) / s), w_k = step * logistic
    density(l_k), with a = m, or a = -m - s^2 and the factor e^(m + s^2/2) (the reflection) when m < -s^2/2."""
    nodes = tl.arange(0, LG_NODES)
    l = tl.load(LgL + nodes)
    w = tl.load(LgW + nodes)
    s2 = s * s
    reflect = m < -0.5 * s2
    a = tl.where(reflect, -m - s2, m)
    t = (a[:, None] + l[None, :]) / s[:, None]  # [BLOCK_P, LG_NODES]
    cdf = 0.5 + 0.5 * tl.erf(t * 0.7071067811865476)
    pdf_w = w[None, :] * tl.exp(-0.5 * t * t) * 0.3989422804014327  # 1 / sqrt(2 pi)
    e = tl.sum(w[None, :] * cdf, 1)
    r_a = tl.sum(pdf_w, 1) / s / e  # d log E(a) / da
    r_s = -tl.sum(pdf_w * t, 1) / s / e  # d log E(a) / ds at fixed a
    log_e = tl.where(reflect, m + 0.5 * s2 + tl.log(e), tl.log(e))
    # through a = -m - s^2: d/dm = 1 - r_a, d/ds = s + r_s - 2 s r_a
    d_m = tl.where(reflect, 1.0 - r_a, r_a)
    d_s = tl.where(reflect, s + r_s - 2.0 * s * r_a, r_s)
    return log_e, d_m, d_s


@triton.jit
def _rank_loss_kernel(Rewards, IdxA, IdxB, GhX, GhLogW, LgL, LgW, LossSum, Grad, P, margin, stride_s,
                      MODE: tl.constexpr, GH_NODES: tl.constexpr, LG_NODES: tl.constexpr,
                      NARROW_SIGMA_MAX: tl.constexpr, BLOCK_P: tl.constexpr):
    offs = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask = offs < P
    a = tl.load(IdxA + offs, mask=mask, other=0).to(tl.int64)
    b = tl.load(IdxB + offs, mask=mask, other=0).to(tl.int64)
    if MODE == 1:
        mu_a = tl.load(Rewards + a * stride_s, mask=mask, other=0.0).to(tl.float64)
        mu_b = tl.load(Rewards + b * stride_s, mask=mask, other=0.0).to(tl.float64)
        ls_a = tl.load(Rewards + a * stride_s + 1, mask=mask, other=0.0).to(tl.float64)
        ls_b = tl.load(Rewards + b * stride_s + 1, mask=mask, other=0.0).to(tl.float64)
        d = mu_a - mu_b - margin
        var_a = tl.exp(2.0 * ls_a)
        var_b = tl.exp(2.0 * ls_b)
        s = tl.sqrt(var_a + var_b)
        pos = d > 0
        m = tl.where(pos, -d, d)
        lh, mh, sh = _log_e_hermite(m, s, GhX, GhLogW, GH_NODES)
        lw, mw, sw = _log_e_logistic(m, s, LgL, LgW, LG_NODES)
        narrow = s <= NARROW_SIGMA_MAX
        log_e = tl.where(narrow, lh, lw)
        d_m = tl.where(narrow, mh, mw)
        d_s = tl.where(narrow, sh, sw)
        # -log P: -log E(d) for d <= 0; -log(1 - E(-d)) for d > 0, whose m-derivative carries dm/dd = -1
        e = tl.exp(log_e)
        ratio = e / (1.0 - e)
        loss = tl.where(pos, -_log1p(-e), -log_e).to(tl.float32)
        g_d = tl.where(pos, -ratio * d_m, -d_m)
        g_s = tl.where(pos, ratio * d_s, -d_s)
        # s = sqrt(exp(2 ls_a) + exp(2 ls_b)) => ds/dls_a = exp(2 ls_a) / s
        tl.atomic_add(Grad + a * 2 + 1, (g_s * var_a / s).to(tl.float32), mask=mask)
        tl.atomic_add(Grad + b * 2 + 1, (g_s * var_b / s).to(tl.float32), mask=mask)
        g_d = g_d.to(tl.float32)
    else:
        mu_a = tl.load(Rewards + a * stride_s, mask=mask, other=0.0).to(tl.float32)
        mu_b = tl.load(Rewards + b * stride_s, mask=mask, other=0.0).to(tl.float32)
        if MODE == 2:
            d = mu_a - mu_b
            loss = -0.5 * (_log_sigmoid(d) + _log_sigmoid(-d))
            g_d = tl.sigmoid(d) - 0.5
        else:
            d = mu_a - mu_b - margin
            loss = -_log_sigmoid(d)
            g_d = -tl.sigmoid(-d)
    tl.atomic_add(Grad + a * 2, g_d, mask=mask)
    tl.atomic_add(Grad + b * 2, -g_d, mask=mask)
    tl.atomic_add(LossSum, tl.sum(tl.where(mask, loss, 0.0), 0))


_NODE_CACHE: dict = {}


def _nodes(device: torch.device) -> tuple[torch.Tensor, ...]:
    """float64 (Hermite x, Hermite log w, logistic l, logistic step * density(l)) on `device`."""
    key = str(device)
    if key not in _NODE_CACHE:
        x, w = np.polynomial.hermite.hermgauss(GH_NODES)
        l = (np.arange(LOGISTIC_NODES) - (LOGISTIC_NODES - 1) / 2) * LOGISTIC_STEP
        density = np.exp(-np.abs(l)) / (1.0 + np.exp(-np.abs(l))) ** 2
        _NODE_CACHE[key] = tuple(torch.tensor(v, dtype=torch.float64, device=device)
                                 for v in (x, np.log(w), l, LOGISTIC_STEP * density))
    return _NODE_CACHE[key]


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
    block = _BLOCK_P_UNCERTAIN if mode == "bt_uncertainty" else _BLOCK_P
    _rank_loss_kernel[(triton.cdiv(P, block),)](
        rewards, idx_a, idx_b, *_nodes(rewards.device), loss_sum, grad, P, float(margin), stride_s,
        MODE=MODES[mode], GH_NODES=GH_NODES, LG_NODES=LOGISTIC_NODES, NARROW_SIGMA_MAX=NARROW_SIGMA_MAX,
        BLOCK_P=block)
