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
