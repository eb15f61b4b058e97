"""One process or many (torch DDP): the process context, its device and global batches."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from discover._utils import resolve_device
from discover.errors import InputError

__all__ = [
    "DistContext",
    "GlobalBatchSampler",
    "all_finite",
    "init_distributed",
    "local_device",
    "unwrap",
]


@dataclass
class DistContext:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group that ``torchrun`` set up (``WORLD_SIZE`` > 1), else a lone process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    )


def local_device(spec: str) -> torch.device:
    """The device of ``spec``; a bare ``cuda`` under ``torchrun`` is this process's GPU."""
    device = resolve_device(spec)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_finite(loss: torch.Tensor, ctx: DistContext) -> bool:
    """Whether the loss is finite on every process (all of them stop together)."""
    finite = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
    if ctx.world > 1:
        finite = finite.cpu() if dist.get_backend() == "gloo" else finite
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


class GlobalBatchSampler:
    """Shuffled global batches, each split evenly across processes.

    The order depends only on ``(seed, epoch)``, so one process with global batch B and
    N processes with B / N each see the same samples in every step, and a resumed run can
    skip the batches it already trained on.
    """

    def __init__(
        self,
        size: int,
        global_batch: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        if global_batch % world:
            raise InputError(
                f"batch_size {global_batch} must be divisible by the number of processes ({world})"
            )
        if drop_last and size < global_batch:
            raise InputError(
                f"the training set has {size} images, fewer than one batch of "
                f"{global_batch}; lower batch_size"
            )
        self.size, self.global_batch, self.seed = size, global_batch, seed
        self.rank, self.world, self.shuffle, self.drop_last = rank, world, shuffle, drop_last
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and skip its first ``start`` batches."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        full = self.size // self.global_batch
        return full if self.drop_last else math.ceil(self.size / self.global_batch)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        per_rank = self.global_batch // self.world
        for step in range(self.start, len(self)):
            batch = order[step * self.global_batch : (step + 1) * self.global_batch]
            if self.world > 1:
                per_rank = math.ceil(len(batch) / self.world)
            yield batch[self.rank * per_rank : (self.rank + 1) * per_rank]
