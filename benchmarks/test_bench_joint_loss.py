"""pytest-benchmark: fwd+bwd of the LM half of the joint loss (plus ours with the ranking half).

    pytest benchmarks/test_bench_joint_loss.py                      # CPU-small shapes (CI: exercises this code)
    JRM_BENCH_FULL=1 pytest benchmarks/test_bench_joint_loss.py     # anchor shapes (docs/anchors.md), CUDA

Providers: impl="torch" (naive: full logits + CE), impl="triton" (CUDA only: the interpreter is not a performance
measurement), Liger FLCE and Cut Cross-Entropy when importable (CUDA only). extra_info holds peak MiB above the
inputs (gradients included) and TFLOP/s of the useful work (6 * labelled rows * H * V).
For the side-by-side table with correctness checks use benchmarks/gpu/joint_loss.py.
"""
import os

import pytest
import torch
import torch.nn.functional as F

from jrm_engine.losses import joint_loss

FULL = os.environ.get("JRM_BENCH_FULL") == "1"
CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
# (id, H, V, labelled rows or None for "1 in 7 ignored", total rows)
SHAPES = ([("7B-dense", 3584, 152064, None, 8192), ("3B-dense", 2048, 151936, None, 16384),
           ("7B-jrm", 3584, 152064, 4096, 20480), ("3B-jrm", 2048, 151936, 8192, 40960)] if FULL else
          [("small-dense", 64, 2048, None, 256), ("small-jrm", 64, 2048, 64, 512)])
PROVIDERS = ["torch", "triton", "triton_joint", "liger", "cce"]


def make_inputs(H, V, n_lab, T):
    torch.manual_seed(0)
    dtype = torch.bfloat16 if CUDA else torch.float32
    h = (torch.randn(T, H, device=DEV) * 0.5).to(dtype)
    w = (torch.randn(V, H, device=DEV) * H ** -0.5).to(dtype)
    y = torch.randint(0, V, (T,), device=DEV)
    if n_lab is None:
        y[::7] = -100
    else:
        y[torch.randperm(T, device=DEV)[n_lab:]] = -100
    return h, w, y


def provider_fn(name):
    """fn(h, w, y) -> scalar loss, or pytest.skip with the reason."""
    rewards = torch.randn(64, 2, device=DEV)
    pairs = torch.arange(32, device=DEV)
    empty = pairs[:0]
    if name == "torch":
        return lambda h, w, y: F.cross_entropy((h @ w.t()).float(), y, ignore_index=-100)
    if not CUDA:
        why = "the Triton interpreter on CPU is not a performance measurement" if name.startswith("triton") else \
            "a GPU-only peer"
        pytest.skip(f"{name}: needs CUDA ({why})")
    if name == "triton":
        return lambda h, w, y: joint_loss(h, w, y, rewards, empty, empty, alpha=1.0, impl="triton").loss
    if name == "triton_joint":
        return lambda h, w, y: joint_loss(h, w, y, rewards.requires_grad_(), pairs, pairs + 32, alpha=0.7,
                                          rank_loss="bt_uncertainty", impl="triton").loss
    if name == "liger":
        liger = pytest.importorskip("liger_kernel.transformers", reason="liger-kernel not installed")
        loss = liger.LigerFusedLinearCrossEntropyLoss(ignore_index=-100)
        return lambda h, w, y: loss(w, h, y)
    cce = pytest.importorskip("cut_cross_entropy", reason="cut-cross-entropy not installed")
    return lambda h, w, y: cce.linear_cross_entropy(h, w, y, ignore_index=-100)


def peak_mib(run):
    if not CUDA:
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_joint_loss_fwd_bwd(benchmark, shape, provider):
    _, H, V, n_lab, T = shape
    fn = provider_fn(provider)
    h0, w0, y = make_inputs(H, V, n_lab, T)

    def run():
        h = h0.detach().requires_grad_()
        w = w0.detach().requires_grad_()
        fn(h, w, y).backward()
        if CUDA:
            torch.cuda.synchronize()

    labelled = int((y != -100).sum())
    benchmark.extra_info.update(H=H, V=V, rows=T, labelled=labelled, peak_mib=peak_mib(run))
    benchmark.pedantic(run, rounds=5 if FULL else 3, warmup_rounds=1)
    benchmark.extra_info["tflops"] = 6 * labelled * H * V / benchmark.stats.stats.median / 1e12
