"""joint_loss(impl="torch") against an independent float64 computation (loss and gradients)."""
import math

import numpy as np
import pytest
import torch

from jrm_engine.losses import JointLoss, joint_loss, rank_loss_torch


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)
    np.random.seed(0)


def truth_lm(hidden, weight, labels):
    """Full float64 log-softmax; token mean over labelled rows (0 when none)."""
    logp = torch.log_softmax(hidden.double() @ weight.double().t(), dim=1)
    keep = labels != -100
    if not bool(keep.any()):
        return (hidden.double().sum() + weight.double().sum()) * 0.0
    return -logp[keep.nonzero()[:, 0], labels[keep]].mean()


def truth_pair(mu_c, mu_r, ls_c, ls_r, rank_loss, margin):
    """-log P(c > r): plain logistic, or a 64-node Gauss-Hermite mean of sigmoid computed directly (not in log space)."""
    d = mu_c - mu_r - margin
    if rank_loss == "bt":
        return torch.log1p(torch.exp(-d))
    x, w = np.polynomial.hermite.hermgauss(64)
    x, w = torch.tensor(x, dtype=torch.float64), torch.tensor(w, dtype=torch.float64)
    s = torch.sqrt(torch.exp(ls_c) ** 2 + torch.exp(ls_r) ** 2)
    z = d[:, None] + math.sqrt(2) * s[:, None] * x[None, :]
    return -torch.log((w / (1 + torch.exp(-z))).sum(1) / math.sqrt(math.pi))


def truth_rank(rewards, chosen, rejected, rank_loss, margin, tie_a=None, tie_b=None):
    r = rewards.double()
    mu = r if r.dim() == 1 else r[:, 0]
    ls = r[:, 1] if r.dim() == 2 and r.shape[1] == 2 else None
    terms = [truth_pair(mu[chosen], mu[rejected], None if ls is None else ls[chosen],
                        None if ls is None else ls[rejected], rank_loss, margin)]
    if tie_a is not None and len(tie_a):
        d = mu[tie_a] - mu[tie_b]
        terms.append(0.5 * (torch.log1p(torch.exp(-d)) + torch.log1p(torch.exp(d))))
    allt = torch.cat(terms)
    return allt.sum() / max(len(allt), 1)


def make_inputs(T=37, H=24, V=61, S=9, P=7, two=True, ignore_every=3, dtype=torch.float64):
    hidden = torch.randn(T, H, dtype=dtype)
    weight = torch.randn(V, H, dtype=dtype) * H ** -0.5
    labels = torch.randint(0, V, (T,))
    labels[::ignore_every] = -100
    rewards = torch.randn(S, 2, dtype=dtype) if two else torch.randn(S, dtype=dtype)
    if two:
        rewards[:, 1] = rewards[:, 1] * 0.5 - 0.3  # log sigma around -0.3
    chosen = torch.randint(0, S, (P,))
    rejected = (chosen + torch.randint(1, S, (P,))) % S
    return hidden, weight, labels, rewards, chosen, rejected


def truth_joint(hidden, weight, labels, rewards, chosen, rejected, *, alpha, rank_loss, margin, tie_a=None,
                tie_b=None):
    """[loss, rank loss, LM loss, d/dhidden, d/dweight, d/drewards] of the independent reference, in the inputs'
    dtype (pass float64 for the truth)."""
    h, w, r = (t.detach().clone().requires_grad_() for t in (hidden, weight, rewards))
    l_lm = truth_lm(h, w, labels)
    l_rank = truth_rank(r, chosen, rejected, rank_loss, margin, tie_a, tie_b)
    loss = (1 - alpha) * l_rank + alpha * l_lm
    grads = torch.autograd.grad(loss, (h, w, r), allow_unused=True)
    return [loss, l_rank, l_lm, *(torch.zeros_like(t) if g is None else g for g, t in zip(grads, (h, w, r)))]


def check_against_truth(inputs, rank_loss, margin, alpha=0.7, tie_a=None, tie_b=None):
    hidden, weight, labels, rewards, chosen, rejected = [t.clone().requires_grad_() if t.is_floating_point() else t
                                                         for t in inputs]
    out = joint_loss(hidden, weight, labels, rewards, chosen, rejected, alpha=alpha, rank_loss=rank_loss,
                     margin=margin, impl="torch", tie_a=tie_a, tie_b=tie_b)
    got = torch.autograd.grad(out.loss, (hidden, weight, rewards))

    ref, l_rank, l_lm, *want = truth_joint(hidden, weight, labels, rewards, chosen, rejected, alpha=alpha,
                                           rank_loss=rank_loss, margin=margin, tie_a=tie_a, tie_b=tie_b)

    for name, a, b in [("loss", out.loss, ref), ("rank", out.rank_loss, l_rank), ("lm", out.lm_loss, l_lm)]:
        assert torch.allclose(a.double(), b, rtol=1e-6, atol=1e-12), f"{name}: {a.item()} vs {b.item()}"
    for name, a, b in zip(("hidden", "lm_weight", "rewards"), got, want):
        bad = ~torch.isclose(a, b, rtol=1e-6, atol=1e-12 + 1e-6 * b.abs().max().item())
        assert not bad.any(), f"grad {name}: first bad {bad.nonzero()[:5].tolist()} {a[bad][:5]} vs {b[bad][:5]}"
    return out


@pytest.mark.parametrize("rank_loss", ["bt", "bt_uncertainty"])
@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_matches_float64_truth(rank_loss, margin):
    check_against_truth(make_inputs(), rank_loss, margin)


def test_plain_bt_with_one_column_rewards():
    inputs = make_inputs(two=False)
    check_against_truth(inputs, "bt", 0.2)


def test_ties_are_averaged_with_pairs():
    inputs = make_inputs()
    tie_a, tie_b = torch.tensor([0, 3, 5]), torch.tensor([1, 4, 2])
    for rank_loss in ("bt", "bt_uncertainty"):
        check_against_truth(inputs, rank_loss, 0.1, tie_a=tie_a, tie_b=tie_b)


def test_empty_ties_equal_no_ties():
    inputs = make_inputs()
    a = joint_loss(*inputs, rank_loss="bt_uncertainty")
    b = joint_loss(*inputs, rank_loss="bt_uncertainty", tie_a=torch.empty(0, dtype=torch.long),
                   tie_b=torch.empty(0, dtype=torch.long))
    assert torch.equal(a.loss, b.loss)


def test_no_labelled_row_gives_zero_lm_loss_and_gradient():
    hidden, weight, labels, rewards, chosen, rejected = make_inputs()
    labels[:] = -100
    out = check_against_truth((hidden, weight, labels, rewards, chosen, rejected), "bt", 0.0)
    assert out.lm_loss.item() == 0.0


def test_no_pairs_gives_zero_rank_loss():
    hidden, weight, labels, rewards, _, _ = make_inputs()
    empty = torch.empty(0, dtype=torch.long)
    out = check_against_truth((hidden, weight, labels, rewards, empty, empty), "bt_uncertainty", 0.0)
    assert out.rank_loss.item() == 0.0


def test_alpha_extremes():
    inputs = make_inputs()
    check_against_truth(inputs, "bt", 0.0, alpha=0.0)
    check_against_truth(inputs, "bt_uncertainty", 0.0, alpha=1.0)


def test_uncertainty_quadrature_matches_monte_carlo():
    """Loose cross-check of E[sigmoid(z)] against 2M samples (sampling error ~3e-4)."""
    rewards = torch.tensor([[1.0, math.log(0.8)], [0.2, math.log(1.5)], [-2.0, math.log(0.1)]], dtype=torch.float64)
    chosen, rejected = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0])
    rng = np.random.default_rng(0)
    mu, sig = rewards[:, 0].numpy(), np.exp(rewards[:, 1].numpy())
    for c, r in zip(chosen.tolist(), rejected.tolist()):
        z = rng.normal(mu[c] - mu[r] - 0.3, math.hypot(sig[c], sig[r]), size=2_000_000)
        mc = np.mean(1 / (1 + np.exp(-z)))
        got = rank_loss_torch(rewards, torch.tensor([c]), torch.tensor([r]), rank_loss="bt_uncertainty", margin=0.3)
        assert abs(math.exp(-got.item()) - mc) < 2e-3


def test_uncertainty_is_stable_for_confidently_wrong_pairs():
    rewards = torch.tensor([[-40.0, math.log(0.01)], [40.0, math.log(0.01)]], dtype=torch.float32, requires_grad=True)
    loss = rank_loss_torch(rewards, torch.tensor([0]), torch.tensor([1]), rank_loss="bt_uncertainty")
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 70 and torch.isfinite(rewards.grad).all()


def test_module_and_bad_input():
    inputs = make_inputs()
    module = JointLoss(alpha=0.5, rank_loss="bt_uncertainty", impl="torch")
    assert torch.equal(module(*inputs).loss, joint_loss(*inputs, alpha=0.5, rank_loss="bt_uncertainty").loss)
    hidden, weight, labels, rewards, chosen, rejected = inputs
    with pytest.raises(ValueError, match="bt_uncertainty"):
        joint_loss(hidden, weight, labels, rewards[:, 0], chosen, rejected, rank_loss="bt_uncertainty")
    with pytest.raises(ValueError, match="lm_weight"):
        joint_loss(hidden, weight[:, :-1], labels, rewards, chosen, rejected)
    with pytest.raises(ValueError, match="rejected"):
        joint_loss(hidden, weight, labels, rewards, chosen, rejected[:-1])
    with pytest.raises(ValueError, match="impl"):
        joint_loss(*inputs, impl="cuda")
