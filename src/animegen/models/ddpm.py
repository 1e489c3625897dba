"""DDPM (Ho et al. 2020): the U-Net of animegen.models.unet plus a noise schedule, trained
to predict eps or v, sampled by any sampler of animegen.diffusion.samplers.

The Model holds only the network; the schedule is rebuilt from (schedule, timesteps) in
the config, so it is never checkpointed and cannot drift from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from animegen.diffusion import samplers
from animegen.diffusion.samplers import SAMPLERS
from animegen.diffusion.schedule import PREDICTIONS, SCHEDULES, NoiseSchedule, check_prediction
from animegen.errors import UserError
from animegen.models.base import Latents, Model, Noise
from animegen.models.unet import UNet, UNetConfig
from animegen.settings import FRACTION, Limit, at_least, between, one_of


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

    @property
    def z_shape(self) -> tuple[int, ...]:
        return (self.unet.config.in_channels, self.resolution, self.resolution)

    def render(self, latents: Latents, noise: Noise, **options) -> torch.Tensor:
        """Denoise from z = x_T; stochastic samplers draw their step noise from each seed's
        stream after x_T."""
        o = self.resolve_sample_options(options)
        z = latents["z"]
        return samplers.sample(self.unet, self.schedule, z.shape, sampler=o["sampler"], steps=o["steps"],
                               eta=o.get("eta", 0.0), generator=noise.generators, device=self.device,
                               prediction=self.config.prediction, x_T=z).float()
