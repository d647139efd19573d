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


def truth_uncertain_nll(d, s):
    """-log E[sigmoid(z)], z ~ N(d, s^2), per pair, by brute force: a float64 Riemann sum over +-14 sd with the step
    min(s, 1) / 40 in z, in log space. For d > 0 it integrates the other side, 1 - E[sigmoid(z)] = E[sigmoid(-z)], so
    that a loss of 1e-22 is computed rather than rounded to 0. The grid is fixed in standard units u = (z - d) / s, so
    autograd differentiates the sum in d and s exactly."""
    out = []
    for d_i, s_i in zip(d.unbind(), s.unbind()):
        s_f = float(s_i.detach())
        step = min(s_f, 1.0) / 40 / s_f
        u = torch.arange(-14.0, 14.0 + step / 2, step, dtype=torch.float64)
        small = torch.where(d_i > 0, -d_i, d_i)
        log_e = (torch.logsumexp(torch.nn.functional.logsigmoid(small + s_i * u) - 0.5 * u * u, 0)
                 + math.log(step) - 0.5 * math.log(2 * math.pi))
        out.append(torch.where(d_i > 0, -torch.log1p(-torch.exp(log_e)), -log_e))
    return torch.stack(out) if out else d * 0.0


def truth_pair(mu_c, mu_r, ls_c, ls_r, rank_loss, margin):
    """-log P(c > r): plain logistic, or the brute-force integral above."""
    d = mu_c - mu_r - margin
    if rank_loss == "bt":
        return torch.log1p(torch.exp(-d))
    return truth_uncertain_nll(d, torch.sqrt(torch.exp(ls_c) ** 2 + torch.exp(ls_r) ** 2))


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


# The ranges: sigma from 0.01 to 100 and |m| up to 50 (m = mu_c - mu_r - margin), both rules and their seam.
GRID_SIGMAS = (0.01, 0.03, 0.1, 0.3, 0.7, 1.0, 1.01, 1.5, 2.0, 3.0, 5.0, 7.0, 10.0, 12.0, 30.0, 100.0)
GRID_MARGINS = (-50.0, -20.0, -5.0, -1.0, -0.1, 0.0, 0.1, 1.0, 5.0, 20.0, 50.0)


def uncertainty_grid(dtype=torch.float64):
    """rewards [2N, 2] (pair k: row 2k beats row 2k + 1, sigma split unevenly between them), chosen, rejected."""
    rows = []
    for k, (sigma, m) in enumerate((s, m) for s in GRID_SIGMAS for m in GRID_MARGINS):
        share = 0.5 if k % 2 else 0.9  # fraction of the variance carried by the chosen row
        rows += [[m + 0.25, 0.5 * math.log(share * sigma ** 2)], [0.25, 0.5 * math.log((1 - share) * sigma ** 2)]]
    rewards = torch.tensor(rows, dtype=dtype)
    n = rewards.shape[0] // 2
    return rewards, torch.arange(0, 2 * n, 2), torch.arange(1, 2 * n, 2)


def truth_grid(rewards, chosen, rejected):
    """(per-pair loss [N], d loss_sum / d rewards [2N, 2]) of the brute-force integral."""
    r = rewards.detach().double().requires_grad_()
    nll = truth_pair(r[chosen, 0], r[rejected, 0], r[chosen, 1], r[rejected, 1], "bt_uncertainty", 0.0)
    nll.sum().backward()
    return nll.detach(), r.grad


def assert_close_to_grid_truth(name, got, want, loss):
    """Within 1e-6 relative; the floor 1e-12 * loss only matters where the truth is 0 (d/dlog sigma at m = 0)."""
    floor = 1e-12 * loss.abs()
    if got.dim() == 2:
        floor = floor.repeat_interleave(2)[:, None]
    err = (got.double() - want).abs()
    bad = err > 1e-6 * want.abs() + floor
    if bad.any():
        first = bad.nonzero()[:5].tolist()
        raise AssertionError(f"{name}: first bad {first}: got {got[bad][:5].tolist()} want {want[bad][:5].tolist()}")


def test_uncertainty_grid_matches_brute_force_integral():
    rewards, chosen, rejected = uncertainty_grid()
    want_nll, want_grad = truth_grid(rewards, chosen, rejected)
    from jrm_engine.losses import pair_nll_torch
    r = rewards.clone().requires_grad_()
    nll = pair_nll_torch(r[chosen, 0], r[rejected, 0], r[chosen, 1], r[rejected, 1], rank_loss="bt_uncertainty",
                         margin=0.0)
    nll.sum().backward()
    assert_close_to_grid_truth("loss", nll.detach(), want_nll, want_nll)
    assert_close_to_grid_truth("d/d(mu, log sigma)", r.grad, want_grad, want_nll)
    # float32 rewards get the same float64 arithmetic: only the final rounding to float32 differs
    r32 = rewards.float().requires_grad_()
    nll32 = pair_nll_torch(r32[chosen, 0], r32[rejected, 0], r32[chosen, 1], r32[rejected, 1],
                           rank_loss="bt_uncertainty", margin=0.0)
    want32, _ = truth_grid(r32, chosen, rejected)
    assert_close_to_grid_truth("float32 loss", nll32.detach(), want32, want32)


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
