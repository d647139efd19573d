"""Forward of the LM half: per labelled row, log-sum-exp and target logit of `hidden @ W.T`; logits never stored.

Grid: (row tiles over all T rows, SPLIT_V vocab ranges). A program owns BLOCK_M labelled rows and one vocab range,
walks it BLOCK_N columns at a time (each tile a full-H `tl.dot`, fp32 accumulator) and keeps an online max / sum-exp
in fp32. Splitting V keeps the GPU full when few rows are labelled; the row index runs fastest in the launch order,
so programs running together read the same W tiles and W streams from HBM about once. The SPLIT_V partial LSEs are
merged with one `logsumexp` over a [SPLIT_V, T] buffer.
"""
import torch
import triton
import triton.language as tl

from .tuning import dot_precision, labelled_row_block, logits_tile, num_sms, tile_configs

# (BLOCK_M rows, BLOCK_N vocab, BLOCK_K hidden, warps, stages)
_CUDA_TILES = [(128, 128, 64, 8, 4), (128, 256, 64, 8, 3), (256, 128, 64, 8, 3)]
_INTERPRET_TILE = (16, 32, 16, 1, 1)


@triton.autotune(configs=tile_configs(_CUDA_TILES, _INTERPRET_TILE), key=["H", "V", "SPLIT_V"])
@triton.heuristics({"EVEN_K": lambda a: a["H"] % a["BLOCK_K"] == 0})
@triton.jit
def _lm_lse_fwd_kernel(X, W, Rows, Count, Labels, PartLse, PartTgt, T, V, H,
                       stride_xt, stride_xh, stride_wv, stride_wh,
                       SPLIT_V: tl.constexpr, DOT_PRECISION: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    count = tl.load(Count)
    if pid_m * BLOCK_M >= count:
        return
    offs_m, mask_m, rows, labels = labelled_row_block(Rows, Labels, count, pid_m, BLOCK_M)

    tiles_per_split = tl.cdiv(tl.cdiv(V, BLOCK_N), SPLIT_V)
    v_begin = pid_s * tiles_per_split * BLOCK_N
    v_end = tl.minimum(v_begin + tiles_per_split * BLOCK_N, V)

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    s_i = tl.zeros((BLOCK_M,), tl.float32)
    tgt = tl.zeros((BLOCK_M,), tl.float32)
    x_base = X + rows[:, None] * stride_xt
    for v0 in range(v_begin, v_end, BLOCK_N):
        offs_v = v0 + tl.arange(0, BLOCK_N)
        mask_v = offs_v < v_end
        w_base = W + offs_v[None, :].to(tl.int64) * stride_wv
        acc = logits_tile(x_base, w_base, mask_m, mask_v, H, stride_xh, stride_wh, DOT_PRECISION,
                          BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K)
        acc = tl.where(mask_v[None, :], acc, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(acc, 1))
        s_i = s_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(acc - m_new[:, None]), 1)
        m_i = m_new
        tgt += tl.sum(tl.where(offs_v[None, :] == labels[:, None], acc, 0.0), 1)

    # An empty range (more splits than tiles) leaves m_i = -inf, s_i = 0: log(0) = -inf is the right partial LSE.
    tl.store(PartLse + pid_s * T + offs_m, m_i + tl.log(s_i), mask=mask_m)
    tl.store(PartTgt + pid_s * T + offs_m, tgt, mask=mask_m)


def _split_v(T: int, V: int, device: torch.device) -> int:
    """Vocab ranges per row tile: enough programs for ~2 waves even if only one row tile (128 rows) is labelled.

    The labelled count is unknown on the host, so this is sized for the small case; more splits cost only the
    [SPLIT_V, T] partial buffers, since every program streams its own W tiles anyway.
    """
    return max(1, min(64, triton.cdiv(V, 1024), 2 * num_sms(device)))


def lm_lse_forward(hidden: torch.Tensor, weight: torch.Tensor, rows: torch.Tensor, count: torch.Tensor,
                   labels_sel: torch.Tensor, *, split_v: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(lse [T] fp32, target_logit [T] fp32) for the first `count` entries of `rows`; entries past count are undefined.

    hidden [T, H], weight [V, H] (any strides), rows [T] (labelled row indices first), count int32 [1] on device,
    labels_sel [T] (labels in `rows` order). `split_v` overrides the number of vocab ranges (tests use it).
    """
    T, H = hidden.shape
    V = weight.shape[0]
    split = split_v or _split_v(T, V, hidden.device)
    part_lse = torch.empty((split, T), device=hidden.device, dtype=torch.float32)
    part_tgt = torch.empty((split, T), device=hidden.device, dtype=torch.float32)
    if T > 0:
        grid = lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), split)  # noqa: E731
        _lm_lse_fwd_kernel[grid](hidden, weight, rows, count, labels_sel, part_lse, part_tgt, T, V, H,
                                 hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
                                 SPLIT_V=split, DOT_PRECISION=dot_precision(hidden.dtype))
    return torch.logsumexp(part_lse, dim=0), part_tgt.sum(dim=0)
