"""DDPM (Ho et al. 2020): the U-Net of animegen.models.unet plus a noise schedule, trained
to predict eps or v, sampled by any sampler of animegen.diffusion.samplers.

The Model holds only the network; the schedule is rebuilt from (schedule, timesteps) in
the config, so it is never checkpointed and cannot drift from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from animegen.diffusion import samplers
from animegen.diffusion.samplers import SAMPLERS
from animegen.diffusion.schedule import PREDICTIONS, SCHEDULES, NoiseSchedule, check_prediction
from animegen.errors import UserError
from animegen.models.base import Model, Noise
from animegen.models.registry import ModelSpec
from animegen.models.unet import UNet, UNetConfig, tiny_config
from animegen.settings import ADAM_BETA, FRACTION, LEARNING_RATE, Limit, at_least, between, one_of, positive
from animegen.training.objective import Objective


@dataclass
class DDPMConfig(UNetConfig):
    schedule: str = "linear"  # linear | cosine
    timesteps: int = 1000
    prediction: str = "eps"  # eps | v
    sampler: str = "dpm-solver++"  # default for grids, snapshots, sample and eval
    sample_steps: int = 20

    limits: ClassVar[dict[str, Limit]] = {
        "schedule": one_of(*SCHEDULES), "timesteps": between(2, 100_000), "prediction": one_of(*PREDICTIONS),
        "sampler": one_of(*SAMPLERS), "sample_steps": between(1, 100_000)}

    def __post_init__(self):
        super().__post_init__()
        check_prediction(self.prediction)
        NoiseSchedule(self.schedule, self.timesteps)  # validates kind and length


@dataclass
class DDPMObjectiveConfig:
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0

    limits: ClassVar[dict[str, Limit]] = {"lr": LEARNING_RATE, "betas": ADAM_BETA, "grad_clip": positive(1e6)}


class DDPM(Model):
    config_class = DDPMConfig
    sample_options = ("sampler", "steps", "eta")
    sample_limits = {"sampler": one_of(*SAMPLERS), "steps": at_least(1), "eta": FRACTION}

    def __init__(self, config: DDPMConfig):
        super().__init__(config)
        self.unet = UNet(config)
        self.schedule = NoiseSchedule(config.schedule, config.timesteps)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, t)

    def resolve_sample_options(self, options: dict) -> dict:
        given = super().resolve_sample_options(options)
        sampler = given.get("sampler", self.config.sampler)
        if sampler == "ddpm":
            steps = self.config.timesteps
            if given.get("steps", steps) != steps:
                raise UserError(f"ancestral DDPM takes all {steps} steps; use ddim or dpm-solver++ for fewer.")
        else:
            steps = given.get("steps", self.config.sample_steps)
            if steps > self.config.timesteps:
                raise UserError(f"--steps {steps} is out of range: this model has {self.config.timesteps} timesteps.")
        resolved = {"sampler": sampler, "steps": steps}
        if sampler == "ddim":
            resolved["eta"] = float(given.get("eta", 0.0))
        elif "eta" in given:
            raise UserError(f"eta applies to the ddim sampler only, not to {sampler}.")
        return resolved

    def sample(self, noise: Noise, **options) -> torch.Tensor:
        o = self.resolve_sample_options(options)
        shape = (len(noise), self.unet.config.in_channels, self.resolution, self.resolution)
        return samplers.sample(self.unet, self.schedule, shape, sampler=o["sampler"], steps=o["steps"],
                               eta=o.get("eta", 0.0), generator=noise.generators, device=self.device,
                               prediction=self.config.prediction).float()


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


def _unet_preset(config: UNetConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(config).items() if k != "resolution"}


SPEC = ModelSpec(
    name="ddpm",
    description="DDPM U-Net, linear/cosine schedule, eps/v prediction; ddpm, ddim, dpm-solver++ samplers",
    model=DDPM,
    objective=DDPMObjective,
    presets={
        "tiny": {**_unet_preset(tiny_config()), "schedule": "cosine", "batch": 16, "lr": 1e-3, "ema_kimg": 2.0},
        "paper64": {**_unet_preset(UNetConfig()), "schedule": "linear", "batch": 128, "lr": 2e-4,
                    "ema_kimg": 500.0},
    },
)
