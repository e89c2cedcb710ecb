"""Where this process runs in a (torchrun) run: its rank, the world size and its device.

``torchrun --nproc_per_node=2 -m kit train ...`` starts one process per GPU; each joins the process group
here (NCCL on GPUs, gloo on CPU). Without torchrun there is one process and no group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..device import resolve as resolve_device
from ..errors import ConfigError


@dataclass
class Dist:
    """This process's place in a (torchrun) run; world=1 without torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # this module initialised the process group (and tears it down)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init_distributed(device: str = "auto") -> Dist:
    """Read torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK) and join the process group: NCCL when the
    processes use GPUs, gloo on CPU. One GPU per process (cuda:LOCAL_RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    cuda = resolve_device(device).type == "cuda"
    if cuda:
        if world > 1 and local >= torch.cuda.device_count():
            raise ConfigError(f"{world} processes but {torch.cuda.device_count()} GPU(s): run torchrun with "
                              f"--nproc_per_node={torch.cuda.device_count()}")
        dev = torch.device(f"cuda:{local}" if world > 1 or device == "auto" else device)
        if dev.index is not None:
            torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        owns = True
    rank = dist.get_rank() if world > 1 else 0
    return Dist(rank, world, local, dev, owns)
