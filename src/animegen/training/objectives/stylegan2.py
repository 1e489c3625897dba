"""How StyleGAN2 (animegen.models.stylegan2) is trained, with ADA (Karras et al. 2020, "Training
GANs with Limited Data"): the non-saturating logistic loss, lazy R1 on reals, lazy path length
regularization, style mixing and adaptive augmentation of everything the discriminator sees;
its presets. `StyleGANObjective` is shared with StyleGAN3 (training.objectives.stylegan3): it
takes any generator with the interface documented on the class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from animegen.models.base import Model
from animegen.models.registry import ModelSpec
from animegen.models.stylegan2 import Discriminator, StyleGAN2
from animegen.settings import (ADAM_BETA, CHANNEL_BASE, FRACTION, LEARNING_RATE, WIDTH, Limit, at_least, between, one_of,
                               parsed_by, positive)
from animegen.training.augment import OPS, AugmentPipe, parse_mode
from animegen.training.objective import Objective


@dataclass
class StyleGANObjectiveConfig:
    g_lr: float = 0.0025
    d_lr: float = 0.0025
    adam_betas: tuple[float, float] = (0.0, 0.99)
    d_channel_base: int = 16384
    d_channel_max: int = 512
    mbstd_group: int = 4
    d_conv_clamp: float | None = None  # D's activation clamp (NVIDIA's conv_clamp, kept by an import); None: off
    r1_gamma: float | None = None  # None: the family's rule (the objective's `default_r1_gamma`)
    r1_interval: int = 16  # lazy regularization: every this many steps, weighted by it
    pl_weight: float = 2.0  # path length regularization; 0: off (StyleGAN3)
    pl_interval: int = 4
    pl_batch_shrink: int = 2
    pl_decay: float = 0.01  # EMA rate of the path length target
    style_mixing: float = 0.9  # probability that an image mixes two latents at a random layer
    augment: str = "ada"  # "ada" | "fixed:P" | "off"
    augment_ops: tuple[str, ...] = OPS
    ada_target: float = 0.6
    ada_interval: int = 4  # steps between p adjustments
    ada_kimg: float = 500.0  # thousands of images for p to cross [0, 1]

    limits: ClassVar[dict[str, Limit]] = {
        "g_lr": LEARNING_RATE, "d_lr": LEARNING_RATE, "adam_betas": ADAM_BETA, "d_channel_base": CHANNEL_BASE,
        "d_channel_max": WIDTH, "mbstd_group": between(1, 4096), "d_conv_clamp": positive(1e9),
        "r1_gamma": at_least(0, 1e6),
        "r1_interval": between(1, 10**6), "pl_weight": at_least(0, 1e6), "pl_interval": between(1, 10**6),
        "pl_batch_shrink": between(1, 4096), "pl_decay": FRACTION, "style_mixing": FRACTION,
        "augment": parsed_by(parse_mode, "'ada', 'off' or 'fixed:P' with 0 <= P <= 1"), "augment_ops": one_of(*OPS),
        "ada_target": at_least(-1, 1), "ada_interval": between(1, 10**6), "ada_kimg": positive(1e6)}


def r1_gamma_heuristic(resolution: int, batch: int) -> float:
    """The StyleGAN2-ADA/StyleGAN3 starting point: gamma = 0.0002 * resolution^2 / batch."""
    return 0.0002 * resolution**2 / batch


class StyleGANObjective(Objective):
    """StyleGAN2's training: non-saturating logistic loss, lazy R1 on reals, lazy path length
    regularization, style mixing, ADA on every image D sees. Shared by StyleGAN3.

    The generator (`self.model`) must provide `z_dim`, `num_ws`, `resolution`,
    `mapping(z, update_w_avg=...) -> ws (N, num_ws, w_dim)` and
    `synthesis(ws, noise_mode=..., randn=...) -> images`, where `randn(*shape)` gives each
    image noise of `shape` (a generator without noise inputs ignores it).
    """

    config_class = StyleGANObjectiveConfig

    def __init__(self, model: Model, config: StyleGANObjectiveConfig, ctx):
        super().__init__(model, config, ctx)
        self.D = self.add_net("D", Discriminator(model.resolution, config.d_channel_base, config.d_channel_max,
                                                 config.mbstd_group, config.d_conv_clamp))
        for name, net, lr, interval in (("G", model, config.g_lr, config.pl_interval if config.pl_weight else 0),
                                        ("D", self.D, config.d_lr, config.r1_interval)):
            # Lazy regularization: rescale lr and betas so the effective momentum per step is kept.
            c = interval / (interval + 1) if interval else 1.0
            betas = tuple(b**c for b in config.adam_betas)
            self.add_optimizer(name, torch.optim.Adam(net.parameters(), lr=lr * c, betas=betas, eps=1e-8))
        self.augment_pipe = AugmentPipe(config.augment, config.augment_ops, config.ada_target,
                                        config.ada_kimg).to(ctx.device)
        self.pl_mean = torch.zeros([], device=ctx.device)
        # Sum of sign(D(real)) (on the device: read only at each p adjustment, not every step)
        # and their count, since the last adjustment.
        self.ada_sign_sum, self.ada_count = torch.zeros((), dtype=torch.float64, device=ctx.device), 0

    def default_r1_gamma(self, batch: int) -> float:
        """R1 weight when `r1_gamma` is unset, for the global `batch`: StyleGAN2-ADA's heuristic."""
        return r1_gamma_heuristic(self.model.resolution, batch)

    def r1_gamma(self, batch: int) -> float:
        """The R1 weight used at global batch `batch`: the setting, or the family's rule."""
        return self.config.r1_gamma if self.config.r1_gamma is not None else self.default_r1_gamma(batch)

    def resolved_settings(self, batch: int) -> dict:
        return {"r1_gamma": self.r1_gamma(batch)}

    def compiled_modules(self) -> list[torch.nn.Module]:
        """The mapping network and D. Not the synthesis network: StyleGAN2's per-image noise
        draws (a torch.Generator) break its graph at every layer, and the layers' shared code
        then recompiles per layer until dynamo gives up (measured on CPU: 7 minutes to
        compile 4 tiny steps)."""
        return [self.model.mapping, self.D]

    # ------------------------------------------------------------ pieces
    def generate_ws(self, n: int, update_w_avg: bool = False) -> torch.Tensor:
        """ws for n fresh latents; with probability `style_mixing` an image takes its layers
        from `cutoff` on (uniform in [1, num_ws)) from a second latent."""
        model, num_ws = self.model, self.model.num_ws
        ws = model.mapping(self.randn(n, model.z_dim), update_w_avg=update_w_avg)
        if self.config.style_mixing > 0:
            other = model.mapping(self.randn(n, model.z_dim))
            cutoff = self.randint(num_ws - 1, n) + 1
            cutoff = torch.where(self.rand(n) < self.config.style_mixing, cutoff, num_ws)
            from_other = torch.arange(num_ws, device=ws.device)[None, :] >= cutoff[:, None]
            ws = torch.where(from_other[:, :, None], other, ws)
        return ws

    def synthesize(self, ws: torch.Tensor, update_emas: bool = False) -> torch.Tensor:
        """Images from `ws`. `update_emas`: this pass advances the generator's running
        statistics (StyleGAN3's magnitude EMAs; StyleGAN2's synthesis has none): the
        discriminator step's pass alone does, as NVIDIA's."""
        n = ws.shape[0]
        return self.model.synthesis(ws, noise_mode="random", randn=lambda *shape: self.randn(n, *shape))

    def discriminate(self, images: torch.Tensor, batches: int = 1) -> torch.Tensor:
        """D's logits for augmented `images`: `batches` equal batches concatenated (D.forward)."""
        return self.D(self.augment_pipe(images, self), batches)

    # ------------------------------------------------------------ the step
    def train_step(self, real: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        n = real.shape[0]
        losses = {"loss_g": self._generator_step(n)}
        if self.config.pl_weight > 0 and step % self.config.pl_interval == 0:
            losses["pl_penalty"] = self._path_length_step(n)
        losses["loss_d"], real_logits = self._discriminator_step(real)
        if step % self.config.r1_interval == 0:
            losses["r1_penalty"] = self._r1_step(real)
        self._observe(real_logits)
        if self.augment_pipe.mode == "ada" and (step + 1) % self.config.ada_interval == 0:
            losses["ada_rt"] = self._adjust_augment(n)
        losses["ada_p"] = torch.tensor(self.augment_pipe.p, device=self.ctx.device)
        return losses

    def _generator_step(self, n: int) -> torch.Tensor:
        self.D.requires_grad_(False)
        with self.autocast():
            logits = self.discriminate(self.synthesize(self.generate_ws(n)))
            loss = F.softplus(-logits.float()).mean()  # non-saturating: -log sigmoid(D(G(z)))
        self.optimize("G", loss)
        self.D.requires_grad_(True)
        return loss.detach()

    def _path_length_step(self, n: int) -> torch.Tensor:
        """Penalize how much |J_w^T y| (image change per unit w change, y random) varies
        around its running mean pl_mean: a smooth, well-conditioned mapping from w to images."""
        c = self.config
        m = max(n // c.pl_batch_shrink, 1)
        with self.eager(), self.autocast():  # a double backward: no compiled graphs
            ws = self.generate_ws(m)
            images = self.synthesize(ws)
            h, w = images.shape[2:]
            y = self.randn(m, *images.shape[1:]) / math.sqrt(h * w)
            (grad,) = torch.autograd.grad((images.float() * y).sum(), ws, create_graph=True)
        lengths = grad.float().square().sum(2).mean(1).sqrt()
        mean = self._mean_over_ranks(lengths.detach().mean())
        self.pl_mean = self.pl_mean.lerp(mean, c.pl_decay)
        penalty = (lengths - self.pl_mean).square().mean()
        self.optimize("G", penalty * c.pl_weight * c.pl_interval)
        return penalty.detach()

    def _discriminator_step(self, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.requires_grad_(False)
        with torch.no_grad(), self.autocast():
            fake = self.synthesize(self.generate_ws(real.shape[0], update_w_avg=True), update_emas=True)
        with self.autocast():  # fakes and reals in one pass: half the calls, each on twice the images
            fake_logits, real_logits = self.discriminate(torch.cat([fake.to(real.dtype), real]), batches=2).chunk(2)
            loss = F.softplus(fake_logits.float()).mean() + F.softplus(-real_logits.float()).mean()
        self.optimize("D", loss)
        self.model.requires_grad_(True)
        return loss.detach(), real_logits.detach()

    def _r1_step(self, real: torch.Tensor) -> torch.Tensor:
        """R1: gamma/2 * E|grad_x D(x)|^2 on (non-augmented) reals, every r1_interval steps."""
        c = self.config
        gamma = self.r1_gamma(real.shape[0] * self.ctx.world_size)
        real = real.detach().requires_grad_(True)
        with self.eager(), self.autocast():  # a double backward: no compiled graphs
            logits = self.discriminate(real)
            (grad,) = torch.autograd.grad(logits.float().sum(), real, create_graph=True)
        penalty = grad.float().square().sum(dim=[1, 2, 3]).mean()
        self.optimize("D", penalty * (gamma / 2) * c.r1_interval)
        return penalty.detach()

    # ------------------------------------------------------------ ADA
    def _observe(self, real_logits: torch.Tensor) -> None:
        self.ada_sign_sum += real_logits.float().sign().sum(dtype=torch.float64)
        self.ada_count += real_logits.numel()

    def _adjust_augment(self, n: int) -> torch.Tensor:
        """r_t = E[sign D(real)] over all ranks since the last adjustment; then move p."""
        count = torch.tensor(self.ada_count, dtype=torch.float64, device=self.ctx.device)
        total, count = self._sum_over_ranks(torch.stack([self.ada_sign_sum, count])).tolist()
        rt = total / max(count, 1)
        self.augment_pipe.adjust(rt, n * self.ctx.world_size * self.config.ada_interval)
        self.ada_sign_sum, self.ada_count = torch.zeros_like(self.ada_sign_sum), 0
        return torch.tensor(rt, device=self.ctx.device)

    def _sum_over_ranks(self, x: torch.Tensor) -> torch.Tensor:
        if self.ctx.distributed:
            x = x.to(self.ctx.device)
            torch.distributed.all_reduce(x)
        return x.cpu()

    def _mean_over_ranks(self, x: torch.Tensor) -> torch.Tensor:
        if self.ctx.distributed:
            x = x.clone()
            torch.distributed.all_reduce(x)
            x /= self.ctx.world_size
        return x

    # ------------------------------------------------------------ state
    def extra_state(self) -> dict:
        return {"ada_p": self.augment_pipe.p, "ada_signs": [self.ada_sign_sum.item(), self.ada_count], "pl_mean": self.pl_mean.item()}

    def load_extra_state(self, state: dict) -> None:
        self.augment_pipe.p = float(state["ada_p"])
        self.ada_sign_sum = torch.tensor(float(state["ada_signs"][0]), dtype=torch.float64, device=self.ctx.device)
        self.ada_count = int(state["ada_signs"][1])
        self.pl_mean = torch.tensor(state["pl_mean"], dtype=torch.float32, device=self.ctx.device)


SPEC = ModelSpec(
    name="stylegan2",
    description="StyleGAN2 with ADA: style-modulated skip generator, residual D, R1 + path length",
    model=StyleGAN2,
    objective=StyleGANObjective,
    presets={
        # CPU: 16-32 px, narrow layers; ADA speed scaled to the ~100k images of a 10-minute run.
        "tiny": {"z_dim": 64, "w_dim": 64, "channel_base": 512, "channel_max": 64,
                 "d_channel_base": 512, "d_channel_max": 64, "batch": 16, "ada_kimg": 20.0,
                 "ema_kimg": 5.0},
        # 64 px on one GPU: StyleGAN2-ADA's "auto" config at 64 px (channels 512 down to 256,
        # 2 mapping layers, batch 32; ADA speed scaled to shorter runs). Config-f has 8 layers.
        "paper64": {"channel_base": 16384, "channel_max": 512, "d_channel_base": 16384, "d_channel_max": 512,
                    "mapping_layers": 2, "batch": 32, "ada_kimg": 100.0, "ema_kimg": 10.0},
    },
)
