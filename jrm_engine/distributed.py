"""Many-process training under `torchrun`: the process group, the DDP / FSDP2 wrappers, and the few collectives
the trainer needs to make N processes compute exactly what one process computes.

Without a launcher the run is world size 1 with no process group and every helper here is a no-op, so one process
runs the same trainer code path as N. Under torchrun (RANK / WORLD_SIZE / LOCAL_RANK set) the backend is NCCL on
CUDA and gloo on the CPU.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

PARALLEL_MODES = ("auto", "ddp", "fsdp", "none")
# AdamW in fp32 holds the parameter, its gradient and two moments: 16 bytes per parameter on every DDP rank.
DDP_BYTES_PER_PARAM = 16
# `auto` picks DDP while that replicated state fits in this share of one GPU (activations need the rest).
DDP_MEMORY_SHARE = 0.5
LAUNCH_HINT = ("torchrun --nproc-per-node N -m jrm_engine.train --parallel {mode} ... "
               "(torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; this process has none of them)")


def launched() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


@dataclass(frozen=True)
class Dist:
    """This process's place in the job. `device` is where the collectives' tensors live (NCCL needs CUDA)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    active: bool = False  # a process group exists

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks, in float64 so that counts and loss sums add exactly."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def all_gather_object(self, obj) -> list:
        if not self.active:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def init(parallel: str, device: torch.device, timeout_s: float = 1800.0) -> tuple[Dist, torch.device]:
    """Join the torchrun job if there is one; returns (Dist, this rank's compute device)."""
    if parallel not in PARALLEL_MODES:
        raise ValueError(f"--parallel must be one of {PARALLEL_MODES}, got {parallel!r}")
    if not launched():
        if parallel in ("ddp", "fsdp"):
            raise ValueError(f"--parallel {parallel} needs a distributed launch: "
                             + LAUNCH_HINT.format(mode=parallel))
        return Dist(device=device), device
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if parallel == "none" and world > 1:
        raise ValueError(f"--parallel none trains in one process, but torchrun started WORLD_SIZE={world}; "
                         "use --parallel ddp, fsdp or auto")
    if device.type == "cuda":
        # One GPU per process: local rank i drives cuda:i of its node.
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                            device_id=device if device.type == "cuda" else None)
    return Dist(rank, world, local, device, True), device


def shutdown(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.destroy_process_group()


def check_same_config(d: Dist, config: dict) -> None:
    """Every rank must train the same job: a rank launched with another --config/--set would silently train a
    different model. Raises on every rank (so none is left waiting in a collective), naming ranks and keys."""
    configs = d.all_gather_object(config)
    reference = _flatten(configs[0])
    for rank, other in enumerate(configs[1:], start=1):
        flat = _flatten(other)
        diff = sorted(k for k in reference.keys() | flat.keys() if reference.get(k) != flat.get(k))
        if diff:
            shown = ", ".join(f"{k}: rank 0 has {reference.get(k)!r}, rank {rank} has {flat.get(k)!r}"
                              for k in diff[:5])
            raise ValueError(f"the config differs between ranks ({shown}); launch every rank with the same "
                             "--preset, --config and --set arguments")


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[prefix + k] = v
    return flat


def choose_parallel(parallel: str, d: Dist, model: nn.Module, device: torch.device) -> tuple[str, str]:
    """The wrapper to use and why (the trainer logs the reason)."""
    if parallel != "auto":
        return parallel, "as asked by --parallel"
    if d.world_size == 1:
        return "none", "one process"
    if device.type != "cuda":
        return "ddp", "on the CPU every rank holds the whole model"
    params = sum(p.numel() for p in model.parameters())
    need = DDP_BYTES_PER_PARAM * params
    have = torch.cuda.get_device_properties(device).total_memory
    if need <= DDP_MEMORY_SHARE * have:
        return "ddp", (f"{params / 1e6:.0f}M parameters need ~{need / 2**30:.1f} GiB of weights, gradients and "
                       f"AdamW state per GPU, within {DDP_MEMORY_SHARE:.0%} of {have / 2**30:.0f} GiB")
    return "fsdp", (f"{params / 1e6:.0f}M parameters need ~{need / 2**30:.1f} GiB per GPU replicated, over "
                    f"{DDP_MEMORY_SHARE:.0%} of {have / 2**30:.0f} GiB: sharding them")


def block_modules(root: nn.Module) -> list[nn.Module]:
    """The decoder layers and vision blocks: the classes Hugging Face names in `_no_split_modules`, which is the
    unit accelerate's FSDP auto-wrap uses too (Qwen2-VL, Qwen2.5-VL and Qwen3-VL all declare theirs)."""
    names: set[str] = set()
    for m in root.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    blocks = [m for m in root.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"--parallel fsdp: found no decoder/vision blocks to shard (no module of the classes "
                         f"{sorted(names)} named by _no_split_modules)")
    return blocks


def wrap(root: nn.Module, mode: str, d: Dist, device: torch.device, bf16: bool) -> nn.Module:
    """Returns the module to call for training forwards. DDP returns a wrapper around `root`; FSDP2 shards `root`
    in place (its parameters become DTensors), so build the optimizer after this call."""
    if mode == "none":
        return root
    if not d.active:
        raise ValueError(f"--parallel {mode} needs a distributed launch: " + LAUNCH_HINT.format(mode=mode))
    if mode == "ddp":
        # The only buffers are rotary inverse frequencies, equal on every rank: broadcasting them would cost one
        # collective per forward for nothing.
        return nn.parallel.DistributedDataParallel(root, device_ids=[device.index] if device.type == "cuda"
                                                   else None, broadcast_buffers=False)
    if mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(device.type, (d.world_size,))
        # bf16 compute with fp32 gradient reduction, on CUDA only: the CPU tests compare fp32 against one process.
        mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if device.type == "cuda" and bf16 else MixedPrecisionPolicy())
        for block in block_modules(root):
            fully_shard(block, mesh=mesh, mp_policy=mp)
        # The root group holds the rest, the tied embedding / LM head among it: the joint loss reads that weight
        # inside the root's forward, where FSDP2 has gathered it whole.
        fully_shard(root, mesh=mesh, mp_policy=mp)
        return root
    raise ValueError(f"--parallel must be one of {PARALLEL_MODES}, got {mode!r}")


def set_gradient_sync(wrapped: nn.Module, mode: str, sync: bool):
    """Context for one micro-batch's backward: gradients are reduced across ranks only on the last micro-batch of
    an optimizer step (accumulation micro-batches keep local gradients)."""
    if mode == "ddp" and not sync:
        return wrapped.no_sync()
    if mode == "fsdp":
        wrapped.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def full_tensor(x: torch.Tensor) -> torch.Tensor:
    """A DTensor (FSDP2's sharded parameters, their gradient norm) as a plain tensor; plain tensors unchanged."""
    from torch.distributed.tensor import DTensor

    return x.full_tensor() if isinstance(x, DTensor) else x


@torch.no_grad()
def broadcast_module(module: nn.Module, d: Dist) -> None:
    """Give every rank rank 0's weights. Parts of initialisation draw from each process's RNG (the reward head, a
    resized embedding row, rank 0 alone building the tiny backbone), and FSDP2, unlike DDP, shards whatever each
    rank holds without broadcasting it first."""
    if not d.active:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


def clip_grad_norm(parameters, max_norm: float) -> float:
    """`torch.nn.utils.clip_grad_norm_` that also takes FSDP2's sharded gradients: their norm is a DTensor, made
    whole (one all-reduce) before clipping. Returns the total norm before clipping."""
    params = [p for p in parameters if p.grad is not None]
    total = full_tensor(torch.nn.utils.get_total_norm([p.grad for p in params]))
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)


def local_state_bytes(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of parameters and optimizer state this rank holds (its shards under FSDP2, everything under DDP);
    gradients add as many bytes as the parameters while a step runs."""
    params = sum(local_part(p).nbytes for p in module.parameters())
    state = sum(local_part(v).nbytes for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    return {"param_bytes_per_rank": params, "optimizer_bytes_per_rank": state}


def local_part(x: torch.Tensor) -> torch.Tensor:
    """This rank's part of a DTensor (its shard); a plain tensor as it is."""
    from torch.distributed.tensor import DTensor

    return x.to_local() if isinstance(x, DTensor) else x
