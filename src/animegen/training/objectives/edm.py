"""How EDM (animegen.models.edm) is trained: noise levels ln(sigma) ~ N(P_mean, P_std^2), the
loss lambda(sigma) |D(y + sigma n; sigma) - y|^2, optionally on non-leakingly augmented images;
its presets."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from animegen.models.edm import EDM
from animegen.models.registry import ModelSpec
from animegen.models.unet import UNetConfig, tiny_config
from animegen.settings import Limit, at_least, between, one_of, positive
from animegen.training.augment import rotate90, translate_int
from animegen.training.objective import Objective
from animegen.training.objectives.ddpm import DDPMObjectiveConfig, unet_preset

# lambda(sigma): "edm" makes F's target unit-weighted at every sigma (EDM eq. 8: 1 / c_out^2 of
# EDM's preconditioning); "snr" is DDPM's eps loss (1 / sigma^2); "uniform" weighs |D - y|^2 alone.
LOSS_WEIGHTS = ("edm", "snr", "uniform")
SHIFT_MAX = 0.125  # of the image size (EDM's and ADA's integer translation)


@dataclass
class EDMObjectiveConfig(DDPMObjectiveConfig):
    p_mean: float = -1.2  # ln(sigma) of training is normal (P_mean, P_std); EDM2 at 64 px: -0.8, 1.6
    p_std: float = 1.2
    loss_weight: str = "edm"
    lr_rampup_kimg: float = 0.0  # lr rises linearly from 0 over this many thousand images (EDM: 10,000)

    limits: ClassVar[dict[str, Limit]] = {
        **DDPMObjectiveConfig.limits, "p_mean": between(-10, 10), "p_std": positive(10),
        "loss_weight": one_of(*LOSS_WEIGHTS), "lr_rampup_kimg": at_least(0, 1e6)}


class EDMObjective(Objective):
    config_class = EDMObjectiveConfig

    def __init__(self, model: EDM, config: EDMObjectiveConfig, ctx):
        super().__init__(model, config, ctx)
        self.add_optimizer("denoiser", torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas))

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        sigma_data = self.model.config.sigma_data
        if self.config.loss_weight == "edm":
            return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
        return sigma**-2 if self.config.loss_weight == "snr" else torch.ones_like(sigma)

    def train_step(self, real: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        c, n = self.config, real.shape[0]
        sigma = (self.randn(n) * c.p_std + c.p_mean).exp().view(-1, 1, 1, 1)
        labels = None
        if self.model.config.augment:
            real, labels = self.augment(real, self.model.config.augment)
        noisy = real + sigma * self.randn(*real.shape)
        with self.autocast():
            denoised = self.model(noisy, sigma.flatten(), labels)
        loss = (self.loss_weight(sigma) * (denoised - real).square()).mean()
        if c.lr_rampup_kimg:
            images = (step + 1) * n * self.ctx.world_size
            for group in self.optimizers["denoiser"].param_groups:
                group["lr"] = c.lr * min(1.0, images / (c.lr_rampup_kimg * 1000))
        self.optimize("denoiser", loss, clip_grad_norm=c.grad_clip)
        return {"loss": loss.detach()}

    def augment(self, images: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
        """EDM's non-leaking augmentation, its pixel-exact part: each of a random x-flip, a random
        number of quarter turns and an integer shift (up to SHIFT_MAX of the size, borders
        mirrored) with probability p; the labels (models.edm.AUGMENT_LABELS) say which."""
        n, size = images.shape[0], images.shape[-1]
        on = self.rand(n, 3) < p
        flip = (self.rand(n) < 0.5) & on[:, 0]
        turns = (self.rand(n) * 4).floor().long() * on[:, 1]
        shift = ((self.rand(n, 2) * 2 - 1) * SHIFT_MAX * size).round().long() * on[:, 2:]
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)
        images = translate_int(rotate90(images, turns), shift)
        angle = turns * (math.pi / 2)
        labels = torch.stack([flip.float(), angle.cos() - 1, angle.sin(), *(shift / size).T], dim=1)
        return images, labels.to(images.device)


SPEC = ModelSpec(
    name="edm",
    description="EDM: the DDPM U-Net preconditioned in sigma, log-normal noise levels; heun, euler, dpm-solver++ "
                "samplers; autoguidance",
    model=EDM,
    objective=EDMObjective,
    presets={
        # Measured at 32 px, 20 kimg, FID-1k (docs/results/edm.md): batch 4 (more steps per kimg) and
        # the time input stretched 400x gave the most; p_mean -1.6 a little; EDM's other values kept.
        "tiny": {**unet_preset(tiny_config()), "batch": 4, "lr": 1e-3, "ema_kimg": 2.0, "c_noise_scale": 400.0,
                 "p_mean": -1.6},
        # EDM's FFHQ-64 (their Table 7, DDPM++): 128 channels 1-2-2-2, 4 blocks a level, attention at
        # 16 px, dropout 0.05, batch 256, Adam 2e-4 ramped over 10 Mimg, EMA half-life 500 kimg,
        # augmentation 0.15, Heun at 40 levels (79 evaluations).
        "paper64": {**unet_preset(UNetConfig(num_res_blocks=4, dropout=0.05)), "batch": 256, "lr": 2e-4,
                    "lr_rampup_kimg": 10_000.0, "ema_kimg": 500.0, "augment": 0.15, "sample_steps": 40},
    },
)
