"""torchrun support: process groups, samplers that resume mid-epoch, and gathering results once."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ..errors import DataError
from ..seeds import DEFAULT_SEED


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes in the environment (NCCL on GPUs, bound to this
    process's GPU; gloo on CPUs)."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if "RANK" not in os.environ or dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank) if dist.is_initialized() else DistInfo()
    if device.type == "cuda":
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    else:
        dist.init_process_group("gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def close_distributed(wait: bool = False) -> None:
    """Leave the process group (every rank, at the end of a command that joined it); with `wait`, only
    once every rank has come here."""
    if dist.is_available() and dist.is_initialized():  # a torch built without distributed has no groups
        if wait and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Every rank waits here, e.g. until rank 0 has written a checkpoint."""
    if info.world > 1:
        dist.barrier()


class ResumableSampler(Sampler[int]):
    """Shuffled indices per epoch (seeded by seed and epoch), split across ranks like
    DistributedSampler with drop_last, and able to start at a batch inside the epoch."""

    def __init__(self, size: int, batch_size: int, info: DistInfo, seed: int = DEFAULT_SEED, shuffle: bool = True):
        self.size, self.batch_size, self.info, self.seed, self.shuffle = size, batch_size, info, seed, shuffle
        self.epoch, self.start_batch = 0, 0
        per_rank = size // info.world
        self.num_batches = per_rank // batch_size
        if self.num_batches == 0:
            raise DataError(f"{size} training samples are too few for batch {batch_size} x {info.world} processes")

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        mine = order[self.info.rank::self.info.world][: self.num_batches * self.batch_size]
        return iter(mine[self.start_batch * self.batch_size:])

    def __len__(self) -> int:
        return (self.num_batches - self.start_batch) * self.batch_size


class ShardSampler(Sampler[int]):
    """Evaluation shards without padding: every sample is seen by exactly one rank, exactly once."""

    def __init__(self, size: int, info: DistInfo):
        self.indices = list(range(info.rank, size, info.world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def gather_tensor(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """(world, *t.shape): every rank's `t`, in rank order, in one collective; (1, *t.shape) alone."""
    if info.world == 1:
        return t[None]
    parts = [torch.empty_like(t) for _ in range(info.world)]
    dist.all_gather(parts, t)
    return torch.stack(parts)


def gather_objects(obj, info: DistInfo) -> list:
    if info.world == 1:
        return [obj]
    out = [None] * info.world
    dist.all_gather_object(out, obj)
    return out
