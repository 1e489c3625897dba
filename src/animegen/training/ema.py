"""Exponential moving average of the Model's weights, with StyleGAN's warm-up.

The decay per step follows a half-life measured in images, so it does not depend on the
batch size: beta = 0.5 ** (batch / half_life_images). During warm-up the half-life is
capped at `rampup` times the images seen so far, so early averages do not drag the
random initialization along for thousands of steps.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_beta(nimg: int, batch: int, ema_kimg: float, rampup: float | None) -> float:
    half_life = ema_kimg * 1000
    if rampup is not None:
        half_life = min(half_life, nimg * rampup)
    return 0.5 ** (batch / max(half_life, 1e-8))


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen copy of `model` in eval mode."""
    ema = copy.deepcopy(model).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """Parameters: ema <- beta * ema + (1 - beta) * model. Buffers are copied."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p.detach(), 1 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)
