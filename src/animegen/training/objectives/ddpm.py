"""How DDPM (animegen.models.ddpm) is trained: mean squared error to the eps or v target at a
uniformly drawn timestep; its presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from animegen.models.ddpm import DDPM
from animegen.models.registry import ModelSpec
from animegen.models.unet import UNetConfig, tiny_config
from animegen.settings import ADAM_BETA, LEARNING_RATE, Limit, positive
from animegen.training.objective import Objective


@dataclass
class DDPMObjectiveConfig:
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0

    limits: ClassVar[dict[str, Limit]] = {"lr": LEARNING_RATE, "betas": ADAM_BETA, "grad_clip": positive(1e6)}


class DDPMObjective(Objective):
    """Mean squared error between the network output and the eps or v target, with t
    uniform over the training timesteps."""

    config_class = DDPMObjectiveConfig

    def __init__(self, model: DDPM, config: DDPMObjectiveConfig, ctx):
        super().__init__(model, config, ctx)
        self.add_optimizer("unet", torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas))

    def train_step(self, real: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        schedule = self.model.schedule
        t = self.randint(schedule.num_steps, real.shape[0])
        noise = self.randn(*real.shape)
        x_t = schedule.add_noise(real, noise, t)
        target = schedule.training_target(real, noise, t, self.model.config.prediction)
        with self.autocast():
            output = self.model(x_t, t)
        loss = (output.float() - target).square().mean()
        self.optimize("unet", loss, clip_grad_norm=self.config.grad_clip)
        return {"loss": loss.detach()}


def unet_preset(config: UNetConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(config).items() if k != "resolution"}


SPEC = ModelSpec(
    name="ddpm",
    description="DDPM U-Net, linear/cosine schedule, eps/v prediction; ddpm, ddim, dpm-solver++ samplers",
    model=DDPM,
    objective=DDPMObjective,
    presets={
        "tiny": {**unet_preset(tiny_config()), "schedule": "cosine", "batch": 16, "lr": 1e-3, "ema_kimg": 2.0},
        "paper64": {**unet_preset(UNetConfig()), "schedule": "linear", "batch": 128, "lr": 2e-4,
                    "ema_kimg": 500.0},
    },
)
