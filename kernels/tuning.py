"""Launch configurations: a few H100 tiles on CUDA, one tiny tile under TRITON_INTERPRET=1 (CPU tests)."""
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# The interpreter (numpy) returns garbage for bf16/fp16 `tl.dot` (triton 3.9); exact upcasting to fp32 there gives
# the same math as the GPU's low-precision dot with fp32 accumulation.
_UPCAST_DOT = tl.constexpr(INTERPRET)


@triton.jit
def dot_acc(a, b, acc, DOT_PRECISION: tl.constexpr):
    """acc + a @ b with an fp32 accumulator."""
    if _UPCAST_DOT:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def logits_tile(x_base, w_base, mask_rows, mask_cols, H, stride_xh, stride_wh, DOT_PRECISION: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    """fp32 [BLOCK_M, BLOCK_N] tile of X[rows] @ W[cols].T over the full hidden size (inlined by Triton).

    x_base: [BLOCK_M, 1] row pointers into X; w_base: [1, BLOCK_N] column pointers into W.
    """
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, H, BLOCK_K):
        kk = k0 + offs_k
        if EVEN_K:
            x = tl.load(x_base + kk[None, :] * stride_xh, mask=mask_rows[:, None], other=0.0)
            w = tl.load(w_base + kk[:, None] * stride_wh, mask=mask_cols[None, :], other=0.0)
        else:
            x = tl.load(x_base + kk[None, :] * stride_xh, mask=mask_rows[:, None] & (kk[None, :] < H), other=0.0)
            w = tl.load(w_base + kk[:, None] * stride_wh, mask=mask_cols[None, :] & (kk[:, None] < H), other=0.0)
        acc = dot_acc(x, w, acc, DOT_PRECISION)
    return acc


@triton.jit
def labelled_row_block(Rows, Labels, count, pid_m, BLOCK_M: tl.constexpr):
    """Block pid_m of the labelled rows: (offsets, mask, hidden-row indices, labels), inlined by Triton."""
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < count
    rows = tl.load(Rows + offs_m, mask=mask_m, other=0).to(tl.int64)
    labels = tl.load(Labels + offs_m, mask=mask_m, other=-1)
    return offs_m, mask_m, rows, labels


def tile_configs(cuda_tiles, interpret_tile):
    """`triton.Config`s from (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) tuples.

    The interpreter runs one small tile: it has no performance to tune and small blocks keep the CPU tests fast.
    """
    tiles = [interpret_tile] if INTERPRET else cuda_tiles
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
            for m, n, k, w, s in tiles]


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get full-precision dots: TF32 would leave ~1e-3 error, far above what torch fp32 reaches."""
    return "ieee" if dtype == torch.float32 else "tf32"


def num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count
