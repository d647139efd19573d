"""LM half on cuBLAS GEMMs with fused Triton elementwise passes, for a host-known number of labelled rows.

Why: Triton's `tl.dot` tiles reach ~330 TFLOP/s here, cuBLAS ~700-790 on the same H100, and the softmax work
between the GEMMs is memory bound and cheap if fused into one pass. So the GEMMs go to cuBLAS and each elementwise
step is one Triton pass over a bounded [R, Vc] chunk of fp32 logits (R = labelled rows, gathered contiguously):

forward  (`lm_lse_cublas`), per vocab chunk:  Z = X @ W_c^T (fp32 out);  `_lse_chunk_kernel` folds Z into a running
         max / sum-exp per row and picks the target logit.  One GEMM pass over V.
backward (`lm_grad_cublas`), per vocab chunk: Z again (fp32 out);  `_grad_chunk_kernel` writes
         G = scale * (exp(Z - lse) - onehot) in the input dtype;  dW_c = G^T @ X (cuBLAS, fp32 accumulate over all R
         rows, rounded once: exact, no rounding at chunk boundaries);  dX_acc += G @ W_c (fp32 output, accumulated
         in fp32 across chunks, rounded once at the end).  Three GEMM passes over V.

Four GEMM passes in all: the softmax needs each row's final LSE, i.e. a full pass over V, before any gradient of a
vocab chunk exists; removing the recompute needs either the [R, V] logits or an fp32 [V, H] dW accumulator (row
chunks), both far over the memory budget (benchmarks/gpu/NOTES-joint-loss.md has the arithmetic).

The GEMMs need R on the host; the caller passes it (`num_labelled`: the trainer counts labels while collating on the
CPU, so no synchronisation). It is checked against the device count with `torch._assert_async`: a wrong hint fails
loudly (at once on the CPU, at the next synchronisation on CUDA) instead of silently dropping or padding rows.
On the CPU (tests) the GEMMs run as fp32 matmuls of the upcast inputs: the same math as cuBLAS's fp32 accumulation.
"""
import torch
import triton
import triton.language as tl

from .tuning import INTERPRET

CHUNK_BYTES = 192 << 20  # bounds the fp32 logits chunk plus its gradient chunk: [R, Vc] * (4 + itemsize) bytes
_CHUNK_ALIGN = 256
_BLOCK_V = 64 if INTERPRET else 2048
_WARPS = 1 if INTERPRET else 8


@triton.jit
def _lse_chunk_kernel(Z, Labels, RunMax, RunSum, Tgt, v0, vc_len, stride_z, BLOCK_V: tl.constexpr):
    """One row per program: fold this chunk's logits into the row's running (max, sum-exp) and target logit."""
    row = tl.program_id(0)
    z_row = Z + row.to(tl.int64) * stride_z
    label = tl.load(Labels + row)
    m = tl.max(tl.full((BLOCK_V,), float("-inf"), tl.float32), 0)  # fp32 scalars (loop-carried types must match)
    s = tl.sum(tl.zeros((BLOCK_V,), tl.float32), 0)
    t = tl.sum(tl.zeros((BLOCK_V,), tl.float32), 0)
    for c0 in range(0, vc_len, BLOCK_V):
        offs = c0 + tl.arange(0, BLOCK_V)
        z = tl.load(z_row + offs, mask=offs < vc_len, other=float("-inf"))
        m_new = tl.maximum(m, tl.max(z, 0))  # finite: every block holds at least one column
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), 0)
        m = m_new
        t += tl.sum(tl.where(offs + v0 == label, z, 0.0), 0)
    m_old = tl.load(RunMax + row)
    m_all = tl.maximum(m_old, m)
    tl.store(RunSum + row, tl.load(RunSum + row) * tl.exp(m_old - m_all) + s * tl.exp(m - m_all))
    tl.store(RunMax + row, m_all)
    tl.store(Tgt + row, tl.load(Tgt + row) + t)


@triton.jit
def _grad_chunk_kernel(Z, G, Labels, Lse, Scale, v0, vc_len, stride_z, stride_g, BLOCK_V: tl.constexpr):
    """G[row, c] = scale * (exp(Z - lse) - [v0 + c == label]), computed in fp32, stored once in G's dtype."""
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    mask = cols < vc_len
    z = tl.load(Z + row.to(tl.int64) * stride_z + cols, mask=mask, other=0.0)
    label = tl.load(Labels + row)
    lse = tl.load(Lse + row)
    scale = tl.load(Scale)
    g = (tl.exp(z - lse) - tl.where(cols + v0 == label, 1.0, 0.0)) * scale
    tl.store(G + row.to(tl.int64) * stride_g + cols, g.to(G.dtype.element_ty), mask=mask)


def _mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with fp32 accumulation and an fp32 result (cuBLAS `out_dtype` on CUDA, upcast fp32 matmul elsewhere)."""
    if a.is_cuda and a.dtype != torch.float32:
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a.float(), b.float())


_ADDMM_OUT_DTYPE = [True]  # cleared if this torch's addmm lacks the fp32-self / low-precision-mat2 path


def _addmm_fp32(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """acc + a @ b in fp32 (acc fp32; a, b in the input dtype)."""
    if a.is_cuda and a.dtype != torch.float32:
        if _ADDMM_OUT_DTYPE[0]:
            try:
                return torch.addmm(acc, a, b, out_dtype=torch.float32)
            except (RuntimeError, TypeError):  # cross-dtype addmm is newer than mm's out_dtype (pytorch#154086)
                _ADDMM_OUT_DTYPE[0] = False
        return acc.add_(torch.mm(a, b, out_dtype=torch.float32))
    return acc.addmm_(a.float(), b.float())


def vocab_chunk_cols(rows: int, V: int, itemsize: int, chunk_bytes: int) -> int:
    """Columns per chunk: fp32 logits + gradient (`itemsize` bytes, 0 for none) for `rows` rows within
    `chunk_bytes`, a multiple of 256, at most V. Module values are read per call (tests and benchmarks change them)."""
    cols = chunk_bytes // max(1, rows * (4 + itemsize)) // _CHUNK_ALIGN * _CHUNK_ALIGN
    return min(max(cols, _CHUNK_ALIGN), V)


def gather_labelled(hidden: torch.Tensor, labels: torch.Tensor, num_labelled: int):
    """(rows [R], X [R, H] contiguous, labels [R] int64) of the labelled rows in order, R = num_labelled.

    The device count is asserted equal to `num_labelled` without a host synchronisation.
    """
    ignored = labels == -100
    count = (~ignored).sum()
    torch._assert_async(count == num_labelled,
                        f"num_labelled={num_labelled} does not match the number of labels != -100")
    rows = torch.argsort(ignored.to(torch.int8), stable=True)[:num_labelled]
    return rows, hidden.index_select(0, rows), labels.index_select(0, rows).long()


def lm_lse_cublas(x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                  chunk_bytes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(lse [R] fp32, target logit [R] fp32) of `x @ weight.T` for labelled rows x [R, H], labels [R]."""
    R = x.shape[0]
    V = weight.shape[0]
    run_max = torch.full((R,), float("-inf"), device=x.device, dtype=torch.float32)
    run_sum = torch.zeros((R,), device=x.device, dtype=torch.float32)
    tgt = torch.zeros((R,), device=x.device, dtype=torch.float32)
    if R == 0:
        return run_max, tgt
    vc = vocab_chunk_cols(R, V, 0, chunk_bytes or CHUNK_BYTES)  # no gradient chunk here: logits only
    for v0 in range(0, V, vc):
        z = _mm_fp32(x, weight[v0:v0 + vc].t())
        _lse_chunk_kernel[(R,)](z, labels, run_max, run_sum, tgt, v0, z.shape[1], z.stride(0),
                                BLOCK_V=_BLOCK_V, num_warps=_WARPS)
    return run_max + torch.log(run_sum), tgt


def lm_grad_cublas(x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor,
                   scale: torch.Tensor, *, need_dx: bool = True, need_dw: bool = True,
                   chunk_bytes: int | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dX [R, H] or None, dW [V, H] or None) of `scale * sum_rows CE(x @ weight.T, labels)`; scale fp32 [1] device."""
    R, H = x.shape
    V = weight.shape[0]
    dw = torch.empty_like(weight) if need_dw else None
    if R == 0 or not (need_dx or need_dw):
        if dw is not None:
            dw.zero_()
        return (torch.zeros_like(x) if need_dx else None), dw
    vc = vocab_chunk_cols(R, V, x.element_size(), chunk_bytes or CHUNK_BYTES)
    g_buf = torch.empty((R, vc), device=x.device, dtype=x.dtype)
    dx_acc = None
    for v0 in range(0, V, vc):
        w_c = weight[v0:v0 + vc]
        z = _mm_fp32(x, w_c.t())
        g = g_buf[:, :z.shape[1]]
        _grad_chunk_kernel[(R, triton.cdiv(z.shape[1], _BLOCK_V))](
            z, g, labels, lse, scale, v0, z.shape[1], z.stride(0), g.stride(0), BLOCK_V=_BLOCK_V, num_warps=_WARPS)
        del z  # lets the allocator hand the same block to the next chunk's logits
        if need_dw:
            if g.is_cuda:
                torch.mm(g.t(), x, out=dw[v0:v0 + vc])
            else:
                dw[v0:v0 + vc] = _mm_fp32(g.t(), x)
        if need_dx:
            dx_acc = _mm_fp32(g, w_c) if dx_acc is None else _addmm_fp32(dx_acc, g, w_c)
    return (dx_acc.to(x.dtype) if need_dx else None), dw
