"""Exponential moving averages of the Model's weights.

The EMA that sampling uses (`ema_kimg`) decays per step by a half-life measured in images,
so it does not depend on the batch size: beta = 0.5 ** (batch / half_life_images). During
warm-up the half-life is capped at `rampup` times the images seen so far, so early averages
do not drag the random initialization along for thousands of steps.

With `posthoc_ema`, PowerEMAs also tracks EDM2's power-function EMAs (animegen.posthoc), whose
snapshots let any EMA length be chosen after training. They are not used for sampling.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from animegen.posthoc import gamma_of, power_beta


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


class PowerEMAs:
    """A frozen copy of the Model per post-hoc EMA length, each updated after every step with
    its power-function decay. No lengths: nothing is copied, updated or stored."""

    def __init__(self, model: nn.Module, sigma_rels: tuple[float, ...] | None):
        self.sigma_rels = tuple(sigma_rels or ())
        self.gammas = [gamma_of(s) for s in self.sigma_rels]
        self.copies = [make_ema(model) for _ in self.sigma_rels]

    def modules(self) -> dict[str, nn.Module]:
        """The copies by checkpoint prefix: posthoc.0, posthoc.1, ... in the order of the lengths."""
        return {f"posthoc.{k}": average for k, average in enumerate(self.copies)}

    def update(self, model: nn.Module, step: int) -> None:
        """After training step `step` (1, 2, ...)."""
        for average, gamma in zip(self.copies, self.gammas):
            update_ema(average, model, power_beta(step, gamma))

    def describe(self) -> dict:
        """What a post-hoc snapshot's state records beside the clock: the profiles, and the
        state-dict names of the buffers (copied from the Model, not averaged: a synthesized
        length takes the newest)."""
        names = set(self.copies[0].state_dict())
        return {"profiles": [{"sigma_rel": s, "gamma": g} for s, g in zip(self.sigma_rels, self.gammas)],
                "buffers": [name for name, _ in self.copies[0].named_buffers() if name in names]}
