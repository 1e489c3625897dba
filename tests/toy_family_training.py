"""How the test-only family of toy_family.py is trained: squared error to the real batch; its presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from animegen.models.registry import ModelSpec
from animegen.settings import LEARNING_RATE, Limit
from animegen.training.objective import Objective
from toy_family import Toy


@dataclass
class ToyObjectiveConfig:
    lr: float = 1e-3

    limits: ClassVar[dict[str, Limit]] = {"lr": LEARNING_RATE}


class ToyObjective(Objective):
    """Squared error between fakes and the real batch: the generator learns the mean face."""

    config_class = ToyObjectiveConfig

    def __init__(self, model: Toy, config: ToyObjectiveConfig, ctx):
        super().__init__(model, config, ctx)
        self.add_optimizer("g", torch.optim.Adam(model.parameters(), lr=config.lr))

    def train_step(self, real: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        z = self.randn(real.shape[0], self.model.config.latent_dim)
        with self.autocast():
            fake = self.model(z)
        loss = (fake.float() - real).square().mean()
        self.optimize("g", loss)
        return {"loss": loss.detach()}


SPEC = ModelSpec(name="toy", description="a test-only toy: a few-layer generator learning the mean face",
                 model=Toy, objective=ToyObjective,
                 presets={"tiny": {"batch": 8, "ema_kimg": 0.1}, "paper64": {"channels": 32, "batch": 64}})
