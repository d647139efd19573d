"""Backward of the LM half: dX and dW of `scale * sum_rows CE(hidden @ W.T, label)`, exact by default.

Why a slab: dW needs every labelled row's final LSE and a sum over rows; dX needs a sum over the vocabulary. No
tile schedule gives both sums an fp32 home in registers when H is 2-4k, and an fp32 dW buffer would be V x H x 4
bytes (2 GB at 7B). So the vocabulary is walked in chunks of `Vc` columns; per chunk:

1. `_lm_dlogits_kernel` recomputes the logits tile by tile (fp32 accumulator), turns them into
   `scale * (softmax - onehot)` with the saved LSE (fp32), and writes them once, in the input dtype, to a slab
   [T, Vc] (bounded by `slab_bytes`; only the first `count` rows are touched);
2. `_lm_dw_kernel`: dW[chunk] = slab^T @ X[rows]; one program owns a dW tile and loops over all labelled rows with
   an fp32 accumulator, so dW is rounded once, at the end: no rounding at chunk boundaries;
3. `_lm_dx_kernel`: dX[rows] += slab @ W[chunk] into an fp32 accumulator [T, H] (each program owns its tile: no
   atomics, deterministic); the last chunk scatters the sum, rounded once, into dX.

No tile is skipped: every logit gradient, however small, reaches dX and dW (no CCE-style gradient filtering).
The cost over a plain GEMM is one recomputation of the logits plus the slab and accumulator traffic.
"""
import torch
import triton
import triton.language as tl

from .tuning import INTERPRET, dot_acc, dot_precision, labelled_row_block, logits_tile, tile_configs

SLAB_BYTES = 128 << 20  # bounds the [T, Vc] logit-gradient slab; bigger slabs mean fewer dX accumulator passes
_CHUNK_ALIGN = 256  # Vc is a multiple of every BLOCK_N / BLOCK_K used below

_DLOGITS_TILES = [(128, 128, 64, 8, 4), (128, 256, 64, 8, 3)]
_GEMM_TILES = [(128, 128, 64, 8, 4), (128, 256, 64, 8, 3), (256, 128, 64, 8, 3)]
_DX_TILE = (128, 128, 64, 8, 4)  # fixed: autotuning would re-run the accumulating kernel on a live accumulator
_INTERPRET_TILE = (16, 32, 16, 1, 1)


@triton.autotune(configs=tile_configs(_DLOGITS_TILES, _INTERPRET_TILE), key=["H", "Vc"])
@triton.heuristics({"EVEN_K": lambda a: a["H"] % a["BLOCK_K"] == 0})
@triton.jit
def _lm_dlogits_kernel(X, W, Rows, Count, Labels, Lse, Scale, Slab, v0, vc_len, H, Vc,
                       stride_xt, stride_xh, stride_wv, stride_wh,
                       DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    count = tl.load(Count)
    if pid_m * BLOCK_M >= count:
        return
    offs_m, mask_m, rows, labels = labelled_row_block(Rows, Labels, count, pid_m, BLOCK_M)
    lse = tl.load(Lse + offs_m, mask=mask_m, other=0.0)
    offs_c = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_c = offs_c < vc_len
    offs_v = v0 + offs_c

    x_base = X + rows[:, None] * stride_xt
    w_base = W + offs_v[None, :].to(tl.int64) * stride_wv
    acc = logits_tile(x_base, w_base, mask_m, mask_c, H, stride_xh, stride_wh, DOT_PRECISION,
                      BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K)

    scale = tl.load(Scale)
    grad = tl.exp(acc - lse[:, None]) - tl.where(offs_v[None, :] == labels[:, None], 1.0, 0.0)
    grad = grad * scale
    slab_ptrs = Slab + offs_m[:, None].to(tl.int64) * Vc + offs_c[None, :]
    tl.store(slab_ptrs, grad.to(Slab.dtype.element_ty), mask=mask_m[:, None] & mask_c[None, :])


@triton.autotune(configs=tile_configs(_GEMM_TILES, _INTERPRET_TILE), key=["H", "Vc"])
@triton.jit
def _lm_dw_kernel(Slab, X, Rows, Count, DW, v0, vc_len, H, Vc,
                  stride_xt, stride_xh, stride_dwv, stride_dwh,
                  DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # dW[v0 + c, h] = sum_i slab[i, c] * X[rows[i], h]: M = vocab chunk columns, N = hidden, K = labelled rows.
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    count = tl.load(Count)
    offs_c = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_c = offs_c < vc_len
    offs_h = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_h = offs_h < H
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for i0 in range(0, count, BLOCK_K):
        offs_i = i0 + tl.arange(0, BLOCK_K)
        mask_i = offs_i < count
        rows = tl.load(Rows + offs_i, mask=mask_i, other=0).to(tl.int64)
        g = tl.load(Slab + offs_i[:, None].to(tl.int64) * Vc + offs_c[None, :],
                    mask=mask_i[:, None] & mask_c[None, :], other=0.0)  # [BLOCK_K rows, BLOCK_M vocab]
        x = tl.load(X + rows[:, None] * stride_xt + offs_h[None, :] * stride_xh,
                    mask=mask_i[:, None] & mask_h[None, :], other=0.0)  # [BLOCK_K rows, BLOCK_N hidden]
        acc = dot_acc(tl.trans(g), x, acc, DOT_PRECISION)
    dw_ptrs = DW + (v0 + offs_c)[:, None].to(tl.int64) * stride_dwv + offs_h[None, :] * stride_dwh
    tl.store(dw_ptrs, acc.to(DW.dtype.element_ty), mask=mask_c[:, None] & mask_h[None, :])


@triton.jit
def _lm_dx_kernel(Slab, W, Rows, Count, DxAcc, DX, v0, vc_len, H, Vc,
                  stride_wv, stride_wh, stride_dxt, stride_dxh,
                  FIRST: tl.constexpr, LAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # dX[rows[i], h] += sum_c slab[i, c] * W[v0 + c, h]: M = labelled rows, N = hidden, K = vocab chunk columns.
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    count = tl.load(Count)
    if pid_m * BLOCK_M >= count:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < count
    offs_h = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_h = offs_h < H
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for j0 in range(0, vc_len, BLOCK_K):
        offs_j = j0 + tl.arange(0, BLOCK_K)
        mask_j = offs_j < vc_len
        g = tl.load(Slab + offs_m[:, None].to(tl.int64) * Vc + offs_j[None, :],
                    mask=mask_m[:, None] & mask_j[None, :], other=0.0)  # [BLOCK_M rows, BLOCK_K vocab]
        w = tl.load(W + (v0 + offs_j)[:, None].to(tl.int64) * stride_wv + offs_h[None, :] * stride_wh,
                    mask=mask_j[:, None] & mask_h[None, :], other=0.0)  # [BLOCK_K vocab, BLOCK_N hidden]
        acc = dot_acc(g, w, acc, DOT_PRECISION)
    mask = mask_m[:, None] & mask_h[None, :]
    acc_ptrs = DxAcc + offs_m[:, None].to(tl.int64) * H + offs_h[None, :]
    if not FIRST:
        acc += tl.load(acc_ptrs, mask=mask, other=0.0)
    if LAST:
        rows = tl.load(Rows + offs_m, mask=mask_m, other=0).to(tl.int64)
        tl.store(DX + rows[:, None] * stride_dxt + offs_h[None, :] * stride_dxh, acc.to(DX.dtype.element_ty), mask=mask)
    else:
        tl.store(acc_ptrs, acc, mask=mask)


def vocab_chunk(T: int, V: int, itemsize: int, slab_bytes: int) -> int:
    """Columns per slab: as many as `slab_bytes` allows for T rows, a multiple of 256, at most V rounded up."""
    cols = max(_CHUNK_ALIGN, slab_bytes // max(1, T * itemsize) // _CHUNK_ALIGN * _CHUNK_ALIGN)
    return min(cols, triton.cdiv(V, _CHUNK_ALIGN) * _CHUNK_ALIGN)


def lm_backward(hidden: torch.Tensor, weight: torch.Tensor, rows: torch.Tensor, count: torch.Tensor,
                labels_sel: torch.Tensor, lse: torch.Tensor, scale: torch.Tensor, *, need_dx: bool = True,
                need_dw: bool = True, slab_bytes: int = SLAB_BYTES) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dX [T, H] or None, dW [V, H] or None) for `loss = scale * sum_{i < count} CE(row rows[i])`.

    `scale` is an fp32 device tensor [1] (e.g. grad_output * alpha / n_labelled): nothing here reads it on the host.
    Rows that are not labelled get zero dX; dW is zero when no row is labelled.
    """
    T, H = hidden.shape
    V = weight.shape[0]
    dx = torch.zeros_like(hidden) if need_dx else None
    dw = torch.empty_like(weight) if need_dw else None
    if not (need_dx or need_dw):
        return dx, dw
    if T == 0:
        if dw is not None:
            dw.zero_()
        return dx, dw
    vc = vocab_chunk(T, V, hidden.element_size(), slab_bytes)
    n_chunks = triton.cdiv(V, vc)
    slab = torch.empty((T, vc), device=hidden.device, dtype=hidden.dtype)  # [labelled rows first, vocab chunk]
    dx_acc = torch.empty((T, H) if need_dx and n_chunks > 1 else (1,), device=hidden.device, dtype=torch.float32)
    prec = dot_precision(hidden.dtype)
    dx_m, dx_n, dx_k, dx_warps, dx_stages = _INTERPRET_TILE if INTERPRET else _DX_TILE
    for c in range(n_chunks):
        v0 = c * vc
        vc_len = min(vc, V - v0)
        grid = lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), triton.cdiv(vc_len, meta["BLOCK_N"]))  # noqa: E731
        _lm_dlogits_kernel[grid](hidden, weight, rows, count, labels_sel, lse, scale, slab, v0, vc_len, H, vc,
                                 hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
                                 DOT_PRECISION=prec)
        if need_dw:
            grid = lambda meta: (triton.cdiv(vc_len, meta["BLOCK_M"]), triton.cdiv(H, meta["BLOCK_N"]))  # noqa: E731
            _lm_dw_kernel[grid](slab, hidden, rows, count, dw, v0, vc_len, H, vc,
                                hidden.stride(0), hidden.stride(1), dw.stride(0), dw.stride(1), DOT_PRECISION=prec)
        if need_dx:
            _lm_dx_kernel[(triton.cdiv(T, dx_m), triton.cdiv(H, dx_n))](
                slab, weight, rows, count, dx_acc, dx, v0, vc_len, H, vc,
                weight.stride(0), weight.stride(1), dx.stride(0), dx.stride(1),
                FIRST=c == 0, LAST=c == n_chunks - 1, DOT_PRECISION=prec,
                BLOCK_M=dx_m, BLOCK_N=dx_n, BLOCK_K=dx_k, num_warps=dx_warps, num_stages=dx_stages)
    return dx, dw
