"""The process runtime of training and adaptation: torchrun / DistributedDataParallel glue and GPU precision.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), :func:`setup`
joins the process group (NCCL on CUDA, gloo on CPU) and gives each process its
GPU (``cuda:LOCAL_RANK``); otherwise it changes nothing and every helper here
is a no-op. Conventions every caller keeps:

- each rank reads its own shard of the data (:func:`bigl.data.slices.shard`) with its own seed;
- networks that train are wrapped with :func:`wrap`; anything that runs a network on one rank only
  (validation, selection scores) or with its weights frozen calls :func:`unwrap` of it, because a
  DDP forward takes part in collective operations the other ranks would not join;
- rank 0 alone validates and writes files; the others wait at :func:`barrier`, and any decision
  they must share comes from rank 0 through :func:`broadcast`.

Precision (:class:`Precision`): on CUDA, autocast to bfloat16 where the GPU
supports it, else float16 with a gradient scaler; cuDNN autotuning on. On the
CPU, full float32, as before.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """Where this process stands in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def current() -> Dist:
    """This process's place in the process group :func:`setup` joined (rank 0 of 1 outside torchrun)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Dist()
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """(this process's place, its device). Joins the process group on the first call under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local), device


def shutdown(wait: bool = True) -> None:
    """Leave the process group (end of a torchrun command); nothing without one.

    With ``wait`` (a rank that finished its work) every rank first waits for the others: one
    that tore its gloo connections down while another was still finishing aborted that one
    (a CI run ended in SIGABRT). A rank leaving on an error does not wait: the others may never come.
    """
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def wrap(module: nn.Module, d: Dist) -> nn.Module:
    """``module`` under DistributedDataParallel in a torchrun job (its weights broadcast from rank 0), else itself."""
    if not d.active:
        return module
    device = next(module.parameters()).device
    return nn.parallel.DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def unwrap(module: nn.Module) -> nn.Module:
    """The network inside a DDP wrapper (for frozen or single-rank use), or ``module`` itself."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def sync_buffers(module: nn.Module, d: Dist) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics) of ``module``.

    DDP keeps parameters identical and copies rank 0's buffers at each forward; the
    statistics of the last forward differ between ranks until this is called.
    """
    if d.active:
        for b in module.buffers():
            dist.broadcast(b, src=0)


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def broadcast(value: T, d: Dist) -> T:
    """Rank 0's ``value`` on every rank (a picklable object)."""
    if not d.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def autocast_dtype(device_type: str, bf16_supported: bool) -> torch.dtype | None:
    """The autocast dtype: None (full precision) off CUDA, bfloat16 where supported, else float16."""
    if device_type != "cuda":
        return None
    return torch.bfloat16 if bf16_supported else torch.float16


@functools.cache
def precision(device: torch.device) -> Precision:
    """The process-wide :class:`Precision` of ``device`` (one gradient scaler per device), for step functions."""
    return Precision(device)


class Precision:
    """Mixed precision for one run on ``device``: ``with p.autocast():`` forwards, ``p.backward``/``p.step``/``p.update``.

    float16 needs a gradient scaler (one for all optimisers of a step; ``update`` once per step);
    bfloat16 and float32 do not, and then these are plain ``backward()``/``step()``.
    """

    def __init__(self, device: torch.device) -> None:
        cuda = device.type == "cuda"
        self.dtype = autocast_dtype(device.type, cuda and torch.cuda.is_bf16_supported())
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None
        if cuda:
            torch.backends.cudnn.benchmark = True   # fixed window sizes: autotuned convolutions pay off

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast("cuda", dtype=self.dtype) if self.dtype is not None else contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self.scaler.step(optimizer) if self.scaler is not None else optimizer.step()

    def update(self) -> None:
        if self.scaler is not None:
            self.scaler.update()
