"""Data-parallel training under ``torchrun``: process group, batch shares, collectives.

``torchrun --nproc-per-node N -m guidegen train …`` starts N processes and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in their environment; `init_distributed`
reads them and joins the process group (gloo on the CPU, NCCL on CUDA, one GPU per local rank).
Without those variables (a plain ``python``/``guidegen`` call) it returns a single-process context
and creates no process group: every helper here is then a no-op, so the trainers run one code path.

How a global batch is split (`batch_shares`): the optimizer step of both trainers sees
``batch_size`` examples (positions ``0 … batch_size − 1``). Rank r takes the contiguous block
``shard_indices(range(batch_size), r, world)`` and processes it in ``grad_accumulation`` equal
micro-batches. Each trainer draws the step's randomness for the *whole* global batch from the
step's generators and keeps its own positions, so the union over ranks and micro-batches is
exactly what one process draws: the result does not depend on the number of processes or
micro-batches (up to floating-point summation order).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistContext",
    "all_reduce_sum",
    "all_reduce_mean",
    "barrier",
    "batch_shares",
    "broadcast_object",
    "cleanup",
    "init_distributed",
    "no_sync",
    "shard_indices",
    "wrap_ddp",
]

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly single-process) training job.

    Attributes:
        rank: global rank (0 in a single process).
        world_size: number of processes (1 in a single process).
        local_rank: rank on this machine (its GPU index on CUDA).
        device: the device this process trains on.
        owns_group: true when `init_distributed` created the process group (and `cleanup` ends it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, logs and the final model."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def init_distributed(device: str | torch.device = "cpu") -> DistContext:
    """Join the torchrun process group if there is one; else a single-process context.

    Args:
        device: "cpu", "cuda" or "cuda:i". Under torchrun, "cuda" becomes ``cuda:LOCAL_RANK``.

    A process group that already exists (initialised by the caller) is used as it is and left
    to the caller to destroy.
    """
    dev = torch.device(device)
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = _env_int("LOCAL_RANK", rank)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local)
        return DistContext(rank, world, local, dev, owns_group=False)
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistContext(device=dev)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl", rank=rank, world_size=world, device_id=dev)
    else:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    return DistContext(rank, world, local, dev, owns_group=True)


def cleanup(ctx: DistContext) -> None:
    """Destroy the process group `init_distributed` created (nothing otherwise)."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def shard_indices(indices: Sequence[T], rank: int, world: int) -> list[T]:
    """Rank ``rank``'s contiguous block of ``indices`` (blocks differ in size by at most one)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}")
    n = len(indices)
    return list(indices[rank * n // world : (rank + 1) * n // world])


def batch_shares(batch_size: int, ctx: DistContext, grad_accumulation: int = 1) -> list[list[int]]:
    """Positions in the global batch that this rank processes, one list per micro-batch.

    Raises:
        ValueError: when ``batch_size`` is not a multiple of ``world_size × grad_accumulation``
            (equal micro-batches keep every example's weight in the loss the same).
    """
    parts = ctx.world_size * grad_accumulation
    if grad_accumulation < 1 or batch_size % parts:
        raise ValueError(
            f"batch_size={batch_size} must be a multiple of processes ({ctx.world_size}) × "
            f"grad_accumulation ({grad_accumulation}) = {parts}"
        )
    mine = shard_indices(list(range(batch_size)), ctx.rank, ctx.world_size)
    return [shard_indices(mine, j, grad_accumulation) for j in range(grad_accumulation)]


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum of ``values`` over the ranks (``values`` itself in a single process)."""
    if not ctx.distributed:
        return values
    out = values.detach().clone().to(ctx.device)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(values.device)


def all_reduce_mean(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean of ``values`` over the ranks."""
    if not ctx.distributed:
        return values
    return all_reduce_sum(values, ctx) / ctx.world_size


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        if ctx.device.type == "cuda":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    if not ctx.distributed:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0, device=ctx.device if ctx.device.type == "cuda" else None)
    return box[0]


def wrap_ddp(module: nn.Module, ctx: DistContext, find_unused_parameters: bool = False) -> nn.Module:
    """``DistributedDataParallel(module)`` when there are several ranks, else ``module``.

    DDP broadcasts rank 0's parameters and buffers on construction and averages the gradients
    over the ranks during ``backward``. ``find_unused_parameters`` is needed when some parameters
    take part in the loss only for some batches; a parameter that no rank used keeps no gradient
    (``None``), as in a single process, so the optimizer skips it there too.
    """
    if not ctx.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    # 1×1×1 convolutions under autocast get gradients whose strides differ from the weights' only
    # along dimensions of size 1: same memory layout, so DDP's warning about it is spurious.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(
        module, device_ids=ids, output_device=ids[0] if ids else None, find_unused_parameters=find_unused_parameters
    )


def no_sync(module: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Skip DDP's gradient all-reduce for this backward unless ``sync`` (accumulation micro-steps)."""
    if sync or not hasattr(module, "no_sync"):
        return contextlib.nullcontext()
    return module.no_sync()
