"""Training under torchrun: the process group, DDP wrapping, sharding and metric reduction.

Scaling out uses PyTorch's own engine (torch.distributed + DistributedDataParallel), never a
home-made multiprocess loop. Without torchrun's environment everything here is a no-op, so
the single-process path stays exactly as it was.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def env_rank() -> int:
    """This process's rank as torchrun set it (0 when not under torchrun)."""
    return int(os.environ.get("RANK", "0"))


def init_from_env(timeout_s: int = 300) -> Dist:
    """Join the process group that torchrun describes in the environment, if any.

    gloo on the CPU, nccl when CUDA is available. The timeout bounds how long a rank waits
    for a peer that died, so a failed run cannot hang for the default 30 minutes.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) < 2:
        return Dist()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=_dt.timedelta(seconds=timeout_s))
    return Dist(dist.get_rank(), dist.get_world_size())


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


class MultiLevel(nn.Module):
    """Every requested level in one forward call, so that DDP sees one forward and one
    backward per step however many levels, consistency and distillation terms it holds."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, levels: list):  # widths, or a Spec (schedule mix)
        return [(d, *self.model(x, level=d, return_hidden=True)) for d in levels]


def wrap(model: nn.Module, d: Dist, schedule: str) -> nn.Module:
    """MultiLevel(model), inside DDP when distributed.

    `joint` (and `mix`, joint plus a sub-model) runs every level every step, so every
    parameter gets a gradient and DDP can skip the search for unused parameters. `sampled`
    and `progressive` steps leave whole tensors unused (the LayerNorm parameters of the
    levels not run), so DDP must look for them:
    find_unused_parameters=True. The level drawn by `sampled` comes from an rng seeded alike
    on every rank, so all ranks run the same level in the same step.
    """
    wrapped = MultiLevel(model)
    if not d.enabled:
        return wrapped
    unused = schedule not in ("joint", "mix")
    return nn.parallel.DistributedDataParallel(wrapped, find_unused_parameters=unused)


def all_reduce_sum(values: list[float], d: Dist) -> list[float]:
    """Sum a few floats over ranks (identity when not distributed)."""
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()
