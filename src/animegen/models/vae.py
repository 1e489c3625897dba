"""Vanilla VAE (Kingma & Welling 2014) with a convolutional encoder and decoder.

The encoder halves the resolution with strided 4x4 convolutions down to 4x4, doubling the
width each time (capped), and maps to the mean and log-variance of a diagonal Gaussian
q(z|x); the decoder mirrors it with transposed convolutions and ends in tanh. Training
minimizes, per image, the sum of squared errors plus `kl_weight` times the KL divergence
(logged as `loss`, with `mse` and `kl`). With kl_weight 1 that is the negative ELBO of a
Gaussian likelihood with variance 1/2 less its constant (D/2) ln(pi), D = 3 R^2 values:
the negative ELBO itself is loss + (D/2) ln(pi). Sampling decodes z ~ N(0, I).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from animegen.models.base import TEMPERATURE_OPTION, Capabilities, Latents, Model, Noise
from animegen.settings import LATENT, RESOLUTION, WIDTH, Limit


@dataclass
class VAEConfig:
    resolution: int = 64
    latent_dim: int = 128
    channels: int = 64  # width at full resolution; doubled per halving
    max_channels: int = 512

    limits: ClassVar[dict[str, Limit]] = {"resolution": RESOLUTION, "latent_dim": LATENT, "channels": WIDTH,
                                         "max_channels": WIDTH}


def widths(resolution: int, channels: int, max_channels: int) -> list[int]:
    """Feature widths from full resolution down to 4x4: one per halving, plus 4x4 itself."""
    halvings = int(math.log2(resolution // 4))
    if resolution < 8 or 4 * 2**halvings != resolution:
        raise ValueError(f"resolution must be a power of two >= 8, not {resolution}")
    return [min(channels * 2**i, max_channels) for i in range(halvings + 1)]


class VAE(Model):
    config_class = VAEConfig
    options = (TEMPERATURE_OPTION,)
    capabilities = Capabilities(inversion="encoder", sefa=True)

    def __init__(self, config: VAEConfig):
        super().__init__(config)
        w = widths(config.resolution, config.channels, config.max_channels)
        down = [nn.Conv2d(3, w[0], 3, padding=1), nn.LeakyReLU(0.2)]
        for a, b in zip(w, w[1:]):
            down += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        self.encoder = nn.Sequential(*down, nn.Flatten(), nn.Linear(w[-1] * 16, 2 * config.latent_dim))
        up = [nn.Linear(config.latent_dim, w[-1] * 16), nn.Unflatten(1, (w[-1], 4, 4)), nn.LeakyReLU(0.2)]
        for a, b in zip(w[::-1], w[-2::-1]):
            up += [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        self.decoder = nn.Sequential(*up, nn.Conv2d(w[0], 3, 3, padding=1), nn.Tanh())

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x)."""
        return self.encoder(x).chunk(2, dim=1)

    @property
    def z_shape(self) -> tuple[int, ...]:
        return (self.config.latent_dim,)

    def latent_linear_map(self, layers: tuple[int, int] | None) -> torch.Tensor:
        return self.decoder[0].weight  # Linear (out, latent)

    def render(self, latents: Latents, noise: Noise, **options) -> torch.Tensor:
        return self.decoder(latents["z"]).float()
