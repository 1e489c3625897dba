"""How StyleGAN3 (animegen.models.stylegan3), configs T and R, is trained: StyleGAN2's objective
(training.objectives.stylegan2) without path length regularization and style mixing, with the
generator's magnitude EMAs stepped and config R's discriminator blur; their presets."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from animegen.models.base import Model
from animegen.models.ops.upfirdn2d import filter2d
from animegen.models.registry import ModelSpec
from animegen.models.stylegan3 import StyleGAN3, StyleGAN3R
from animegen.settings import Limit, at_least
from animegen.training.objectives.stylegan2 import StyleGANObjective, StyleGANObjectiveConfig


@dataclass
class StyleGAN3ObjectiveConfig(StyleGANObjectiveConfig):
    """StyleGAN2's objective as StyleGAN3 trains it: no path length regularization, no style
    mixing, D learning rate 0.002."""

    d_lr: float = 0.002
    pl_weight: float = 0.0
    style_mixing: float = 0.0
    blur_sigma: float = 0.0  # D-input Gaussian blur at the start, std in image widths (R: 10/256)
    blur_fade_kimg: float = 200.0  # thousands of images over which the blur fades linearly to 0

    limits: ClassVar[dict[str, Limit]] = {"blur_sigma": at_least(0, 1), "blur_fade_kimg": at_least(0, 1e6)}


class StyleGAN3Objective(StyleGANObjective):
    """`StyleGANObjective` plus what StyleGAN3 adds: the generator's magnitude EMAs advance
    once per step, in the discriminator step's generator pass (the one that also advances
    w_avg: `synthesize(..., update_emas=True)`); and, for config R, the discriminator sees
    reals and fakes blurred by a Gaussian whose width fades to zero early in training, which
    keeps it from exploiting the high frequencies a young generator gets wrong."""

    config_class = StyleGAN3ObjectiveConfig

    def __init__(self, model: Model, config: StyleGAN3ObjectiveConfig, ctx):
        super().__init__(model, config, ctx)
        self.images_seen = 0  # before this step; from the step count, so it resumes exactly

    def train_step(self, real: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        self.images_seen = step * real.shape[0] * self.ctx.world_size
        return super().train_step(real, step)

    def channels_last_modules(self) -> list[torch.nn.Module]:
        """D only: the synthesis layers resample by matrix products, which NHWC slows
        (tiny, 32 px, one CPU thread: 0.96x for the whole step with G converted too)."""
        return [self.D]

    def default_r1_gamma(self, batch: int) -> float:
        """StyleGAN3's rule (NVlabs' configs at batch 32: 0.5 at 128 px, x4 per doubling, i.e.
        R^2 / 32768), times 32 / batch since smaller batches need more regularization."""
        return self.model.resolution**2 / 32768 * 32 / batch

    def synthesize(self, ws: torch.Tensor, update_emas: bool = False) -> torch.Tensor:
        return self.model.synthesis(ws, update_emas=update_emas)

    def discriminate(self, images: torch.Tensor, batches: int = 1) -> torch.Tensor:
        return super().discriminate(gaussian_blur(images, self.blur_pixels()), batches)

    def blur_pixels(self) -> float:
        """The blur's current standard deviation in pixels."""
        c = self.config
        fade = max(1 - self.images_seen / (c.blur_fade_kimg * 1000), 0.0) if c.blur_fade_kimg > 0 else 0.0
        return c.blur_sigma * self.model.resolution * fade


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with standard deviation `sigma` pixels (taps out to 3 sigma);
    below a tenth of a pixel, the images unchanged."""
    if sigma < 0.1:
        return images
    radius = math.ceil(3 * sigma)
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
    return filter2d(images, (taps / taps.sum()).to(images.device))


# ---------------------------------------------------------------- registry
def _presets(r_config: bool) -> dict[str, dict]:
    """`tiny`: CPU, 4 layers with 6-pixel margins, the fastest setting we found that keeps EQ-T
    high (docs/stylegan.md: margin 10 costs 30% more per step). `paper64`: the paper's
    architecture, and NVlabs' D (channel_base 32768 as G's, also for config R, whose G alone
    doubles it). R1 gamma is left to `StyleGAN3Objective.default_r1_gamma`. Config R doubles
    the channels; its D blur starts at the paper's 10 px of 256 (as a fraction of the image
    width) and fades over about the first 2% of the images a 10-minute run sees (the paper:
    200 of 5,000-25,000 kimg)."""
    double = 2 if r_config else 1
    tiny = {"z_dim": 64, "w_dim": 64, "num_layers": 4, "margin": 6, "channel_base": 1024 * double,
            "channel_max": 32 * double, "d_channel_base": 512, "d_channel_max": 64, "batch": 16,
            "magnitude_ema_beta": 0.5 ** (16 / 20000), "ada_kimg": 20.0, "ema_kimg": 5.0}
    paper64 = {"d_channel_base": 32768, "d_channel_max": 512, "batch": 32,
               "magnitude_ema_beta": 0.5 ** (32 / 20000), "ada_kimg": 100.0, "ema_kimg": 10.0}
    if r_config:
        sigma = 10 / 256 / math.sqrt(2 * math.log(2))  # the paper's kernel exp2(-(x / 10px)^2) at 256 px
        tiny.update(blur_sigma=sigma, blur_fade_kimg=2.0)
        paper64.update(blur_sigma=sigma, blur_fade_kimg=20.0)
    return {"tiny": tiny, "paper64": paper64}


SPEC_T = ModelSpec("stylegan3-t", "StyleGAN3-T: alias-free generator, translation equivariant (Fourier input, "
                   "filtered lrelu)", StyleGAN3, StyleGAN3Objective, _presets(r_config=False))
SPEC_R = ModelSpec("stylegan3-r", "StyleGAN3-R: alias-free and rotation equivariant (1x1 convs, radial filters, "
                   "D blur)", StyleGAN3R, StyleGAN3Objective, _presets(r_config=True))
