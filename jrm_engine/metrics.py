"""Small metrics shared by the trainer and the evaluator."""
from __future__ import annotations

import torch


def effective_rank(features: torch.Tensor) -> float:
    """r_eff = exp(-sum p_i log p_i), p_i = s_i^2 / sum s_j^2 over the singular values of the [N, d] features."""
    s = torch.linalg.svdvals(features.double())
    p = s.square() / s.square().sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def pairwise_accuracy(rewards: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs whose chosen reward is strictly higher (a tie counts wrong)."""
    mu = rewards if rewards.dim() == 1 else rewards[:, 0]
    return (mu[chosen] > mu[rejected]).float().mean()
