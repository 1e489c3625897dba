"""Multi-process training under torchrun: detect the environment, join the process group
(gloo on CPU, nccl on GPU), and the few collectives the loop needs.

    torchrun --nproc_per_node=K -m animegen train ...            # one node
    torchrun --nnodes=N --node_rank=i --rdzv-endpoint=HOST:PORT \\
             --nproc_per_node=K -m animegen train ...            # several nodes

Rank 0 alone logs, writes samples, computes FID snapshots and writes checkpoints (the
other ranks wait, under a 6-hour collective timeout); every rank loads the same
checkpoint on --resume.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from animegen.devices import resolve_device
from animegen.training.objective import TrainContext


def setup(device_choice: str) -> TrainContext:
    """This process's context; joins the process group when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_choice, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size == 1:
        return TrainContext(device)
    if not dist.is_initialized():  # a caller that set up the group itself keeps it
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
        _owned_groups.append(True)
    return TrainContext(device, rank=dist.get_rank(), world_size=world_size)


_owned_groups: list[bool] = []
# FID snapshots and grids run on rank 0 alone while the others wait at the checkpoint's
# collectives; a long snapshot (minutes on a CPU, 50k images on a GPU) must not time them out
# (NCCL's default is 10 minutes).
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=6)


def teardown(ctx: TrainContext) -> None:
    if _owned_groups and dist.is_initialized():
        _owned_groups.pop()
        dist.destroy_process_group()


def barrier(ctx: TrainContext) -> None:
    if ctx.distributed:
        dist.barrier()


def mean_over_ranks(ctx: TrainContext, values: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of a 1-D float tensor over ranks."""
    if not ctx.distributed:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / ctx.world_size


def average_buffers(ctx: TrainContext, modules) -> None:
    """Float buffers averaged over ranks, the others taken from rank 0. The buffers a step
    updates are running averages linear in a batch statistic (StyleGAN's w_avg, StyleGAN3's
    magnitude EMAs, BatchNorm's running mean), so the average of the ranks' updates is the
    update one process makes from the whole batch. (BatchNorm's running variance is the
    exception: it averages per-rank variances.)"""
    if ctx.distributed:
        for module in modules:
            for buffer in module.buffers():
                reference = buffer.clone()
                dist.broadcast(reference, 0)
                if buffer.is_floating_point():
                    # rank 0's value plus the mean difference: a buffer equal on every rank (a
                    # filter, constant noise) stays exactly as it is, whatever the rank count
                    delta = buffer - reference
                    dist.all_reduce(delta)
                    reference += delta / ctx.world_size
                buffer.copy_(reference)


def check_in_sync(ctx: TrainContext, modules) -> None:
    """Raise if any rank's parameters differ from rank 0's (per-tensor sums of values and of
    squares, exact for identical tensors, compared across ranks)."""
    if not ctx.distributed:
        return
    params = [p.detach().double() for m in modules for p in m.parameters()]
    signature = torch.stack([torch.stack([p.sum(), p.square().sum()]) for p in params]).flatten()
    gathered = [torch.empty_like(signature) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, signature)
    for rank, other in enumerate(gathered):
        if not torch.equal(other, gathered[0]):
            raise RuntimeError(f"rank {rank}'s parameters differ from rank 0's; the processes are out of sync.")
