"""Small metrics shared by the trainer and the evaluator."""
from __future__ import annotations

import math

import torch


def effective_rank(features: torch.Tensor) -> float:
    """r_eff = exp(-sum p_i log p_i), p_i = s_i^2 / sum s_j^2 over the singular values of the [N, d] features."""
    s = torch.linalg.svdvals(features.double())
    p = s.square() / s.square().sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def centred_effective_rank(features: torch.Tensor) -> float:
    """effective_rank of the features minus their mean. Uncentred reward-token features are dominated by the mean
    direction (one large singular value), which hides how many directions actually vary between candidates."""
    return effective_rank(features - features.double().mean(0, keepdim=True).to(features.dtype))


def wilson_interval(correct: int, total: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion: unlike the normal interval it stays inside [0, 1] and
    is honest near 0 and 1, where per-kind accuracies often sit."""
    if total <= 0:
        raise ValueError(f"wilson_interval needs total > 0, got {total}")
    p, z2 = correct / total, z * z
    centre = (p + z2 / (2 * total)) / (1 + z2 / total)
    half = z * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total)) / (1 + z2 / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def pairwise_accuracy(rewards: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs whose chosen reward is strictly higher (a tie counts wrong)."""
    mu = rewards if rewards.dim() == 1 else rewards[:, 0]
    return (mu[chosen] > mu[rejected]).float().mean()
