"""Data-parallel runs over processes started by torchrun (gloo backend, so CPU works).

``torchrun --nproc_per_node=P -m normbench batch_size=B ...`` trains one run on P processes: every
optimisation batch of B samples is split across them (B/P per process), gradients are averaged by
DistributedDataParallel, and a norm sees only its process's samples unless it synchronizes
(``norm=sync_batchnorm``). That is the setting "small per-device batch, large global batch" of
Wu & He 2018 and Wu & Johnson 2021. Process 0 evaluates and writes the record.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    """The process group torchrun describes in the environment (joined here), or a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return World(dist.get_rank(), dist.get_world_size())


def shard(batches: Iterator[Tensor], world: World) -> Iterator[Tensor]:
    """This process's share of every global batch (all processes draw the same global batches)."""
    if world.size == 1:
        return batches  # nothing to split: no extra work per step
    return (idx[world.rank :: world.size] for idx in batches)


def parallel(model: nn.Module, world: World) -> nn.Module:
    return nn.parallel.DistributedDataParallel(model) if world.size > 1 else model


def all_finite(losses: Tensor, world: World) -> bool:
    """Are the losses finite on every process? (All must agree to stop together.)"""
    if world.size == 1:
        return bool(torch.isfinite(losses).all())
    finite = torch.isfinite(losses.detach()).all().to(torch.float32).reshape(1)
    dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


def finish(world: World) -> None:
    """Wait for every process, then leave the group (a torn-down peer aborts gloo's threads)."""
    if world.size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
