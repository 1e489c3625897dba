"""EDM (Karras et al. 2022): the ddpm family's U-Net F wrapped in EDM's preconditioning,

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma)),

a denoiser of x = y + sigma n at any noise level sigma, sampled in sigma by the samplers of
animegen.diffusion.karras (Heun, with or without churn; Euler; DPM-Solver++(2M)) over the
Karras rho-schedule. The preconditioning keeps F's input and training target at unit
variance for every sigma, given sigma_data, the data's standard deviation.

The U-Net's sinusoidal time embedding was made for DDPM's integer timesteps (0..999), whose
range spans its frequencies from 1 down to 1/10000; c_noise = ln(sigma)/4 spans only about
2.7 over sigma in [0.002, 80], which leaves most sinusoids constant. `c_noise_scale`
stretches it first (docs/results/edm.md measures it).

Non-leaking augmentation (EDM appendix): with `augment` > 0, training flips, quarter-turns
and shifts images and tells F which (AUGMENT_LABELS, through `augment_map` into the time
embedding); sampling passes no labels, the unaugmented case, so augmentations cannot leak.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import nn

from animegen.diffusion import karras
from animegen.errors import UserError
from animegen.interop.diffusers_folder import DiffusersForm, edm_scheduler
from animegen.models.base import Capabilities, Latents, Model, Noise, Option
from animegen.models.unet import UNet, UNetConfig
from animegen.settings import FRACTION, Limit, at_least, between, one_of, positive

PRECONDITIONINGS = ("edm", "eps")
# What training tells F about an augmented image (zeros: none), in this order.
AUGMENT_LABELS = ("xflip", "rotation cos - 1", "rotation sin", "shift x", "shift y")
SIGMA = Limit(0, 1e4, low_open=True)


@dataclass
class EDMConfig(UNetConfig):
    sigma_data: float = 0.5  # standard deviation of the data (images in [-1, 1])
    precondition: str = "edm"  # edm: EDM's c_skip, c_out, c_in; eps: c_skip 1, c_out -sigma (DDPM's eps in sigma)
    c_noise_scale: float = 1.0  # the U-Net's time input is c_noise_scale * ln(sigma) / 4
    augment: float = 0.0  # probability of each non-leaking augmentation while training; > 0: F takes labels
    sigma_min: float = 0.002  # the Karras schedule sampling uses by default
    sigma_max: float = 80.0
    rho: float = 7.0
    sampler: str = "heun"  # default for grids, snapshots, sample and eval
    sample_steps: int = 18  # noise levels (Heun: 35 evaluations)

    limits: ClassVar[dict[str, Limit]] = {
        "sigma_data": positive(100), "precondition": one_of(*PRECONDITIONINGS), "c_noise_scale": positive(1e4),
        "augment": FRACTION, "sigma_min": SIGMA, "sigma_max": SIGMA, "rho": between(1, 100),
        "sampler": one_of(*karras.SAMPLERS), "sample_steps": between(1, 1000)}

    def __post_init__(self):
        super().__post_init__()
        _check_schedule(self.sigma_min, self.sigma_max)


def _check_schedule(sigma_min: float, sigma_max: float) -> None:
    if not sigma_min < sigma_max:
        raise UserError(f"sigma_min {sigma_min:g} must be below sigma_max {sigma_max:g}.")


HEUN_ONLY = ("sampler", ("heun",))


class EDM(Model):
    config_class = EDMConfig
    options = (
        Option("sampler", "choice", "sampler in sigma [default: the run's]", limit=one_of(*karras.SAMPLERS)),
        Option("steps", "int", "noise levels of the Karras schedule; Heun takes 2 x steps - 1 evaluations "
               "[default: the run's]", limit=between(1, 1000)),
        Option("churn", "float", "Heun's S_churn: noise added back at every step (0: the deterministic ODE)",
               default=0.0, limit=between(0, 1000), label="churn", applies_when=HEUN_ONLY, studio_range=(0, 80, 1)),
        Option("s_tmin", "float", "churn only at noise levels sigma >= S_tmin", default=0.0, limit=at_least(0, 1e4),
               label="churn from sigma", applies_when=HEUN_ONLY),
        Option("s_tmax", "float", "churn only at noise levels sigma <= S_tmax [default: sigma_max]",
               limit=at_least(0, 1e4), label="churn up to sigma", applies_when=HEUN_ONLY),
        Option("s_noise", "float", "scale of the noise churn adds back (S_noise)", default=1.0, limit=between(0, 2),
               label="churn noise", applies_when=HEUN_ONLY, studio_range=(0.95, 1.05, 0.001)),
        Option("sigma_min", "float", "the schedule's lowest noise level [default: the run's]", limit=SIGMA,
               label="σ min"),
        Option("sigma_max", "float", "the schedule's highest noise level [default: the run's]", limit=SIGMA,
               label="σ max"),
        Option("rho", "float", "the schedule's rho: larger spends more steps at low noise [default: the run's]",
               limit=between(1, 100), label="ρ", studio_range=(1, 15, 0.5)),
    )
    capabilities = Capabilities(inversion="ode", guidance=True, diffusers=True)
    deterministic_hint = "--churn 0"
    inversion_sampler = "Heun"

    def __init__(self, config: EDMConfig):
        super().__init__(config)
        self.unet = UNet(config)
        self.augment_map = nn.Linear(len(AUGMENT_LABELS), config.base_channels, bias=False) if config.augment else None

    def preconditioning(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(c_skip, c_out, c_in, c_noise) at noise levels `sigma` (EDM Table 1)."""
        sigma_data = self.config.sigma_data
        c_in = 1 / (sigma**2 + sigma_data**2).sqrt()
        if self.config.precondition == "edm":
            c_skip, c_out = sigma_data**2 * c_in**2, sigma * sigma_data * c_in
        else:
            c_skip, c_out = torch.ones_like(sigma), -sigma
        return c_skip, c_out, c_in, sigma.log() / 4

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        """D(x; sigma) in float32; `sigma` one level for the batch or one per image."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).expand(x.shape[0]).view(-1, 1, 1, 1)
        c_skip, c_out, c_in, c_noise = self.preconditioning(sigma)
        embedding = None if augment_labels is None else self.augment_map(augment_labels)
        f = self.unet(c_in * x, self.config.c_noise_scale * c_noise.flatten(), embedding)
        return c_skip * x.float() + c_out * f.float()

    # ------------------------------------------------------------ sampling options
    def option_specs(self) -> tuple[Option, ...]:
        """The run's own sampler, steps and schedule as defaults."""
        c = self.config
        defaults = {"sampler": c.sampler, "steps": c.sample_steps, "s_tmax": c.sigma_max, "sigma_min": c.sigma_min,
                    "sigma_max": c.sigma_max, "rho": c.rho}
        return tuple(replace(o, default=defaults.get(o.name, o.default)) for o in super().option_specs())

    def resolve_sample_options(self, options: dict) -> dict:
        """Churn and its settings are Heun's alone; sigma_min below sigma_max."""
        resolved = super().resolve_sample_options(options)
        if resolved["sampler"] != "heun":
            given = [o.flag for o in self.options if o.applies_when == HEUN_ONLY and options.get(o.name) is not None]
            if given:
                raise UserError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to the heun sampler "
                                f"only; {resolved['sampler']} has no churn.")
        _check_schedule(resolved["sigma_min"], resolved["sigma_max"])
        return resolved

    def deterministic(self, options: dict) -> bool:
        return options.get("churn", 0) == 0

    def nfe(self, options: dict) -> int:
        """Evaluations of D (each also runs the guide, when one is attached)."""
        return karras.nfe(options["sampler"], options["steps"])

    def nfe_sweep(self, counts) -> list[dict]:
        """Heun (deterministic) and DPM-Solver++ at about each count of evaluations."""
        heun = sorted({max(1, (n + 1) // 2) for n in counts})
        return [*({"sampler": "heun", "steps": s} for s in heun),
                *({"sampler": "dpm-solver++", "steps": n} for n in sorted(set(counts)))]

    def sigmas(self, options: dict) -> list[float]:
        return karras.karras_sigmas(options["steps"], options["sigma_min"], options["sigma_max"], options["rho"])

    def denoiser(self, options: dict) -> karras.Denoiser:
        """D, or with a guide attached D_guide + w (D - D_guide) (autoguidance)."""
        if self.guide is None:
            return self
        weight, guide = options["guidance"], self.guide

        def guided(x: torch.Tensor, sigma: float) -> torch.Tensor:
            d_guide = guide(x, sigma)
            return d_guide + weight * (self(x, sigma) - d_guide)

        return guided

    # ------------------------------------------------------------ latents, rendering, inversion
    @property
    def z_shape(self) -> tuple[int, ...]:
        return (self.unet.config.in_channels, self.resolution, self.resolution)

    def render(self, latents: Latents, noise: Noise, **options) -> torch.Tensor:
        """Sample from x = sigma_max z; churn draws its noise from each seed's stream after z."""
        o = self.resolve_sample_options(options)
        churn = {k: o[k] for k in ("churn", "s_tmin", "s_tmax", "s_noise") if k in o}
        return karras.sample(self.denoiser(o), latents["z"].float(), self.sigmas(o), o["sampler"],
                             generator=noise.generators, **churn)

    def invert(self, images: torch.Tensor, steps: int) -> tuple[Latents, dict]:
        """Deterministic Heun run backwards over `steps` levels of the run's schedule."""
        options = self.resolve_sample_options({"sampler": "heun", "steps": steps, "churn": 0.0})
        return {"z": karras.heun_invert(self.denoiser(options), images.float(), self.sigmas(options))}, options

    def inversion_steps(self) -> tuple[int, int]:
        return self.config.sample_steps, 1000

    def diffusers_form(self) -> DiffusersForm:
        """diffusers' EDM schedulers precondition as EDM does; they have no pipeline, and the U-Net's
        time input is c_noise_scale times their timesteps (ln(sigma) / 4). The augmentation labels'
        map is training's alone (sampling gives none) and stays behind."""
        c = self.config
        if c.precondition != "edm":
            raise UserError(f"precondition {c.precondition!r} has no diffusers scheduler (theirs precondition as EDM "
                            "does); only precondition 'edm' runs export.")
        return DiffusersForm(self.unet, edm_scheduler(c.sampler, c.sigma_data, c.sigma_min, c.sigma_max, c.rho),
                             timestep_scale=c.c_noise_scale)
