"""DCGAN (Radford et al. 2016): the classic 64x64 generator and discriminator, with depth
following the resolution, trained with the non-saturating GAN loss.

Generator: z -> 4x4 by a transposed conv, then (transposed conv 4x4 stride 2, BatchNorm,
ReLU) per doubling, tanh at the end; widths halve as the resolution doubles, ending at
`g_channels` before the RGB layer. Discriminator: the mirror with LeakyReLU(0.2), no
BatchNorm on the first layer, and a 4x4 conv to one logit. Optional spectral norm on
every discriminator layer replaces its BatchNorm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from animegen.models.base import TEMPERATURE_OPTION, Capabilities, Latents, Model, Noise
from animegen.settings import LATENT, RESOLUTION, WIDTH, Limit


@dataclass
class DCGANConfig:
    resolution: int = 64
    latent_dim: int = 100
    g_channels: int = 64  # generator width at full resolution (ngf)

    limits: ClassVar[dict[str, Limit]] = {"resolution": RESOLUTION, "latent_dim": LATENT, "g_channels": WIDTH}


def doublings(resolution: int) -> int:
    n = int(math.log2(resolution // 4))
    if resolution < 8 or 4 * 2**n != resolution:
        raise ValueError(f"resolution must be a power of two >= 8, not {resolution}")
    return n


def _init_weights(module: nn.Module) -> None:
    """The DCGAN paper's initialization: N(0, 0.02) convolutions, N(1, 0.02) BatchNorm scales."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class DCGAN(Model):
    config_class = DCGANConfig
    options = (TEMPERATURE_OPTION,)
    capabilities = Capabilities(sefa=True)

    def __init__(self, config: DCGANConfig):
        super().__init__(config)
        n = doublings(config.resolution)
        w = [config.g_channels * 2 ** (n - 1 - i) for i in range(n)]  # widths at 4x4 ... R/2
        layers = [nn.ConvTranspose2d(config.latent_dim, w[0], 4, 1, 0, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU(True)]
        for a, b in zip(w, w[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(w[-1], 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.generator = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z[:, :, None, None])

    @property
    def z_shape(self) -> tuple[int, ...]:
        return (self.config.latent_dim,)

    def render(self, latents: Latents, noise: Noise, **options) -> torch.Tensor:
        return self(latents["z"]).float()

    def latent_linear_map(self, layers: tuple[int, int] | None) -> torch.Tensor:
        first = self.generator[0].weight  # ConvTranspose2d (latent, C, 4, 4): z -> C x 4 x 4
        return first.reshape(first.shape[0], -1).T


class Discriminator(nn.Module):
    def __init__(self, resolution: int, channels: int, use_spectral_norm: bool):
        super().__init__()
        n = doublings(resolution)
        w = [channels * 2**i for i in range(n)]  # widths at R/2 ... 4x4
        norm = spectral_norm if use_spectral_norm else (lambda layer: layer)
        layers = [norm(nn.Conv2d(3, w[0], 4, 2, 1, bias=False)), nn.LeakyReLU(0.2, True)]
        for a, b in zip(w, w[1:]):
            layers.append(norm(nn.Conv2d(a, b, 4, 2, 1, bias=False)))
            layers += [nn.LeakyReLU(0.2, True)] if use_spectral_norm else [nn.BatchNorm2d(b), nn.LeakyReLU(0.2, True)]
        layers += [norm(nn.Conv2d(w[-1], 1, 4, 1, 0, bias=False)), nn.Flatten()]
        self.net = nn.Sequential(*layers)
        if not use_spectral_norm:
            self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)
