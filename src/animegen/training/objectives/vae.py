"""How the VAE (animegen.models.vae) is trained: the ELBO with a Gaussian likelihood of fixed
variance (sum of squared errors) and a configurable KL weight; its presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from animegen.models.registry import ModelSpec
from animegen.models.vae import VAE
from animegen.settings import ADAM_BETA, LEARNING_RATE, Limit, at_least
from animegen.training.objective import Objective


@dataclass
class VAEObjectiveConfig:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    kl_weight: float = 1.0  # 1: the ELBO (up to a constant); <1 trades prior fit for sharper reconstructions

    limits: ClassVar[dict[str, Limit]] = {"lr": LEARNING_RATE, "betas": ADAM_BETA, "kl_weight": at_least(0, 1e6)}


class VAEObjective(Objective):
    config_class = VAEObjectiveConfig

    def __init__(self, model: VAE, config: VAEObjectiveConfig, ctx):
        super().__init__(model, config, ctx)
        self.add_optimizer("vae", torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas))

    def compiled_modules(self) -> list[torch.nn.Module]:
        return [self.model.encoder, self.model.decoder]  # called directly, not through forward

    def train_step(self, real: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        with self.autocast():
            mean, logvar = self.model.encode(real)
        mean, logvar = mean.float(), logvar.float()  # the KL and the sampled z in fp32
        z = mean + (0.5 * logvar).exp() * self.randn(*mean.shape)
        with self.autocast():
            recon = self.model.decoder(z)
        squared_error = (recon.float() - real).square().flatten(1).sum(1)
        kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).sum(1)
        loss = (squared_error + self.config.kl_weight * kl).mean()
        self.optimize("vae", loss)
        return {"loss": loss.detach(), "mse": squared_error.detach().mean() / real[0].numel(), "kl": kl.detach().mean()}


SPEC = ModelSpec(
    name="vae",
    description="vanilla convolutional VAE (squared error + KL, configurable KL weight)",
    model=VAE,
    objective=VAEObjective,
    presets={
        "tiny": {"channels": 32, "max_channels": 128, "latent_dim": 64, "batch": 32, "lr": 1e-3,
                 "ema_kimg": 2.0},
        "paper64": {"channels": 64, "max_channels": 512, "latent_dim": 128, "batch": 64, "lr": 5e-4,
                    "ema_kimg": 10.0},
    },
)
