"""A seventh family that exists only for the tests: a few-layer generator trained by a trivial
objective, written with nothing but the family contract, in two files as every family is: this
one (models.base: a config, a Model with its options and capabilities) and
toy_family_training.py (training.objective: an Objective; a ModelSpec with presets).

conftest.py names this module in ANIMEGEN_PLUGINS, so the registry (and every process a test
starts) knows the family. No test names it: every family-parameterized test takes
registry.names(), so this family gets train, exact resume, precision, sample, latent files,
interpolation, projection, directions, the studio and compare coverage for free, and a test
that asks for a family by name instead of by capability fails here first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from animegen.models.base import Capabilities, Latents, Model, Noise, Option
from animegen.models.registry import register
from animegen.settings import LATENT, RESOLUTION, WIDTH, Limit, between


@dataclass
class ToyConfig:
    resolution: int = 16
    latent_dim: int = 8
    channels: int = 8

    limits: ClassVar[dict[str, Limit]] = {"resolution": RESOLUTION, "latent_dim": LATENT, "channels": WIDTH}


class Toy(Model):
    """z -> a linear map to channels x R/4 x R/4 -> two nearest-upsampling convolutions -> tanh."""

    config_class = ToyConfig
    options = (Option("brightness", "float", "added to every pixel before the clamp", default=0.0,
                      limit=between(-1, 1), studio_range=(-1, 1, 0.1)),)
    capabilities = Capabilities(sefa=True)

    def __init__(self, config: ToyConfig):
        super().__init__(config)
        c, side = config.channels, config.resolution // 4
        self.linear = nn.Linear(config.latent_dim, c * side * side)
        self.body = nn.Sequential(nn.Unflatten(1, (c, side, side)), nn.LeakyReLU(0.2),
                                  nn.Upsample(scale_factor=2), nn.Conv2d(c, c, 3, padding=1), nn.LeakyReLU(0.2),
                                  nn.Upsample(scale_factor=2), nn.Conv2d(c, 3, 3, padding=1), nn.Tanh())

    @property
    def z_shape(self) -> tuple[int, ...]:
        return (self.config.latent_dim,)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.linear(z))

    def render(self, latents: Latents, noise: Noise, brightness: float = 0.0, **options) -> torch.Tensor:
        return (self(latents["z"]).float() + brightness).clamp(-1, 1)

    def latent_linear_map(self, layers: tuple[int, int] | None) -> torch.Tensor:
        return self.linear.weight


register("toy", f"{__name__}:Toy", "toy_family_training:SPEC")
