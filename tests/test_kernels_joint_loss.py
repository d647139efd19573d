"""Triton joint loss (impl="triton") under TRITON_INTERPRET=1 on the CPU, against a float64 truth.

Rule (docs/style.md): |ours - truth| <= |torch same dtype - truth| + tol, tol 1e-5 (fp32) / 1e-2 (bf16), on relative
errors of the loss values and of the gradients w.r.t. hidden, lm_weight and rewards. Shapes are tiny because the
interpreter runs every program in Python; none is a multiple of the blocks.
"""
import importlib
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel is defined: the CPU interpreter, not a GPU

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

lm_backward_module = importlib.import_module("jrm_engine.kernels.lm_backward")  # the package exports the function
lm_cublas_module = importlib.import_module("jrm_engine.kernels.lm_cublas")
from jrm_engine.kernels import lm_lse_forward, rank_loss_forward, select_labelled_rows  # noqa: E402
from jrm_engine.losses import joint_loss  # noqa: E402
from test_losses import assert_close_to_grid_truth, truth_grid, truth_joint, uncertainty_grid  # noqa: E402

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def make(T=70, H=50, V=300, S=9, P=7, dtype=torch.float32, ignore_every=3, two=True):
    hidden = torch.randn(T, H).to(dtype)
    weight = (torch.randn(V, H) * H ** -0.5).to(dtype)
    labels = torch.randint(0, V, (T,))
    if ignore_every:
        labels[::ignore_every] = -100
    rewards = torch.randn(S, 2) if two else torch.randn(S)
    if two:
        rewards[:, 1] = rewards[:, 1] * 0.5 - 0.3
    chosen = torch.randint(0, S, (P,))
    rejected = (chosen + torch.randint(1, S, (P,))) % S
    return hidden, weight, labels, rewards.to(dtype), chosen, rejected


def run(impl, inputs, **kw):
    hidden, weight, labels, rewards, chosen, rejected = inputs
    h, w, r = (t.clone().requires_grad_() for t in (hidden, weight, rewards))
    out = joint_loss(h, w, labels, r, chosen, rejected, impl=impl, **kw)
    out.loss.backward()
    return [out.loss, out.rank_loss, out.lm_loss, h.grad, w.grad, r.grad]


def truth(inputs, *, alpha=0.7, rank_loss="bt", margin=0.0, tie_a=None, tie_b=None):
    hidden, weight, labels, rewards, chosen, rejected = inputs
    return truth_joint(hidden.double(), weight.double(), labels, rewards.double(), chosen, rejected, alpha=alpha,
                       rank_loss=rank_loss, margin=margin, tie_a=tie_a, tie_b=tie_b)


def rel_err(x, ref):
    return ((x.double() - ref).norm() / ref.norm().clamp(min=1e-30)).item() if ref.abs().max() > 0 else x.abs().max().item()


def labelled_count(inputs):
    return int((inputs[2] != -100).sum())


def assert_no_worse_than_torch(inputs, hint=False, **kw):
    """hint=True: pass the labelled count (the cuBLAS path); otherwise the sync-free Triton GEMM path."""
    dtype = inputs[0].dtype
    ours = run("triton", inputs, num_labelled=labelled_count(inputs) if hint else None, **kw)
    ref_torch, exact = run("torch", inputs, **kw), truth(inputs, **kw)
    names = ["loss", "rank_loss", "lm_loss", "d_hidden", "d_lm_weight", "d_rewards"]
    for name, a, b, t in zip(names, ours, ref_torch, exact):
        assert torch.isfinite(a).all(), name
        ea, eb = rel_err(a, t), rel_err(b, t)
        if not ea <= eb + TOL[dtype]:
            bad = ((a.double() - t).abs() > (b.double() - t).abs() + TOL[dtype] * t.abs().max()).nonzero()[:5]
            pytest.fail(f"{name} ({dtype}): ours {ea:.3g} vs torch {eb:.3g} rel. error; first bad {bad.tolist()}")
    return ours


@pytest.fixture
def small_slab(monkeypatch):
    """Force several vocab chunks (Vc = 256 < V) so the fp32 dX accumulation across chunks is exercised."""
    monkeypatch.setattr(lm_backward_module, "SLAB_BYTES", 1)


@pytest.fixture
def small_chunk(monkeypatch):
    """Force several vocab chunks (Vc = 256 < V) on the cuBLAS path: running LSE and fp32 dX across chunks."""
    monkeypatch.setattr(lm_cublas_module, "CHUNK_BYTES", 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rank_loss", ["bt", "bt_uncertainty"])
def test_matches_truth_with_margin_and_ties(dtype, rank_loss, small_slab):
    tie_a, tie_b = torch.tensor([0, 4]), torch.tensor([3, 8])
    assert_no_worse_than_torch(make(dtype=dtype), rank_loss=rank_loss, margin=0.4, tie_a=tie_a, tie_b=tie_b)


def test_single_chunk_even_hidden_and_one_column_rewards():
    assert_no_worse_than_torch(make(H=48, two=False), rank_loss="bt", margin=0.2)


def test_all_rows_ignored():
    inputs = make(ignore_every=1)
    ours = assert_no_worse_than_torch(inputs, rank_loss="bt_uncertainty")
    assert ours[2].item() == 0.0 and not ours[3].any() and not ours[4].any()


def test_no_rows_and_no_pairs():
    empty = torch.empty(0, dtype=torch.long)
    hidden, weight, labels, rewards, _, _ = make(T=0)
    ours = run("triton", (hidden, weight, labels, rewards, empty, empty))
    assert all(torch.isfinite(t).all() for t in ours) and ours[0].item() == 0.0


@pytest.mark.parametrize("P", [1, 500])
def test_one_and_many_pairs(P):
    """Rank half only (alpha = 0); 500 pairs over 9 rewards make the atomics collide."""
    assert_no_worse_than_torch(make(T=20, V=64, P=P), alpha=0.0, rank_loss="bt_uncertainty", margin=0.1)


@pytest.mark.parametrize("hint", [False, True])
def test_tied_weights_accumulate_with_the_embedding(hint):
    """lm_weight is the embedding matrix that also produced hidden: both paths of the gradient must add up."""
    ids = torch.randint(0, 300, (70,))
    labels = torch.randint(0, 300, (70,))
    labels[::4] = -100
    rewards, chosen, rejected = torch.randn(5, 2), torch.tensor([0, 1]), torch.tensor([2, 3])
    base = torch.randn(300, 50) * 50 ** -0.5
    grads = {}
    for impl in ("torch", "triton"):
        emb = base.clone().requires_grad_()
        hidden = torch.tanh(emb[ids] * 3)
        n = int((labels != -100).sum()) if hint else None
        joint_loss(hidden, emb, labels, rewards, chosen, rejected, impl=impl, num_labelled=n).loss.backward()
        grads[impl] = emb.grad
    assert torch.allclose(grads["triton"], grads["torch"], rtol=1e-5, atol=1e-7)


def test_lse_forward_with_vocab_splits():
    hidden, weight, labels, *_ = make(T=37, V=300)
    rows, count, labels_sel = select_labelled_rows(labels)
    lse, tgt = lm_lse_forward(hidden, weight, rows, count, labels_sel, split_v=3)
    n = int(count)
    logits = hidden.double()[rows[:n]] @ weight.double().t()
    assert torch.allclose(lse[:n].double(), torch.logsumexp(logits, 1), rtol=1e-6, atol=1e-6)
    assert torch.allclose(tgt[:n].double(), logits.gather(1, labels_sel[:n, None]).squeeze(1), rtol=1e-6, atol=1e-6)


def test_row_selection_keeps_order():
    labels = torch.tensor([-100, 5, -100, 7, 2, -100])
    rows, count, labels_sel = select_labelled_rows(labels)
    assert rows.tolist()[:3] == [1, 3, 4] and count.tolist() == [3] and labels_sel.tolist()[:3] == [5, 7, 2]


def test_rank_kernel_stable_for_confident_wrong_pairs():
    rewards = torch.tensor([[-40.0, -4.6], [40.0, -4.6]])
    loss_sum, grad = torch.zeros(1), torch.zeros(2, 2)
    rank_loss_forward(rewards, torch.tensor([0]), torch.tensor([1]), "bt_uncertainty", 0.0, loss_sum, grad)
    assert torch.isfinite(loss_sum).all() and loss_sum.item() > 70 and torch.isfinite(grad).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rank_kernel_uncertainty_grid_matches_brute_force_integral(dtype):
    """The kernel's loss and analytic gradients (float64 inside, fp32 out) within 1e-6 relative of the brute-force
    integral over the issue's sigma and m grid. Every reward row is in one pair, so the gradient rows are per pair;
    the loss is summed, so each pair is launched on its own for it."""
    rewards, chosen, rejected = uncertainty_grid(dtype)
    want_nll, want_grad = truth_grid(rewards, chosen, rejected)
    grad = torch.zeros(rewards.shape[0], 2)
    rank_loss_forward(rewards, chosen, rejected, "bt_uncertainty", 0.0, torch.zeros(1), grad)
    assert_close_to_grid_truth("d/d(mu, log sigma)", grad, want_grad, want_nll)
    nll = torch.zeros(len(chosen))
    for k in range(len(chosen)):
        rank_loss_forward(rewards, chosen[k:k + 1], rejected[k:k + 1], "bt_uncertainty", 0.0, nll[k:k + 1],
                          torch.zeros(rewards.shape[0], 2))
    assert_close_to_grid_truth("loss", nll, want_nll, want_nll)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cublas_path_matches_truth_across_chunks(dtype, small_chunk):
    tie_a, tie_b = torch.tensor([0, 4]), torch.tensor([3, 8])
    assert_no_worse_than_torch(make(dtype=dtype), hint=True, rank_loss="bt_uncertainty", margin=0.4,
                               tie_a=tie_a, tie_b=tie_b)


def test_cublas_path_single_chunk_and_all_ignored():
    assert_no_worse_than_torch(make(H=48, two=False), hint=True, rank_loss="bt", margin=0.2)
    ours = assert_no_worse_than_torch(make(ignore_every=1), hint=True)
    assert ours[2].item() == 0.0 and not ours[3].any() and not ours[4].any()


def test_cublas_path_no_rows():
    empty = torch.empty(0, dtype=torch.long)
    hidden, weight, labels, rewards, _, _ = make(T=0)
    ours = run("triton", (hidden, weight, labels, rewards, empty, empty), num_labelled=0)
    assert all(torch.isfinite(t).all() for t in ours) and ours[0].item() == 0.0


@pytest.mark.parametrize("hint", [False, True])
def test_grad_output_scales_the_lm_gradient(hint, small_chunk, small_slab):
    """A weighted sum of the outputs (grad_output != 1 for both halves) against torch in fp32."""
    hidden, weight, labels, rewards, chosen, rejected = make()
    grads = {}
    for impl in ("torch", "triton"):
        h, w, r = (t.clone().requires_grad_() for t in (hidden, weight, rewards))
        out = joint_loss(h, w, labels, r, chosen, rejected, impl=impl,
                         num_labelled=labelled_count((hidden, weight, labels)) if hint else None)
        (2.5 * out.lm_loss - 0.75 * out.rank_loss + out.loss).backward()
        grads[impl] = (h.grad, w.grad, r.grad)
    for a, b in zip(grads["triton"], grads["torch"]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_cublas_path_frozen_head_and_no_grad():
    """Only dX when lm_weight is frozen; under no_grad the forward alone gives the same values."""
    inputs = make()
    hidden, weight, labels, rewards, chosen, rejected = inputs
    n = labelled_count(inputs)
    h = hidden.clone().requires_grad_()
    out = joint_loss(h, weight, labels, rewards, chosen, rejected, impl="triton", num_labelled=n)
    out.loss.backward()
    ref_h = hidden.clone().requires_grad_()
    joint_loss(ref_h, weight, labels, rewards, chosen, rejected, impl="torch").loss.backward()
    assert torch.allclose(h.grad, ref_h.grad, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        fwd = joint_loss(hidden, weight, labels, rewards, chosen, rejected, impl="triton", num_labelled=n)
    assert torch.allclose(fwd.loss, out.loss.detach(), rtol=1e-6) and not fwd.loss.requires_grad


@pytest.mark.parametrize("delta", [-1, 1])
def test_wrong_num_labelled_raises(delta):
    inputs = make()
    hidden, weight, labels, rewards, chosen, rejected = inputs
    with pytest.raises(RuntimeError, match="num_labelled"):
        joint_loss(hidden, weight, labels, rewards, chosen, rejected, impl="triton",
                   num_labelled=labelled_count(inputs) + delta)
    with pytest.raises(ValueError, match="num_labelled"):
        joint_loss(hidden, weight, labels, rewards, chosen, rejected, impl="triton", num_labelled=len(labels) + 1)


def test_vocab_chunk_columns_fit_the_budget():
    vc = lm_cublas_module.vocab_chunk_cols(7021, 152064, 2, 192 << 20)
    assert vc % 256 == 0 and 7021 * vc * 6 <= 192 << 20
    assert lm_cublas_module.vocab_chunk_cols(10, 300, 2, 192 << 20) == 300
    assert lm_cublas_module.vocab_chunk_cols(10**6, 300, 4, 1) == 256
