"""DDPM (Ho et al. 2020): the U-Net of animegen.models.unet plus a noise schedule, trained
to predict eps or v, sampled by any sampler of animegen.diffusion.samplers.

The Model holds only the network; the schedule is rebuilt from (schedule, timesteps) in
the config, so it is never checkpointed and cannot drift from it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from animegen.diffusion import samplers
from animegen.diffusion.samplers import DETERMINISTIC_SAMPLERS, SAMPLERS
from animegen.diffusion.schedule import PREDICTIONS, SCHEDULES, NoiseSchedule, check_prediction
from animegen.errors import UserError
from animegen.interop.diffusers_folder import DiffusersForm, ddpm_scheduler
from animegen.models.base import Capabilities, Latents, Model, Noise, Option
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
    options = (
        Option("sampler", "choice", "diffusion sampler [default: the run's]", limit=one_of(*SAMPLERS)),
        Option("steps", "int", "diffusion sampling steps (NFE) [default: the run's]", limit=at_least(1),
               applies_when=("sampler", DETERMINISTIC_SAMPLERS)),
        Option("eta", "float", "DDIM noise scale (0 deterministic, 1 ancestral)", default=0.0, limit=FRACTION,
               label="DDIM η", applies_when=("sampler", ("ddim",)), studio_range=(0, 1, 0.05)),
    )
    capabilities = Capabilities(inversion="ode", diffusers=True)
    deterministic_hint = "--sampler ddim --eta 0, or dpm-solver++"
    inversion_sampler = "DDIM"

    def __init__(self, config: DDPMConfig):
        super().__init__(config)
        self.unet = UNet(config)
        self.schedule = NoiseSchedule(config.schedule, config.timesteps)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, t)

    def option_specs(self) -> tuple[Option, ...]:
        """The run's own sampler and step count as defaults; at most its timesteps."""
        sampler, steps, eta = self.options
        return (replace(sampler, default=self.config.sampler),
                replace(steps, default=self.config.sample_steps, limit=between(1, self.config.timesteps)), eta)

    def resolve_sample_options(self, options: dict) -> dict:
        """Ancestral DDPM takes every timestep; eta is DDIM's alone."""
        resolved = super().resolve_sample_options(options)
        timesteps = self.config.timesteps
        if resolved["sampler"] == "ddpm":
            if resolved.setdefault("steps", timesteps) != timesteps:
                raise UserError(f"ancestral DDPM takes all {timesteps} steps; use ddim or dpm-solver++ for fewer.")
        if "eta" in resolved and resolved["sampler"] != "ddim":
            raise UserError(f"eta applies to the ddim sampler only, not to {resolved['sampler']}.")
        return resolved

    def deterministic(self, options: dict) -> bool:
        return options.get("sampler") != "ddpm" and options.get("eta", 0) == 0

    def nfe(self, options: dict) -> int:
        return options["steps"]

    def nfe_sweep(self, counts) -> list[dict]:
        """Ancestral DDPM at all its timesteps; DDIM (eta 0) and DPM-Solver++ at each count
        below that and at all of them."""
        timesteps = self.config.timesteps
        steps = sorted({n for n in counts if n < timesteps} | {timesteps})
        return [{"sampler": "ddpm", "steps": timesteps},
                *({"sampler": sampler, "steps": n} for sampler in DETERMINISTIC_SAMPLERS for n in steps)]

    def invert(self, images: torch.Tensor, steps: int) -> tuple[Latents, dict]:
        """DDIM inversion (eta 0) to the initial noise over `steps` of the sampler's timesteps;
        DDIM with them samples the images back."""
        options = self.resolve_sample_options({"sampler": "ddim", "steps": steps, "eta": 0.0})
        return {"z": samplers.ddim_invert(self.unet, self.schedule, images, steps, self.config.prediction)}, options

    def inversion_steps(self) -> tuple[int, int]:
        return self.config.sample_steps, self.config.timesteps

    def diffusers_form(self) -> DiffusersForm:
        c = self.config
        return DiffusersForm(self.unet, ddpm_scheduler(c.schedule, c.timesteps, c.prediction), "DDPMPipeline")

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
