"""Joint loss on one GPU, side by side with the peers: correctness, then fwd+bwd time and peak memory.

    PYTHONUNBUFFERED=1 python benchmarks/gpu/joint_loss.py            # H100: anchor shapes, ~1.5 minutes
    python benchmarks/gpu/joint_loss.py --tiny                        # CPU smoke test (TRITON_INTERPRET=1)

(a) rel. error of dX and dW vs an fp32 naive reference, for naive bf16, ours, Liger FLCE, CCE (when importable);
(b) median fwd+bwd ms (triton.testing.do_bench) and peak MiB above the inputs (gradients included) at the anchor
    shapes of docs/anchors.md: "ours" = the cuBLAS path (labelled count passed as the trainer does), "ours_v1" =
    the sync-free Triton-GEMM path (no count), ours with the ranking half on, ours with a bigger vocab chunk, and
    two profile rows: "ours_fwd_only" (no grad: one GEMM pass + LSE) and "gemm_pass" (the chunked cuBLAS GEMMs of
    one pass alone; its TFLOP/s is the cuBLAS rate every GEMM pass of ours runs at);
(c) $OUT/<gpu-slug>-joint-loss.json (or benchmarks/results/ when OUT is unset), and a compact table printed last.
TFLOP/s counts the useful work, 6 * labelled rows * H * V (2 * ... for the one-pass profile rows).
"""
import argparse
import importlib
import json
import os
import re
import sys
import time
import traceback
from pathlib import Path

TINY = "--tiny" in sys.argv
if TINY:
    os.environ["TRITON_INTERPRET"] = "1"  # before any kernel is defined

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


from jrm_engine.losses import joint_loss  # noqa: E402

DEV = "cpu" if TINY else "cuda"
DTYPE = torch.float32 if TINY else torch.bfloat16  # the interpreter runs bf16 too, but fp32 keeps --tiny quick
# (name, H, V, labelled rows, total rows); dense rows: 1 in 7 ignored as in the anchors
SHAPES = ([("tiny-dense", 48, 300, 60, 70), ("tiny-jrm", 48, 300, 16, 80)] if TINY else
          [("7B-dense", 3584, 152064, None, 8192), ("3B-dense", 2048, 151936, None, 16384),
           ("7B-jrm", 3584, 152064, 4096, 20480), ("3B-jrm", 2048, 151936, 8192, 40960)])
MEDIUM = ("tiny-check", 40, 200, 30, 50) if TINY else ("medium", 1024, 32768, None, 4096)
N_SEQ, N_PAIRS = 64, 32  # ranking half: 64 sequences, 32 pairs + 8 ties (a JRM batch of that many rows)


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def make_inputs(H, V, n_lab, T, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    h = (torch.randn(T, H, device=DEV, generator=g) * 0.5).to(DTYPE)
    w = (torch.randn(V, H, device=DEV, generator=g) * H ** -0.5).to(DTYPE)
    y = torch.randint(0, V, (T,), device=DEV, generator=g)
    if n_lab is None:
        y[::7] = -100
    else:
        keep = torch.randperm(T, device=DEV, generator=g)[:n_lab]
        mask = torch.ones(T, dtype=torch.bool, device=DEV)
        mask[keep] = False
        y[mask] = -100
    return h, w, y


def impls():
    """name -> fn(h, w, y, n) returning loss (token mean CE), n = labelled count known on the host (only ours uses
    it, as the trainer would pass it); peers only when importable (and on CUDA)."""
    empty = torch.empty(0, dtype=torch.long, device=DEV)
    no_rewards = torch.zeros(N_SEQ, 2, device=DEV)
    out = {
        "torch_naive": lambda h, w, y, n: F.cross_entropy((h @ w.t()).float(), y, ignore_index=-100),
        "ours": lambda h, w, y, n: joint_loss(h, w, y, no_rewards, empty, empty, alpha=1.0, impl="triton",
                                              num_labelled=n).loss,
        "ours_v1": lambda h, w, y, n: joint_loss(h, w, y, no_rewards, empty, empty, alpha=1.0, impl="triton").loss,
    }
    if DEV == "cuda":
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
            liger = LigerFusedLinearCrossEntropyLoss(ignore_index=-100)
            out["liger_flce"] = lambda h, w, y, n: liger(w, h, y)
        except Exception as e:  # noqa: BLE001 - an optional peer: report why it is missing and go on
            print(f"liger unavailable: {e!r}"[:200])
        try:
            from cut_cross_entropy import linear_cross_entropy
            out["cce"] = lambda h, w, y, n: linear_cross_entropy(h, w, y, ignore_index=-100)
        except Exception as e:  # noqa: BLE001
            print(f"cce unavailable: {e!r}"[:200])
    return out


def rank_inputs():
    g = torch.Generator(device=DEV).manual_seed(1)
    rewards = torch.randn(N_SEQ, 2, device=DEV, generator=g)
    chosen = torch.randint(0, N_SEQ, (N_PAIRS,), device=DEV, generator=g)
    rejected = (chosen + 1) % N_SEQ
    tie_a = torch.arange(8, device=DEV)
    return rewards, chosen, rejected, tie_a, tie_a + 8


def fwd_bwd(fn, h0, w0, y, n):
    h = h0.detach().requires_grad_()
    w = w0.detach().requires_grad_()
    loss = fn(h, w, y, n)
    loss.backward()
    return loss, h.grad, w.grad


def joint_fwd_bwd(h0, w0, y, n):
    """The whole joint loss as the trainer calls it: LM half plus uncertainty-aware BT with margin and ties."""
    rewards, chosen, rejected, tie_a, tie_b = rank_inputs()
    h, w, r = h0.detach().requires_grad_(), w0.detach().requires_grad_(), rewards.requires_grad_()
    out = joint_loss(h, w, y, r, chosen, rejected, alpha=0.7, rank_loss="bt_uncertainty", margin=0.1,
                     impl="triton", tie_a=tie_a, tie_b=tie_b, num_labelled=n)
    out.loss.backward()
    return out.loss


def forward_only(h, w, y, n):
    with torch.no_grad():
        return joint_loss(h, w, y, torch.zeros(N_SEQ, 2, device=DEV), y[:0], y[:0], alpha=1.0, impl="triton",
                          num_labelled=n).loss


def gemm_pass(h, w, y, n):
    """The chunked logits GEMMs of one pass, nothing else: the cuBLAS rate ours' four GEMM passes run at."""
    cublas = importlib.import_module("jrm_engine.kernels.lm_cublas")
    x = h[(y != -100).nonzero()[:, 0]]
    vc = cublas.vocab_chunk_cols(n, w.shape[0], h.element_size(), cublas.CHUNK_BYTES)
    return lambda: [cublas._mm_fp32(x, w[v0:v0 + vc].t()) for v0 in range(0, w.shape[0], vc)][-1]


def with_chunk(nbytes, fn):
    """Run fn with a bigger vocab chunk on the cuBLAS path: fewer dX accumulator passes, more memory."""
    module = importlib.import_module("jrm_engine.kernels.lm_cublas")
    saved, module.CHUNK_BYTES = module.CHUNK_BYTES, nbytes
    try:
        return fn()
    finally:
        module.CHUNK_BYTES = saved


def reference(h0, w0, y):
    """fp32 naive loss and grads over the labelled rows only (ignored rows have zero dX)."""
    rows = (y != -100).nonzero()[:, 0]
    h = h0.float()[rows].requires_grad_()
    w = w0.float().requires_grad_()
    loss = F.cross_entropy(h @ w.t(), y[rows]) if len(rows) else (h.sum() + w.sum()) * 0
    loss.backward()
    dx = torch.zeros(h0.shape, device=DEV, dtype=torch.float32)
    dx[rows] = h.grad
    return loss.item(), dx, w.grad


def rel(a, b):
    return ((a.float() - b).norm() / b.norm().clamp(min=1e-30)).item()


def timed(fn):
    """Median ms of fn(): triton.testing.do_bench on CUDA, a few wall-clock runs under the interpreter."""
    if DEV == "cuda":
        import triton.testing
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return sorted(ts)[1]


def peak_mib(fn):
    if DEV != "cuda":
        fn()
        return None
    sync()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync()
    return round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)


def free():
    if DEV == "cuda":
        torch.cuda.empty_cache()


RESULTS = []


def emit(**row):
    RESULTS.append(row)
    print(json.dumps(row), flush=True)


def check(shape, fns):
    name, H, V, n_lab, T = shape
    h, w, y = make_inputs(H, V, n_lab, T)
    n = int((y != -100).sum())
    ref_loss, ref_dx, ref_dw = reference(h, w, y)
    free()
    for impl, fn in fns.items():
        if impl == "torch_naive" and "jrm" in name and not TINY:
            continue  # the HF-style naive path needs 36-71 GB here: timed below, not checked
        try:
            loss, dx, dw = fwd_bwd(fn, h, w, y, n)
            emit(part="check", shape=name, impl=impl, loss_abs_err=abs(loss.item() - ref_loss),
                 rel_err_dx=rel(dx, ref_dx), rel_err_dw=rel(dw, ref_dw))
            del loss, dx, dw
        except Exception as e:  # noqa: BLE001 - one failing peer must not end the run
            emit(part="check", shape=name, impl=impl, error=repr(e)[:300])
        free()


def bench(shape, fns):
    name, H, V, n_lab, T = shape
    h, w, y = make_inputs(H, V, n_lab, T)
    labelled = int((y != -100).sum())
    flops = 6 * labelled * H * V
    runs = {impl: (lambda fn=fn: fwd_bwd(fn, h, w, y, labelled)) for impl, fn in fns.items()}
    runs["ours_joint_rank_on"] = lambda: joint_fwd_bwd(h, w, y, labelled)
    runs["ours_chunk512MiB"] = lambda: with_chunk(512 << 20, lambda: fwd_bwd(fns["ours"], h, w, y, labelled))
    runs["ours_fwd_only"] = lambda: forward_only(h, w, y, labelled)
    runs["gemm_pass"] = gemm_pass(h, w, y, labelled)
    for impl, run in runs.items():
        try:
            mib = peak_mib(run)
            ms = timed(run)
            work = flops // 3 if impl in ("ours_fwd_only", "gemm_pass") else flops
            emit(part="bench", shape=name, impl=impl, H=H, V=V, rows=T, labelled=labelled, ms=round(ms, 3),
                 peak_mib=mib, tflops=round(work / ms / 1e9, 1))
        except Exception as e:  # noqa: BLE001 - e.g. naive torch out of memory at 3B-jrm
            emit(part="bench", shape=name, impl=impl, error=repr(e)[:300])
        free()


def env():
    import triton
    info = {"part": "env", "torch": torch.__version__, "triton": triton.__version__, "device": DEV,
            "gpu": torch.cuda.get_device_name() if DEV == "cuda" else "cpu-interpreter"}
    for mod in ("liger_kernel", "cut_cross_entropy"):
        try:
            info[mod] = getattr(importlib.import_module(mod), "__version__", "present")
        except Exception as e:  # noqa: BLE001
            info[mod] = "missing: " + type(e).__name__
    emit(**info)
    return info["gpu"]


def table():
    lines = [f"{'shape':<12}{'impl':<22}{'ms':>9}{'MiB':>10}{'TFLOP/s':>9}{'err dX':>10}{'err dW':>10}"]
    errs = {(r["shape"], r["impl"]): r for r in RESULTS if r["part"] == "check" and "error" not in r}
    for r in RESULTS:
        if r["part"] != "bench":
            continue
        if "error" in r:
            lines.append(f"{r['shape']:<12}{r['impl']:<22} ERROR {r['error'][:60]}")
            continue
        e = errs.get((r["shape"], r["impl"]), {})
        fmt = lambda v: f"{v:>10.2e}" if isinstance(v, float) else f"{'-':>10}"  # noqa: E731
        mib = f"{r['peak_mib']:>10.0f}" if r["peak_mib"] is not None else f"{'-':>10}"
        lines.append(f"{r['shape']:<12}{r['impl']:<22}{r['ms']:>9.2f}{mib}{r['tflops']:>9.1f}"
                     f"{fmt(e.get('rel_err_dx'))}{fmt(e.get('rel_err_dw'))}")
    for r in RESULTS:
        if r["part"] == "check" and r["shape"] == MEDIUM[0]:
            lines.append(f"{r['shape']:<12}{r['impl']:<22} check only: err dX {r.get('rel_err_dx', r.get('error'))}"
                         f", err dW {r.get('rel_err_dw', '-')}")
    return "\n".join(lines)


def main():
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).add_argument("--tiny", action="store_true")
    t0 = time.time()
    gpu = env()
    fns = impls()
    for shape in [MEDIUM, *SHAPES]:
        try:
            check(shape, fns)
            if shape is not MEDIUM:
                bench(shape, fns)
        except Exception:  # noqa: BLE001 - keep the other shapes
            emit(part="error", shape=shape[0], trace=traceback.format_exc()[-800:])
        free()
    emit(part="done", seconds=round(time.time() - t0, 1))
    out_dir = Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    path = out_dir / f"{slug}-joint-loss.json"
    path.write_text(json.dumps(RESULTS, indent=1))
    print(f"wrote {path}\n" + table())


if __name__ == "__main__":
    main()
