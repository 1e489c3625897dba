"""How DCGAN (animegen.models.dcgan) is trained: the non-saturating GAN loss against its
convolutional discriminator; its presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from animegen.models.dcgan import DCGAN, Discriminator
from animegen.models.registry import ModelSpec
from animegen.settings import ADAM_BETA, LEARNING_RATE, WIDTH, Limit
from animegen.training.objective import Objective


@dataclass
class DCGANObjectiveConfig:
    d_channels: int = 64  # discriminator width at full resolution (ndf)
    spectral_norm: bool = False
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)

    limits: ClassVar[dict[str, Limit]] = {"d_channels": WIDTH, "lr": LEARNING_RATE, "betas": ADAM_BETA}


class DCGANObjective(Objective):
    """Non-saturating loss: D minimizes softplus(-D(x)) + softplus(D(G(z))), G minimizes
    softplus(-D(G(z))); one D step then one G step on the same fakes."""

    config_class = DCGANObjectiveConfig

    def __init__(self, model: DCGAN, config: DCGANObjectiveConfig, ctx):
        super().__init__(model, config, ctx)
        mc = model.config
        self.d = self.add_net("d", Discriminator(mc.resolution, config.d_channels, config.spectral_norm))
        for name, net in (("g", model), ("d", self.d)):
            self.add_optimizer(name, torch.optim.Adam(net.parameters(), lr=config.lr, betas=config.betas))

    def train_step(self, real: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        z = self.randn(real.shape[0], self.model.config.latent_dim)
        with self.autocast():
            fake = self.model(z)
            d_loss = F.softplus(-self.d(real).float()).mean() + F.softplus(self.d(fake.detach()).float()).mean()
        self.optimize("d", d_loss)
        self.d.requires_grad_(False)
        with self.autocast():
            g_loss = F.softplus(-self.d(fake).float()).mean()
        self.optimize("g", g_loss)
        self.d.requires_grad_(True)
        return {"loss_d": d_loss.detach().float(), "loss_g": g_loss.detach().float()}


SPEC = ModelSpec(
    name="dcgan",
    description="DCGAN, non-saturating loss, optional spectral norm",
    model=DCGAN,
    objective=DCGANObjective,
    presets={
        "tiny": {"g_channels": 32, "d_channels": 32, "latent_dim": 64, "batch": 32, "ema_kimg": 0.5},
        "paper64": {"g_channels": 64, "d_channels": 64, "latent_dim": 100, "batch": 128, "ema_kimg": 1.0},
    },
)
