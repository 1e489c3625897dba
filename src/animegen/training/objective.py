"""The Objective contract: how one family's Model is trained.

The training loop (animegen.training.loop) is the same for every family. It owns the
data order, EMA, logging, snapshots and checkpoints, and calls one method of the
family's Objective per step:

    losses = objective.train_step(real, step)

Implementers subclass `Objective` and provide:

    config_class        the family's hyperparameter dataclass (learning rates, betas,
                        loss weights...). Its field names share one flat namespace with
                        the model config and animegen.training.config.TrainConfig, so
                        `--set lr=...` is unambiguous; the registry test checks this.
    __init__(model, config, ctx)
                        call `super().__init__(model, config, ctx)` first, then build
                        auxiliary networks with `self.add_net(name, module)` (they are
                        moved to ctx.device and checkpointed) and optimizers with
                        `self.add_optimizer(name, optimizer)` (checkpointed). Building must
                        not draw random numbers except through torch's global generator,
                        which the loop seeds identically on every rank.
    train_step(real, step) -> dict[str, Tensor]
                        one optimisation step on this rank's share of the global batch.
                        `real` is float32 N x 3 x R x R in [-1, 1] on ctx.device. Rules:
                          * draw all randomness with self.randn / self.rand / self.randint
                            (from `self.draws`, a generator identical on every rank and saved
                            in checkpoints; the global batch is drawn and this rank keeps its
                            strided share, images r, r + K, ...: a K-rank run with global
                            batch B sees the same numbers as a 1-rank run with B). Randomness
                            inside modules (dropout) comes from torch's global generator,
                            which the loop seeds from (seed, rank, step) before every step;
                          * run forward passes inside `with self.autocast():` (bf16 autocast
                            under precision bf16, the default on CUDA; a no-op under fp32), and
                            compute losses, penalties and statistics from `.float()` values;
                          * update with `self.optimize(name, loss)` (zero grad, backward,
                            average gradients across ranks, optional clipping, step), never
                            opt.step() directly;
                          * return detached scalar tensors; the loop averages them across
                            ranks, logs them, and stops the run if any is NaN or Inf.
    compiled_modules() -> list[nn.Module]
                        optional: the modules whose forward `compile=true` compiles (default:
                        the Model and every added net); see `compile`.
    extra_state() / load_extra_state(state)
                        optional: JSON-able non-tensor state (tensors belong in buffers of
                        a net added with add_net, which are checkpointed already).
    resolved_settings(batch) -> dict
                        optional: the values the objective uses for config fields left
                        None that it fills by a rule (StyleGAN's r1_gamma), for --dry-run.

Distributed training does not wrap modules in DistributedDataParallel: `optimize`
all-reduces the gradients of the parameters it steps (one flat buffer), and the loop
averages float buffers (running statistics) over the ranks after every step. This keeps
alternating updates (GAN generator/discriminator steps, lazy regularizers) free of
DDP's unused-parameter and double-forward restrictions.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from animegen.models.base import Model


@dataclass(frozen=True)
class TrainContext:
    """Where and how this process trains: its device, its place among the ranks, and the
    precision of its training steps (TrainConfig.precision)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    precision: str = "auto"  # "bf16", "fp32", or "auto": bf16 on CUDA, fp32 elsewhere

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """bf16 under precision "bf16" (and "auto" on CUDA); None: full fp32."""
        bf16 = self.precision == "bf16" or (self.precision == "auto" and self.device.type == "cuda")
        return torch.bfloat16 if bf16 else None


class Objective:
    """Base class of every family's training objective; see the module docstring."""

    config_class: ClassVar[type]

    def __init__(self, model: Model, config, ctx: TrainContext):
        self.model = model
        self.config = config
        self.ctx = ctx
        self.nets: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.draws = torch.Generator()  # seeded by the training loop

    # ------------------------------------------------------------ for implementers
    def add_net(self, name: str, net: nn.Module) -> nn.Module:
        self.nets[name] = net.to(self.ctx.device)
        return self.nets[name]

    def add_optimizer(self, name: str, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        self.optimizers[name] = optimizer
        return optimizer

    def resolved_settings(self, batch: int) -> dict:
        """Settings of the objective config left unset (None) that it fills with a rule of its
        own, as it uses them at global batch `batch` (`train --dry-run` shows these); none by default."""
        return {}

    def autocast(self):
        dtype = self.ctx.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=dtype)

    def compiled_modules(self) -> list[nn.Module]:
        return [self.model, *self.nets.values()]

    def channels_last_modules(self) -> list[nn.Module]:
        """The modules whose convolutions run faster on NHWC weights (measured per family in
        benchmarks/train_step.py); the Model and every added net by default."""
        return [self.model, *self.nets.values()]

    def prepare(self, compile: bool = False) -> None:
        """Once the nets exist, before the first step: NHWC weights where that is faster,
        then `compile` if asked. Checkpoints store plain contiguous tensors either way."""
        for module in self.channels_last_modules():
            module.to(memory_format=torch.channels_last)
        if compile:
            self.compile()

    def compile(self) -> None:
        """torch.compile each of `compiled_modules()` in place (nn.Module.compile), which
        leaves parameter names and state_dict keys as they are. Code that needs a second
        derivative through them runs them eagerly (`eager()`): compiled graphs have no
        double backward."""
        for module in self.compiled_modules():
            module.compile()

    @staticmethod
    def eager():
        """Run compiled modules eagerly inside this block."""
        return torch.compiler.set_stance("force_eager")

    def optimize(self, name: str, loss: torch.Tensor, clip_grad_norm: float | None = None) -> None:
        """Zero the optimizer's gradients, backpropagate `loss`, average the gradients
        across ranks, optionally clip their global norm, and step."""
        optimizer = self.optimizers[name]
        params = [p for g in optimizer.param_groups for p in g["params"]]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.ctx.distributed:
            _average_gradients(params, self.ctx.world_size)
        if clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
        optimizer.step()

    def randn(self, *local_shape: int) -> torch.Tensor:
        return self._draw(lambda shape: torch.randn(shape, generator=self.draws), local_shape)

    def rand(self, *local_shape: int) -> torch.Tensor:
        return self._draw(lambda shape: torch.rand(shape, generator=self.draws), local_shape)

    def randint(self, high: int, *local_shape: int) -> torch.Tensor:
        return self._draw(lambda shape: torch.randint(high, shape, generator=self.draws), local_shape)

    # ------------------------------------------------------------ to implement
    def train_step(self, real: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # ------------------------------------------------------------ internals
    def _draw(self, draw, local_shape: tuple[int, ...]) -> torch.Tensor:
        """Draw for the global batch on the CPU (the same numbers on every rank) and keep
        this rank's strided share along the first dimension, as the data stream does."""
        n = local_shape[0]
        full = draw((n * self.ctx.world_size, *local_shape[1:]))
        mine = full[self.ctx.rank :: self.ctx.world_size]
        if self.ctx.device.type != "cuda":
            return mine.to(self.ctx.device)
        return mine.pin_memory().to(self.ctx.device, non_blocking=True)  # from pageable memory a copy would sync


def _average_gradients(params: list[torch.Tensor], world_size: int) -> None:
    """Average .grad over ranks with one all-reduce of a flat buffer, which ends with one
    "has a gradient" flag per parameter. A rank without a gradient for a parameter adds
    zeros; a parameter no rank has a gradient for keeps none, so the optimizer skips it as
    one process would (Adam's moments and step count stay put)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    has_grad = [p.grad is not None for p in params]
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]
                     + [torch.tensor(has_grad, dtype=params[0].dtype, device=params[0].device)])
    torch.distributed.all_reduce(flat)
    grads, flags = flat[: -len(params)] / world_size, flat[-len(params):]
    for p, g, flag in zip(params, grads.split([p.numel() for p in params]), flags.tolist()):
        p.grad = g.view_as(p).clone() if flag > 0 else None
